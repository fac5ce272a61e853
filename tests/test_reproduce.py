"""benchmarks/reproduce.py (+ reproduce_runs, reproduce_report): aggregation over seeds, the
goal check, the RESULTS.md rewrite, plots, resumption, the runs as presets plus overrides."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import reproduce  # noqa: E402
import reproduce_report as report  # noqa: E402
import reproduce_runs  # noqa: E402


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
            json.dump({"seconds": 120.0, "commit": "abc1234"}, f)


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
    rows = {line.split("|")[1].strip(): line
            for line in report.table(summary, ["base", "simcse"]).splitlines()}
    sst2 = [c.strip() for c in rows["simcse"].split("|")[3:4]][0]
    mean, std = np.mean([0.80, 0.83]), np.std([0.80, 0.83], ddof=1)
    assert sst2 == f"{100 * mean:.1f} ± {100 * std:.1f}"
    assert "| 2 |" in rows["MiniLM (base)"]
    assert "–" in rows["simcse"]  # a column this fake suite did not run (SST-5)
    assert summary["runs"]["simcse"]["0"]["curve"][-1] == {"step": 20, "loss": 0.05}


def test_a_cell_over_fewer_seeds_than_its_row_says_how_many(args):
    """SST-2 fine-tuning ran for seed 0 only: its cell is that seed's, marked (1)."""
    out = reproduce.run_dir(args.runs_dir, "simcse", 0)
    with open(os.path.join(out, "finetune.json"), "w") as f:
        json.dump({"sst2_finetune": {"acc": 0.86, "split": "dev", "n": 872}}, f)
    summary = reproduce.collect(args)
    rows = {line.split("|")[1].strip(): line for line in report.table(
        summary, ["simcse"], [("sst2", "acc", "SST-2"), ("sst2_finetune", "acc", "FT")]
    ).splitlines()}
    cells = [c.strip() for c in rows["simcse"].split("|")[2:5]]
    assert cells == ["2", "81.5 ± 2.1", "86.0 ± 0.0 (1)"]


def test_a_resumed_run_is_timed_as_a_whole_run(args):
    """A run resumed at step 10 of 20 ran half its steps in its 120 s: 4 minutes per run, not 2,
    and the compute table says which run resumed where."""
    out = reproduce.run_dir(args.runs_dir, "simcse", 1)
    with open(os.path.join(out, "train_seconds.json"), "w") as f:
        json.dump({"seconds": 120.0, "commit": "abc1234", "first_step": 10}, f)
    summary = reproduce.collect(args)
    assert summary["runs"]["simcse"]["1"]["first_step"] == 10
    assert summary["runs"]["simcse"]["0"]["first_step"] == 0  # a record from before the field
    table = report.budget_table(summary)
    row = next(line for line in table.splitlines() if line.startswith("| simcse"))
    assert row.split("|")[6].strip() == f"{(2.0 + 4.0) / 2:.1f}"
    assert "simcse-s1 from step 10" in table


def test_the_resumed_step_is_read_from_the_trainers_log():
    line = ("I1201 02:19:34.144713 140300821666688 loop.py:238] resumed from "
            "/runs/a b/softmcl-s1/checkpoints at step 100\n")
    assert reproduce.resumed_step("I1201 objective: ...\n" + line + "step 110/300\n") == 100
    assert reproduce.resumed_step("I1201 objective: ...\nstep 10/300\n") == 0


def _results_md(path):
    blocks = "".join(f"<!-- generated: {n} begin -->\nold {n}\n<!-- generated: {n} end -->\n"
                     f"\nprose after {n}\n" for n in ("main", "mixes", "affect_mix", "finetune",
                                                       "affect", "temperature", "compute"))
    path.write_text("# R\n\nprose before\n\n" + blocks)


def test_results_md_keeps_the_prose_around_the_markers(args, tmp_path):
    path = tmp_path / "RESULTS.md"
    _results_md(path)
    report.write_results_md(reproduce.collect(args), str(path))
    text = path.read_text()
    assert text.startswith("# R\n\nprose before") and text.endswith("prose after compute\n")
    assert "old" not in text and "SST-2 acc" in text and "20 × 32" in text
    assert "| 2.0 | 1.0 | – | abc1234 |" in text  # minutes per seed and the commit trained at
    assert all(f"prose after {n}" in text for n in ("main", "mixes", "affect_mix", "finetune",
                                                     "affect", "temperature"))
    path.write_text(path.read_text().replace("<!-- generated: affect end -->", ""))
    with pytest.raises(SystemExit, match="affect end"):
        report.write_results_md(reproduce.collect(args), str(path))


