"""benchmarks/step_mfu.py: its FLOP count against XLA's own, and a CPU run of the script."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import encoder  # noqa: E402
import step_mfu  # noqa: E402

from softmcl_jax import objective, sharding, train  # noqa: E402
from softmcl_jax.models import from_pretrained  # noqa: E402


def _config(name: str, path: str, **kw):
    return step_mfu.step_config(os.path.join(ROOT, "configs", f"{name}.py"), path,
                                **dict(dict(batch=8, seq=32, dtype="float32"), **kw))


@pytest.mark.parametrize("name", ["softmcl", "softmcl_anchored"])
def test_model_flops_are_the_matmul_share_of_xlas_count(name):
    """XLA's cost analysis of the compiled step counts every op (layer norms, softmaxes, heads,
    losses, AdamW); our model-FLOPs count is its matmuls. Leaving out the momentum forward, the
    anchored mix's frozen forward or the MLM head would drop ours below 80% of XLA's; double
    counting would exceed it."""
    path = encoder.random_checkpoint("tiny-bert")
    config = _config(name, path)
    the_plan = objective.plan(config)
    pre = from_pretrained(path, seed=0)
    model = objective.build_model(pre, the_plan, config)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    _, abstract, shardings, fn = train.setup_step(model, config, mesh)
    batch = step_mfu.synthetic_batch(config, pre.config.vocab_size, 0)
    batch = {k: batch[k] for k in the_plan.batch_keys}
    compiled = fn.lower(train.abstract_with_shardings(abstract, shardings), batch).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = step_mfu.step_flops(pre.config, the_plan, rows=8, seq=32, sentences=8,
                               predictions=config.data.mlm_max_predictions)
    print(f"\n{name} step FLOPs, tiny BERT 8x32: ours {ours:.3e}, XLA {xla:.3e} "
          f"({ours / xla:.2f})")
    assert 0.8 * xla <= ours <= xla


def test_queues_hold_a_fixed_number_of_batches_then_of_keys():
    path = encoder.random_checkpoint("tiny-bert")
    assert step_mfu.set_queues(_config("softmcl", path, batch=256, seq=128)) == {
        "soft_sentence": 256 * 32, "soft_word": 256 * 4 * 16}
    assert step_mfu.set_queues(_config("softmcl", path, batch=4096, seq=128)) == {
        "soft_sentence": 8192, "soft_word": 4096 * 4}  # 2 and 1 batches: the keys of batch 256
    assert step_mfu.set_queues(_config("softmcl", path)) == {"soft_sentence": 256,
                                                              "soft_word": 512}


def test_script_runs_on_cpu():
    out = subprocess.run(
        [sys.executable, "benchmarks/step_mfu.py", "--random", "tiny-bert", "--batch", "4",
         "--seq", "16", "--dtype", "float32", "--repeats", "2", "--no_write"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = out.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "padded" and float(row[2]) > 0
    assert "n/a" in row[8] and "n/a" in row[9]  # no bf16 peak figure for a CPU


def test_packed_batches_hold_the_same_sentences():
    """--packing feeds the step the synthetic sentences packed: each sentence's tokens appear
    once in its row at its start, in the fewest rows that hold every batch."""
    from softmcl_jax.data import packing

    config = _config("softmcl", encoder.random_checkpoint("tiny-bert"), batch=16, packing=True)
    plain = [step_mfu.synthetic_batch(config, 1000, i) for i in range(3)]
    packed = step_mfu.pack_batches(plain)
    rows = packed[0]["packed_input_ids"].shape[0]
    assert all(b["packed_input_ids"].shape == (rows, 32) for b in packed) and rows < 16
    for a, b in zip(plain, packed, strict=True):
        lens = packing.lengths(a["attention_mask"])
        back = packing.unpack(b["packed_input_ids"], b["sentence_row"], b["sentence_start"],
                              lens)
        np.testing.assert_array_equal(back, a["input_ids"])
    assert set(objective.plan(config).batch_keys) <= set(packed[0])


def test_script_runs_packed_on_cpu():
    out = subprocess.run(
        [sys.executable, "benchmarks/step_mfu.py", "--random", "tiny-bert", "--batch", "8",
         "--seq", "32", "--dtype", "float32", "--repeats", "2", "--no_write", "--packing"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "packed into" in out.stdout
    row = out.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "packed" and float(row[2]) > 0
