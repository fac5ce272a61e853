"""A run never ends silently wrong: divergence stops with a name (or is skipped, counted and
reported), resume refuses a changed config, a bad checkpoint falls back, one trainer per
workdir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from softmcl_jax import loop, train
from softmcl_jax.checkpoint import Checkpointer
from softmcl_jax.data.pipeline import _BatchMaker
from softmcl_jax.workdir import LOCK_FILE
from tests import train_utils as tu
from tests.test_objective import TINY, preset
from tests.test_objective import _setup as setup_tiny


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model  # the session's tiny BERT: its data is prepared and its steps compiled once


def _main(config: str, workdir: str, model_dir: str, **fields) -> subprocess.CompletedProcess:
    return subprocess.run(tu.main_command(config, workdir, model_dir, **fields), env=tu.fast_env(),
                          capture_output=True, text=True, timeout=600)


def _poison(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A NaN word valence on the rated tokens: SoftMCL's word-level loss becomes NaN."""
    out = dict(batch)
    out["token_valence"] = np.where(batch["token_valence_mask"], np.nan, batch["token_valence"])
    return out


# ------------------------------------------------------------------------------ divergence


def test_a_non_finite_step_is_never_applied(model_dir):
    config = preset("softmcl", **TINY)
    config.model.name_or_path = model_dir
    the_plan, model, mesh, pipeline = setup_tiny(config)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    keys = the_plan.batch_keys
    state, _ = setup.step_fn(state, {k: pipeline.batch(0)[k] for k in keys})
    before = jax.tree.map(np.array, jax.device_get(state))  # the state is donated
    state, metrics = setup.step_fn(state, {k: _poison(pipeline.batch(1))[k] for k in keys})
    m = jax.device_get(metrics)
    assert not m["finite"] and np.isnan(m["loss/soft_word"]) and np.isnan(m["loss"])
    after = jax.device_get(state)
    assert int(after.step) == 2 and int(after.skipped) == 1
    for part in ("params", "opt_state", "ema_params", "queues"):
        jax.tree.map(np.testing.assert_array_equal, getattr(after, part), getattr(before, part))
    state, metrics = setup.step_fn(state, {k: pipeline.batch(2)[k] for k in keys})
    assert bool(jax.device_get(metrics["finite"])) and int(jax.device_get(state.skipped)) == 1


