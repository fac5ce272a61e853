"""A mixture of prepared folders trains end to end from the command line: each step holds the
rows the mixture's closed-form counts say, every term trains on the rows that carry its data
(``rows/<term>`` against those counts), and a run resumed from a checkpoint equals an
uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from softmcl_jax.data.mixture import Mixture
from softmcl_jax.data.prepared import PreparedSource
from tests import train_utils as tu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tu.tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert")))


def _prepare(out: str, model_dir: str, **fields) -> None:
    cmd = [sys.executable, "-m", "softmcl_jax.data.prepare",
           f"--config={os.path.join(tu.ROOT, 'configs', 'softmcl.py')}", f"--out={out}",
           *tu.overrides(model__name_or_path=model_dir, model__max_len=32,
                         probe__enabled=False, **fields)]
    proc = subprocess.run(cmd, env=tu.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, model_dir):
    """Rated VADER sentences (with lexicon words) and an unrated, labelled CSV."""
    root = tmp_path_factory.mktemp("mixture")
    csv = root / "labelled.csv"
    lines = ["text,label"] + [f"sentence number {i} about topic {i % 3},{i % 3}"
                              for i in range(40)]
    csv.write_text("\n".join(lines) + "\n")
    rated, labelled = str(root / "vader"), str(root / "labelled")
    _prepare(rated, model_dir, data__max_examples=48)
    _prepare(labelled, model_dir, data__source="csv", data__path=str(csv),
             data__label_column="label", data__num_labels=3)
    return rated, labelled


MIX = dict(tu.TINY, total_steps=6, checkpoint_every_steps=3, data__num_labels=3,
           objective__soft_word__weight=0.0, objective__mlm__weight=0.0, data__mlm_rate=0.0,
           objective__soft_sentence__queue_size=0, objective__soft_sentence__key="ema/clean",
           objective__soft_sentence__query="online/clean", objective__supcon__weight=0.5,
           objective__infonce__weight=0.5, objective__infonce__key="ema/clean",
           export__enabled=False, data__max_examples=0)


def test_a_mixture_trains_each_term_on_its_rows_and_resumes_exactly(folders, model_dir,
                                                                     tmp_path):
    rated, labelled = folders
    mixture = f"(('{rated}', 0.6), ('{labelled}', 0.4))"
    whole = str(tmp_path / "whole")
    tu.run_main("softmcl.py", whole, model_dir, data__mixture=mixture, **MIX)
    metrics = tu.read_metrics(whole)
    assert [m["step"] for m in metrics] == list(range(1, 7))

    # The hand count: step s (0-based) takes n_k(s) rows of folder k; the VADER rows are rated
    # and unlabelled, the CSV rows labelled and unrated, so the terms' row counts are those.
    mix = Mixture([len(PreparedSource(rated)), len(PreparedSource(labelled))], [0.6, 0.4],
                  global_batch_size=MIX["batch_size"], seed=0)
    for m in metrics:
        source, _ = mix.global_indices(m["step"] - 1)
        from_rated, from_labelled = int((source == 0).sum()), int((source == 1).sum())
        assert from_rated + from_labelled == MIX["batch_size"]
        assert m["rows/soft_sentence"] == from_rated, m
        assert m["rows/supcon"] == from_labelled, m
        assert m["rows/infonce"] == MIX["batch_size"], m

    # Stopped after step 3 (its checkpoint), then resumed: the same metrics, bit for bit.
    part = str(tmp_path / "part")
    tu.run_main("softmcl.py", part, model_dir, data__mixture=mixture, **dict(MIX, total_steps=3))
    tu.run_main("softmcl.py", part, model_dir, data__mixture=mixture, **MIX)
    resumed = tu.read_metrics(part)
    assert [m["step"] for m in resumed] == list(range(1, 7))
    for a, b in zip(metrics, resumed, strict=True):
        assert a == b


def test_a_mixture_whose_folders_lack_a_terms_data_is_refused(folders, model_dir, tmp_path):
    rated, _ = folders
    proc = subprocess.run(
        tu.main_command("softmcl.py", str(tmp_path / "w"), model_dir,
                        data__mixture=f"(('{rated}', 1.0),)", **MIX),
        env=tu.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "config.objective.supcon needs class labels" in proc.stderr
    assert rated in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_a_folder_prepared_for_another_max_len_is_refused_naming_both(folders, model_dir,
                                                                      tmp_path):
    rated, _ = folders
    proc = subprocess.run(
        tu.main_command("softmcl.py", str(tmp_path / "w"), model_dir, data__source="prepared",
                        data__path=rated, **dict(MIX, model__max_len=24,
                                                 objective__supcon__weight=0.0)),
        env=tu.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "32" in proc.stderr and "24" in proc.stderr and "max_len" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "config.json")