def test_plots_are_written(args, tmp_path):
    summary = reproduce.collect(args)
    for plot in (report.plot_curves, report.plot_tradeoff, report.plot_temperature):
        out = tmp_path / f"{plot.__name__}.png"
        plot(summary, str(out))
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def _summary(runs):
    """{name: [eval per seed]} -> a summary."""
    return {"seeds": [0, 1, 2], "runs": {
        name: {str(i): {"eval": e} for i, e in enumerate(evals)} for name, evals in runs.items()}}


def _eval(stsb, sst2, emobank, warriner):
    return {"stsb": {"spearman": stsb}, "sst2": {"acc": sst2}, "emobank": {"pearson": emobank},
            "warriner": {"pearson": warriner}}


def test_goal_is_checked_on_means_over_seeds():
    goal = {t: v for (t, _), v in reproduce_runs.GOAL.items()}
    assert goal == {"stsb": 0.865, "sst2": 0.834, "emobank": 0.624, "warriner": 0.785}
    summary = _summary({
        # sst2 mean 0.834 exactly, one seed below: met (the goal is on means)
        "a": [_eval(0.87, 0.830, 0.63, 0.79), _eval(0.87, 0.838, 0.63, 0.79)],
        "b": [_eval(0.86, 0.84, 0.63, 0.79)],  # STS-B below
        "c": [_eval(0.87, 0.84, 0.60, 0.70)],  # EmoBank and Warriner below
        "d": [{"stsb": {"spearman": 0.9}}],  # not every goal metric scored
    })
    assert report.goal_misses(summary, "a") == []
    assert report.goal_misses(summary, "b") == ["stsb"]
    assert report.goal_misses(summary, "c") == ["emobank", "warriner"]
    assert report.goal_misses(summary, "d") is None
    assert report.sentiment_mean(summary, "c") == pytest.approx([(0.84 + 0.60 + 0.70) / 3])
    assert report.sentiment_mean(summary, "d") == []
    names = ["a", "b", "c", "d"]
    rows = report.table(summary, names, report.MIX_COLUMNS, goal=True).splitlines()[2:]
    assert rows[0].endswith("| **met** |") and rows[1].endswith("| below: stsb -0.50 |")
    assert rows[2].endswith("| below: emobank -2.40, warriner -8.50 |")
    assert rows[3].endswith("| – |")


def test_temperature_grid_reuses_the_preset_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "softmcl_preset", os.path.join(reproduce.ROOT, "configs", "softmcl.py"))
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    o = preset.get_config().objective
    for term in (o.soft_sentence, o.soft_word):
        assert (term.temperature, term.label_temperature) == reproduce_runs.PRESET_TEMPERATURES
    grid = reproduce_runs.GRID
    cells = len(reproduce_runs.FEATURE_TEMPERATURES) * len(reproduce_runs.LABEL_TEMPERATURES)
    assert cells >= 16 and len(grid) == cells - 1  # the preset's cell is softmcl's seed 0
    assert reproduce_runs.grid_run(0.1, 0.1) == "softmcl"
    run = grid[reproduce_runs.grid_run(0.4, 0.05)]
    assert run.only_seed == reproduce_runs.GRID_SEED and run.tasks == reproduce_runs.GRID_TASKS
    assert run.overrides == ("objective.soft_sentence.temperature=0.4",
                             "objective.soft_sentence.label_temperature=0.05",
                             "objective.soft_word.temperature=0.4",
                             "objective.soft_word.label_temperature=0.05")
    summary = _summary({"softmcl": [{"emobank": {"pearson": 0.6}, "stsb": {"spearman": 0.7},
                                     "sst2": {"acc": 0.8}}],
                        "grid_t0.4_l0.05": [{"emobank": {"pearson": 0.5}}]})
    emobank, stsb, sst2, warriner = report.grid_tables(summary).split("\n\n")
    assert emobank.startswith("| EmoBank r") and warriner.startswith("| Warriner r")
    assert "| 0.1 | – | 60.0 | – | – |" in emobank and "| 0.4 | 50.0 | – | – | – |" in emobank
    assert "| 0.1 | – | 70.0 | – | – |" in stsb and "| 0.1 | – | 80.0 | – | – |" in sst2
    assert all(set(row.split(" | ", 1)[1]) <= set("–| ") for row in warriner.splitlines()[2:])


