"""Fault injection: a run that is killed, resumed, killed mid-save and handed a corrupt
checkpoint still ends exactly where an uninterrupted run does."""

from __future__ import annotations

import glob
import os
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import train_utils as tu

pytestmark = pytest.mark.slow

STEPS = 40
FIELDS = dict(tu.SOFTMCL_TINY, total_steps=STEPS, checkpoint_every_steps=4,
              async_checkpointing=True, keep_checkpoints=2)


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model  # the session's tiny BERT: its data is prepared and its steps compiled once


def _logged(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def _start(workdir: str, model_dir: str) -> subprocess.Popen:
    return subprocess.Popen(tu.main_command("softmcl.py", workdir, model_dir, **FIELDS),
                            env=tu.fast_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
        if ready():
            proc.kill()
            proc.wait()
            return
        time.sleep(0.002)
    proc.kill()
    raise TimeoutError(what)


def _saving(workdir: str) -> bool:
    """An asynchronous save in flight: orbax writes into a temporary folder, then renames it."""
    return bool(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def test_kills_mid_step_and_mid_save_then_a_corrupt_checkpoint(model_dir, tmp_path):
    full, faulty = str(tmp_path / "full"), str(tmp_path / "faulty")
    tu.run_main_fast("softmcl.py", full, model_dir, **FIELDS)

    rng = np.random.default_rng(7)
    first, third = sorted(rng.choice(np.arange(6, STEPS - 8), size=2, replace=False))
    # 1: SIGKILL between steps.
    proc = _start(faulty, model_dir)
    _kill_when(proc, lambda: _logged(faulty) >= first, f"step {first}")
    # 2: SIGKILL while an asynchronous save is being written.
    proc = _start(faulty, model_dir)
    resumed_at = _logged(faulty)
    _kill_when(proc, lambda: _logged(faulty) > resumed_at + 4 and _saving(faulty),
               "an asynchronous save")
    mid_save = _logged(faulty)
    # 3: SIGKILL between steps, later on.
    proc = _start(faulty, model_dir)
    _kill_when(proc, lambda: _logged(faulty) >= max(third, resumed_at + 6), f"step {third}")
    # Then the newest checkpoint loses its metadata, and the same command runs to the end.
    steps = sorted(int(s) for s in os.listdir(os.path.join(faulty, "checkpoints"))
                   if s.isdigit())
    newest = os.path.join(faulty, "checkpoints", str(steps[-1]))
    metadata = glob.glob(os.path.join(newest, "**", "_METADATA"), recursive=True)
    assert metadata, os.listdir(newest)
    for m in metadata:
        os.remove(m)
    proc = tu.run_main_fast("softmcl.py", faulty, model_dir, **FIELDS)
    print(f"killed at step {first}, during a save at step {mid_save}, at step {third}; "
          f"checkpoints then {steps}, step {steps[-1]} corrupted")
    assert f"checkpoint {steps[-1]}" in proc.stderr and "falling back" in proc.stderr
    assert "resumed from" in proc.stderr and f"at step {steps[-2]}" in proc.stderr

    a, b = tu.read_metrics(full), tu.read_metrics(faulty)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert a == b
    wa = load_file(os.path.join(full, "export", "model.safetensors"))
    wb = load_file(os.path.join(faulty, "export", "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    assert not _saving(faulty)