@pytest.mark.slow
def test_divergence_stops_the_run_with_the_step_and_each_term(model_dir, tmp_path):
    """The issue's command: SimCSE at lr 1e6 had NaN losses from step 5, rotated every finite
    checkpoint away, exported NaN weights and exited 0."""
    workdir = str(tmp_path / "run")
    proc = _main("simcse.py", workdir, model_dir, **dict(
        tu.TINY, total_steps=40, optimizer__learning_rate=1e6, optimizer__clip_norm=1e9,
        checkpoint_every_steps=2, keep_checkpoints=1))
    print(proc.stderr[-1500:])
    assert proc.returncode == 1
    assert "Diverged: step" in proc.stderr and "loss/infonce=nan" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(workdir, "export"))
    bad_step = int(proc.stderr.split("Diverged: step ")[1].split(":")[0])
    rows = tu.read_metrics(workdir)
    assert rows[-1]["step"] < bad_step or not np.isfinite(rows[-1]["loss"])
    # Every kept checkpoint is finite, and the export CLI turns the newest into a finite model.
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                   if s.isdigit())
    assert steps and steps[-1] < bad_step
    out = str(tmp_path / "exported")
    export = subprocess.run([sys.executable, "-m", "softmcl_jax.export", f"--workdir={workdir}",
                             f"--out={out}"], env=tu.fast_env(), capture_output=True, text=True,
                            timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
def test_skipping_bad_steps_counts_and_reports_them(model_dir, tmp_path, monkeypatch, caplog):
    # Where every batch is made, for Pipeline.batch and Grain's iteration alike.
    original = _BatchMaker.make

    def make(self, step):
        batch, overflowed = original(self, step)
        return (_poison(batch) if step == 2 else batch), overflowed

    monkeypatch.setattr(_BatchMaker, "make", make)
    config = preset("softmcl", **dict(TINY, total_steps=6, log_every_steps=1,
                                      checkpoint_every_steps=4, async_checkpointing=False))
    config.model.name_or_path = model_dir
    with pytest.raises(loop.Diverged, match=r"step 3: .*loss/soft_word=nan"):
        loop.run(config, str(tmp_path / "stop"))
    assert os.listdir(os.path.join(tmp_path, "stop", "checkpoints")) == []
    config.max_skipped_steps = 1
    result = loop.run(config, str(tmp_path / "skip"))
    assert result["skipped_steps"] == [3]
    assert "step 3: non-finite" in caplog.text and "skipped 1 non-finite step(s)" in caplog.text
    rows = tu.read_metrics(str(tmp_path / "skip"))
    assert [r["step"] for r in rows] == list(range(1, 7)) and np.isnan(rows[2]["loss"])
    weights = load_file(os.path.join(tmp_path, "skip", "export", "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------------ the config


@pytest.mark.slow
def test_resume_refuses_a_changed_config(tiny_run, tmp_path):
    # A copy of the session's finished 3-step SimCSE run (batch 8, learning rate 1e-3).
    workdir, model_dir = str(tmp_path / "run"), tiny_run[1]
    shutil.copytree(tiny_run[0], workdir)
    fields = dict(tu.TINY_RUN)
    path = os.path.join(workdir, "config.json")
    stored = open(path).read()
    proc = _main("simcse.py", workdir, model_dir, **dict(fields, batch_size=16,
                                                           optimizer__learning_rate=5e-4))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "batch_size: 8 -> 16" in proc.stderr
    assert "optimizer.learning_rate: 0.001 -> 0.0005" in proc.stderr
    assert open(path).read() == stored  # never over a different run's config
    # A field that may change: training goes on from step 3.
    tu.run_main_fast("simcse.py", workdir, model_dir, **dict(fields, total_steps=5))
    assert [r["step"] for r in tu.read_metrics(workdir)] == list(range(1, 6))
    assert json.load(open(path))["total_steps"] == 5


def test_a_field_added_since_the_run_started_at_its_old_behaviour_is_no_change():
    from softmcl_jax.workdir import config_differences

    stored = {"objective": {"vsp": {"weight": 1.0}}}
    assert config_differences(stored, {"objective": {"vsp": {"weight": 1.0,
                                                             "weight_end": None}}}) == []
    assert config_differences(stored, {"objective": {"vsp": {"weight": 1.0, "weight_end": 0.0}}}
                              ) == ["objective.vsp.weight_end: (absent) -> 0.0"]
    assert config_differences({"objective": {"vsp": {"weight": 1.0, "weight_end": 0.0}}},
                              {"objective": {"vsp": {"weight": 1.0, "weight_end": None}}}
                              ) == ["objective.vsp.weight_end: 0.0 -> null"]
    # data.rating_unit came later: "scale" is what every earlier run did, "spread" is not.
    before = {"data": {"source": "vader"}}
    assert config_differences(before, {"data": {"source": "vader", "rating_unit": "scale"}}) == []
    assert config_differences(before, {"data": {"source": "vader", "rating_unit": "spread"}}
                              ) == ['data.rating_unit: (absent) -> "spread"']
    # data.mixture came with prepared folders: () is the one source every earlier run read.
    assert config_differences(before, {"data": {"source": "vader", "mixture": []}}) == []
    assert config_differences(before, {"data": {"source": "vader", "mixture": [["d", 1.0]]}}
                              ) == ['data.mixture: (absent) -> [["d", 1.0]]']


# ----------------------------------------------------------------------------- checkpoints


def _state_files(directory: str, step: int) -> list[str]:
    out = []
    for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
        out += [os.path.join(root, f) for f in files]
    return out


@flax.struct.dataclass
class _State:  # a struct dataclass, as TrainState: without _METADATA orbax cannot rebuild it
    step: jax.Array
    w: jax.Array


@pytest.mark.parametrize("damage", ["metadata", "truncated"])
def test_a_bad_newest_checkpoint_falls_back(tmp_path, damage, caplog):
    """The issue's two cases: "pytree structure error" and a truncated data file."""
    directory = str(tmp_path / "ckpt")
    state = _State(step=jnp.array(1), w=jnp.arange(4096, dtype=jnp.float32))
    with Checkpointer(directory, every_steps=1, keep=3, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state))
    files = _state_files(directory, 3)
    if damage == "metadata":
        victims = [f for f in files if os.path.basename(f) == "_METADATA"]
        for f in victims:
            os.remove(f)
    else:
        victims = [max(files, key=os.path.getsize)]
        with open(victims[0], "r+b") as f:
            f.truncate(os.path.getsize(victims[0]) // 2)
    assert victims
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding), state)
    ckpt = Checkpointer(directory, every_steps=1, keep=3, async_save=False)
    step, restored = ckpt.restore_newest_good(abstract)
    assert step == 2
    np.testing.assert_array_equal(restored.w, np.arange(4096) * 2.0)
    assert "checkpoint 3" in caplog.text and "falling back" in caplog.text
    assert ckpt.all_steps() == [1, 2] and os.listdir(f"{directory}.bad")
    assert ckpt.save(3, state)  # the step is free again for the resumed run
    ckpt.close()


def test_no_restorable_checkpoint_names_the_steps(tmp_path):
    directory = str(tmp_path / "ckpt")
    with Checkpointer(directory, every_steps=1, keep=3, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, {"w": jnp.ones(8)})
    wrong = {"w": jax.ShapeDtypeStruct((9,), jnp.float32,
                                       sharding=jax.sharding.SingleDeviceSharding(
                                           jax.devices()[0]))}
    with Checkpointer(directory, every_steps=1, keep=3, async_save=False) as ckpt, \
            pytest.raises(RuntimeError, match=rf"{directory}: no checkpoint could be restored; "
                                              r"tried 2 \(.*\); 1 \("):
        ckpt.restore_newest_good(wrong)


# ---------------------------------------------------------------------------- one trainer


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(model_dir, tmp_path):
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(
        tu.main_command("simcse.py", workdir, model_dir, **dict(tu.TINY, total_steps=500)),
        env=tu.fast_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(workdir, LOCK_FILE)
        deadline = time.time() + 120
        while not os.path.exists(lock) and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.perf_counter()
        second = _main("simcse.py", workdir, model_dir, **dict(tu.TINY, total_steps=500))
        print(f"second trainer refused after {time.perf_counter() - t0:.1f} s")
        assert second.returncode == 1
        assert f"PID {first.pid} on {socket.gethostname()}" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()
    # SIGKILL left the lock behind: its process is gone, so the next trainer takes it over.
    assert json.load(open(lock))["pid"] == first.pid
    # The same command, run to 4 steps past the first one's last logged step (total_steps may
    # change on resume): what is checked is the takeover and a run to its end, not 500 steps.
    path = os.path.join(workdir, "metrics.jsonl")
    logged = sum(1 for x in open(path) if x.endswith("\n")) if os.path.exists(path) else 0
    end = logged + 4
    proc = tu.run_main_fast("simcse.py", workdir, model_dir, **dict(tu.TINY, total_steps=end))
    assert f"stale lock of PID {first.pid}" in proc.stderr
    assert not os.path.exists(lock)
    assert tu.read_metrics(workdir)[-1]["step"] == end