def test_seed_major_order_and_one_seed_runs(args, monkeypatch):
    done = []
    monkeypatch.setattr(reproduce, "train", lambda a, n, s: done.append(("train", n, s)))
    monkeypatch.setattr(reproduce, "evaluate", lambda a, n, s: done.append(("eval", n, s)))
    monkeypatch.setattr(reproduce, "finetune", lambda a, n, s: done.append(("finetune", n, s)))
    args.finetune_methods = "base"
    reproduce.run_all(args, ["softmcl", "grid_t0.4_l0.05"])
    assert [d for d in done if d[0] == "train"] == [
        ("train", "softmcl", 0), ("train", "grid_t0.4_l0.05", 0), ("train", "softmcl", 1),
        ("train", "softmcl", 2)]
    assert done[0] == ("eval", "base", 0) and done[-3:] == [
        ("finetune", "base", 0), ("finetune", "base", 1), ("finetune", "base", 2)]
    done.clear()
    args.seeds = [1, 2]  # more seeds later: the grid keeps its own seed
    reproduce.run_all(args, ["softmcl", "grid_t0.4_l0.05"])
    assert [d for d in done if d[0] == "train"] == [("train", "softmcl", 1),
                                                   ("train", "softmcl", 2)]


def test_report_counts_every_finished_seed_not_only_this_calls(args):
    """A call with --seeds=1 (adding a seed) must not write a report of seed 1 alone."""
    _fake_run(args.runs_dir, "simcse", 2, 0.86)
    os.makedirs(reproduce.run_dir(args.runs_dir, "simcse", 3))  # started, not evaluated
    args.seeds = [1]
    summary = reproduce.collect(args)
    assert sorted(summary["runs"]["simcse"]) == ["0", "1", "2"]
    assert sorted(summary["runs"]["base"]) == ["0", "1"] and summary["seeds"] == [0, 1, 2]


def test_finished_steps_are_not_run_again(args, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce, "_run", lambda cmd, log, append=False: calls.append(cmd) or 0.0)
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


def test_finetuning_asked_for_more_tasks_than_its_result_holds_runs_again(args, monkeypatch):
    """An earlier reproduction fine-tuned SST-2 alone: asking for SST-2 and SST-5 must run the
    evaluation again (it resumes the finished task from its run folder), not skip the seed."""
    calls = []

    def fake_run(cmd, log, append=False):
        calls.append(cmd)
        with open(next(c for c in cmd if c.startswith("--output="))[len("--output="):], "w") as f:
            json.dump({"sst2_finetune": {"acc": 0.9}, "sst5_finetune": {"acc": 0.5}}, f)
        return 1.0

    monkeypatch.setattr(reproduce, "_run", fake_run)
    out = reproduce.run_dir(args.runs_dir, "base", 0)
    with open(os.path.join(out, "finetune.json"), "w") as f:
        json.dump({"sst2_finetune": {"acc": 0.9}}, f)
    args.finetune_steps = 300
    args.finetune_tasks = "sst2"
    reproduce.finetune(args, "base", 0)
    assert calls == []  # everything asked for is there
    args.finetune_tasks = "sst2,sst5"
    reproduce.finetune(args, "base", 0)
    assert len(calls) == 1 and "--finetune=sst2,sst5" in calls[0]
    with open(os.path.join(out, "finetune.json")) as f:
        assert set(json.load(f)) == {"sst2_finetune", "sst5_finetune"}
    reproduce.finetune(args, "base", 0)
    assert len(calls) == 1


