"""Each preset in configs/ is pinned to the run RESULTS.md reports for it: the preset must be what
that run trains (its definition in benchmarks/reproduce_runs.py, parsed as main.py parses it), and
where results/summary.json records what a seed actually trained with, the preset must equal that
too. A preset edited after its numbers were measured fails here until the reproduction reruns it.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from softmcl_jax import workdir
from tests import train_utils as tu

sys.path.insert(0, os.path.join(tu.ROOT, "benchmarks"))
import reproduce_runs  # noqa: E402

# The presets' own default data folder (configs/*.py read ../shared/data).
DATA = "../shared/data"
# preset -> the RESULTS.md run that reports it.
PINNED = {
    "softmcl": "softmcl",
    "simcse": "simcse",
    "retrofit": "retrofit",
    "lcl": "lcl",
    "softmcl_vad": "softmcl_vad",
    "softmcl_anchored": reproduce_runs.RECIPE,
    "softmcl_affect": reproduce_runs.AFFECT_RECIPE,
}
# Presets RESULTS.md does not report, and why.
NOT_REPORTED = {
    "base": "the fields every preset starts from, not a method",
    "finetune": "the fine-tuning protocol's settings, the same for every encoder and task "
                "(RESULTS.md, 'The paper's protocol'), not an encoder's training",
    "softcse": "SoftCSE needs a raw encoder's dropout views to matter; on MiniLM it is SimCSE's "
               "row (not run)",
}
# What the reproduction sets for every run besides the run's definition (reproduce.train): not
# part of a preset.
HARNESS = {("probe", "enabled"), ("keep_checkpoints",)}


def _parse(argv: list[str]) -> dict:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config.to_dict()


def preset(name: str) -> dict:
    """The preset as a user runs it: plus the data-location flags its run passes (the files
    under the reproduction's --data_dir, which a preset such as softmcl_vad leaves for the
    command line), nothing else."""
    run = reproduce_runs.RUNS[PINNED[name]]
    where = [f for f, o in zip(run.flags(DATA), run.overrides, strict=True) if "{data}" in o]
    return _parse(["main.py", f"--config={os.path.join(tu.ROOT, 'configs', name)}.py", *where])


def run_definition(name: str) -> dict:
    run = reproduce_runs.RUNS[name]
    return _parse(["main.py", f"--config={os.path.join(tu.ROOT, 'configs', run.config)}.py",
                   *run.flags(DATA)])


def _comparable(config: dict, data_dir: str = DATA) -> dict:
    """Without the name (a label), the seed, the harness's fields, and with the run's data
    folder written as the presets' default; tuples as lists (config.json's JSON)."""
    config = json.loads(json.dumps(config))
    config.pop("name", None)
    config.pop("seed", None)
    for path in HARNESS:
        node = config
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)

    def fix(value):
        if isinstance(value, str) and data_dir != DATA and value.startswith(data_dir.rstrip("/")):
            return DATA + value[len(data_dir.rstrip("/")):]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(config)


@pytest.fixture(autouse=True)
def _default_data_dir(monkeypatch):
    monkeypatch.delenv("SOFTMCL_DATA_DIR", raising=False)


def test_every_preset_is_pinned_or_says_why_not():
    presets = {f[:-3] for f in os.listdir(os.path.join(tu.ROOT, "configs"))
               if f.endswith(".py") and not f.startswith("_")}
    assert presets - set(NOT_REPORTED) == set(PINNED), (
        "a preset without a RESULTS.md run: add it to PINNED (and to the reproduction) or say "
        "why not in NOT_REPORTED")


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_preset_is_its_runs_definition(name):
    assert _comparable(preset(name)) == _comparable(run_definition(PINNED[name]))


def with_added_fields(config: dict) -> dict:
    """A recorded config with the fields added to base.py since it trained, at the values that
    keep what it computed (workdir.ADDED_FIELDS: what the resume guard accepts as unchanged)."""
    config = json.loads(json.dumps(config))
    for field, value in workdir.ADDED_FIELDS.items():
        node, path = config, field.split(".")
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node.setdefault(path[-1], value)
    return config


def with_unset(got: dict, want: dict) -> dict:
    """``got`` plus the unset fields (None: placeholders such as a term's weight_end) that
    ``want`` has and ``got`` lacks: a field added since, unset, changes nothing (the resume
    guard's rule)."""
    out = dict(got)
    for key, value in want.items():
        if key not in out and value is None:
            out[key] = None
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = with_unset(out[key], value)
        elif isinstance(value, dict) and key not in out and all(
                v is None for v in value.values()):
            out[key] = dict(value)
    return out


def _summary() -> dict:
    with open(os.path.join(tu.ROOT, "results", "summary.json")) as f:
        return json.load(f)


def _recorded(name: str) -> dict:
    """{seed: config} of the seeds of ``name``'s run whose config summary.json records (seeds
    trained before the record was kept have none)."""
    return {s: e["config"] for s, e in _summary()["runs"].get(PINNED[name], {}).items()
            if "config" in e}


def test_the_default_jobs_reported_seeds_are_recorded():
    """The default job's RESULTS.md row is at the code of the day, each seed's config kept."""
    assert len(_recorded("softmcl_anchored")) >= 3


@pytest.mark.parametrize("name", sorted(n for n in PINNED if _recorded(n)))
def test_the_preset_is_what_its_reported_seeds_trained(name):
    summary, want = _summary(), _comparable(preset(name))
    for seed, config in _recorded(name).items():
        got = _comparable(with_added_fields(config), summary["data_dir"])
        assert with_unset(got, want) == want, (name, seed)


def test_the_reported_finetuning_covers_every_encoder_and_task_type():
    """RESULTS.md's fine-tuning table is complete: every encoder the reproduction fine-tunes has
    at least two seeds with a fine-tuned score on every task, and the seeds of a trained encoder
    that carry one record what they trained with (they ran at the code of the day)."""
    runs = _summary()["runs"]
    for name in reproduce_runs.FINETUNE_ENCODERS:
        done = {s: e for s, e in runs[name].items()
                if all(f"{t}_finetune" in e["eval"] for t in reproduce_runs.FINETUNE_TASKS)}
        assert len(done) >= 2, (name, sorted(done))
        assert name not in reproduce_runs.RUNS or all("config" in e for e in done.values()), name
