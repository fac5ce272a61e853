"""benchmarks/reproduce.py: aggregation over seeds, the RESULTS.md rewrite, plots, resumption."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import reproduce  # noqa: E402


def _fake_run(runs, method, seed, acc, with_training=True):
    out = reproduce.run_dir(str(runs), method, seed)
    os.makedirs(out, exist_ok=True)
    result = {"sst2": {"acc": acc, "macro_f1": acc - 0.01, "split": "dev", "n": 872},
              "emobank": {"pearson": acc / 2, "spearman": acc / 2, "split": "dev", "n": 1000}}
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f)
    with open(os.path.join(out, "eval_seconds.json"), "w") as f:
        json.dump({"seconds": 60.0}, f)
    if with_training:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"total_steps": 20, "batch_size": 32,
                       "optimizer": {"learning_rate": 3e-5}}, f)
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            for step in (10, 20):
                f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
        with open(os.path.join(out, "train_seconds.json"), "w") as f:
            json.dump({"seconds": 120.0}, f)


@pytest.fixture
def args(tmp_path):
    accs = {"base": (0.79, 0.80), "simcse": (0.80, 0.83)}
    for method, values in accs.items():
        for seed, acc in enumerate(values):
            _fake_run(tmp_path, method, seed, acc, with_training=method != "base")
    return argparse.Namespace(runs_dir=str(tmp_path), seeds=[0, 1, 2], data_dir="DATA",
                              max_examples=2000, max_len=64)


def test_table_is_mean_and_sample_std_over_the_finished_seeds(args):
    summary = reproduce.collect(args)
    assert sorted(summary["runs"]) == ["base", "simcse"]
    assert sorted(summary["runs"]["simcse"]) == ["0", "1"]  # seed 2 never ran
    rows = {line.split("|")[1].strip(): line for line in reproduce.table(summary).splitlines()}
    sst2 = [c.strip() for c in rows["simcse"].split("|")[3:4]][0]
    mean, std = np.mean([0.80, 0.83]), np.std([0.80, 0.83], ddof=1)
    assert sst2 == f"{100 * mean:.1f} ± {100 * std:.1f}"
    assert "| 2 |" in rows["MiniLM (base)"]
    assert "–" in rows["simcse"]  # a column this fake suite did not run (SST-5)
    assert summary["runs"]["simcse"]["0"]["curve"][-1] == {"step": 20, "loss": 0.05}


def test_results_md_keeps_the_prose_around_the_markers(args, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\nprose before\n\n<!-- generated: begin -->\nold\n"
                    "<!-- generated: end -->\n\nprose after\n")
    reproduce.write_results_md(reproduce.collect(args), str(path))
    text = path.read_text()
    assert text.startswith("# R\n\nprose before") and text.endswith("prose after\n")
    assert "old" not in text and "SST-2 acc" in text and "20 × 32" in text
    path.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        reproduce.write_results_md(reproduce.collect(args), str(path))


def test_training_curves_plot_is_written(args, tmp_path):
    out = tmp_path / "curves.png"
    reproduce.plot_curves(reproduce.collect(args), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_finished_steps_are_not_run_again(args, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "_run", lambda cmd, log: calls.append(cmd) or 0.0)
    reproduce.evaluate(args, "simcse", 0)  # eval.json exists
    os.makedirs(os.path.join(reproduce.run_dir(args.runs_dir, "simcse", 0), "export"))
    open(os.path.join(reproduce.run_dir(args.runs_dir, "simcse", 0), "export",
                      "config.json"), "w").close()
    reproduce.train(args, "simcse", 0)  # export exists
    assert calls == []
    args.steps = 0
    reproduce.train(args, "lcl", 0)
    assert calls and "--config=configs/lcl.py" in calls[0]
    assert f"--config.data.path={os.path.join('DATA', 'sst5/stsa.fine.train')}" in calls[0]


def test_runs_are_presets_with_overrides(args, monkeypatch):
    """A mix or variant is a preset plus --config overrides; {data} is --data_dir. The V-only
    control of the V/A/D run differs from it in the label dimensions alone."""
    calls = []
    monkeypatch.setattr(reproduce, "_run", lambda cmd, log: calls.append(cmd) or 0.0)
    args.steps, args.data_dir = 0, "DATA/"
    for name in ("softmcl_vad", "softmcl_v"):
        reproduce.train(args, name, 0)
    vad, v = calls
    assert "--config=configs/softmcl_vad.py" in vad and "--config=configs/softmcl_vad.py" in v
    assert "--config.data.lexicon_words=DATA/warriner_vad/splits/train.txt" in vad
    extra = [f for f in v if f not in vad and not f.startswith("--workdir=")]
    assert extra == ["--config.objective.soft_sentence.labels=('valence',)",
                     "--config.objective.soft_sentence.label_weights=(1.0,)",
                     "--config.objective.soft_word.labels=('valence',)",
                     "--config.objective.soft_word.label_weights=(1.0,)"]
    assert set(reproduce.METHODS) <= set(reproduce.RUNS)