def test_runs_are_presets_with_overrides(args, monkeypatch):
    """A mix or variant is a preset plus --config overrides; {data} is --data_dir. The V-only
    control of the V/A/D run differs from it in the label dimensions alone."""
    calls = []

    def fake_run(cmd, log, append=False):
        calls.append(cmd)
        for flag in cmd:  # what evaluate writes
            if flag.startswith("--output="):
                with open(flag.removeprefix("--output="), "w") as f:
                    f.write("{}")
        return 0.0

    monkeypatch.setattr(reproduce, "_run", fake_run)
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
    assert set(reproduce_runs.METHODS) <= set(reproduce_runs.RUNS)
    calls.clear()
    reproduce.evaluate(args, "grid_t0.4_l0.05", 0)  # a grid cell: its few tasks only
    assert f"--tasks={reproduce_runs.GRID_TASKS}" in calls[0]
    reproduce.evaluate(args, "softmcl_vsp100", 0)  # a mix: the whole suite
    assert not any(c.startswith("--tasks") for c in calls[1])
    reproduce.train(args, "softmcl_vsp100", 0)
    assert calls[2][-4:] == ["--config.objective.vsp.weight=100",
                             "--config.objective.vsp.of=online/masked",
                             "--config.objective.vsp.to=frozen/masked",
                             "--config.objective.vsp.mode=pairwise"]


def test_every_run_is_a_valid_config():
    """Each run's preset plus overrides parses as main.py parses it and passes validate(), so a
    typo in a run definition fails here, not hours into a reproduction."""
    from absl import flags
    from ml_collections import config_flags

    from softmcl_jax import config_check

    for name, run in reproduce_runs.RUNS.items():
        argv = ["main.py", f"--config={os.path.join(reproduce.ROOT, 'configs', run.config)}.py",
                *run.flags("DATA")]
        fv = flags.FlagValues()
        # The --config.<field> flags are defined from the command line, as in main.py.
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
        fv(argv)
        config = fv.config
        the_plan = config_check.validate(config)
        for override in run.overrides:  # every override took effect
            field, value = override.split("=", 1)
            got = config
            for key in field.split("."):
                got = got[key]
            want = value.replace("{data}", "DATA")
            same = (float(want) == got if isinstance(got, float) else
                    tuple(got) == ast.literal_eval(want) if isinstance(got, tuple) else
                    str(got) == want)
            assert same, (name, override, got)
        assert the_plan.terms, name


def test_seeds_rerun_here_replace_theirs_and_the_rest_are_carried(args, tmp_path):
    """The committed summary stands in for run folders that are gone: a seed rerun in
    --runs_dir replaces that seed's row alone; runs no longer defined are dropped."""
    old = {"eval": {"sst2": {"acc": 0.5}}, "commit": "old0001"}
    previous = {"runs": {"simcse": {"0": old, "1": old, "2": old}, "softmcl": {"0": old},
                         "no_such_run": {"0": old}}}
    path = tmp_path / "previous.json"
    path.write_text(json.dumps(previous))
    args.previous = str(path)
    summary = reproduce.collect(args)
    simcse = summary["runs"]["simcse"]
    assert [simcse[s]["eval"]["sst2"]["acc"] for s in ("0", "1", "2")] == [0.80, 0.83, 0.5]
    assert simcse["0"]["commit"] == "abc1234" and simcse["2"]["commit"] == "old0001"
    assert summary["runs"]["softmcl"] == {"0": old} and "no_such_run" not in summary["runs"]
    assert summary["seeds"] == [0, 1, 2]
    # What each seed trained with is recorded (its seed left out), for the preset pins.
    assert simcse["0"]["config"] == {"total_steps": 20, "batch_size": 32,
                                     "optimizer": {"learning_rate": 3e-5}}


def test_the_finetuning_table_covers_every_task_type_for_its_encoders():
    """reproduce.py's defaults fine-tune every encoder of the table on all four task types."""
    from softmcl_jax import finetune

    assert set(reproduce_runs.FINETUNE_TASKS) == set(finetune.TASKS)
    assert {t for t, _, _ in report.FINETUNE_COLUMNS} == {
        f"{t}_finetune" for t in reproduce_runs.FINETUNE_TASKS}
    assert all(n == report.BASE or n in reproduce_runs.RUNS
               for n in reproduce_runs.FINETUNE_ENCODERS)
    assert reproduce_runs.RECIPE in reproduce_runs.FINETUNE_ENCODERS


def test_the_finetuning_table_puts_the_papers_numbers_first(args):
    summary = reproduce.collect(args)
    run = summary["runs"]["base"]["0"]["eval"]
    run["sst2_finetune"] = {"acc": 0.85, "split": "dev", "n": 872}
    lines = report.finetune_table(summary).splitlines()
    assert lines[2].startswith("| SoftMCL paper") and "96.5" in lines[2] and "63.9" in lines[2]
    assert lines[3].startswith("| MiniLM (base) | 2 | 85.0 ± 0.0 (1) |")
