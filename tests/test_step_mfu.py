"""benchmarks/step_mfu.py: its FLOP count against XLA's own, and a CPU run of the script."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import encoder  # noqa: E402
import step_mfu  # noqa: E402

from softmcl_jax import objective, sharding, train  # noqa: E402
from softmcl_jax.models import from_pretrained  # noqa: E402


def test_model_flops_are_the_matmul_share_of_xlas_count():
    """XLA's cost analysis of the compiled SoftMCL step counts every op (layer norms, softmaxes,
    heads, losses, AdamW); our model-FLOPs count is its matmuls. Leaving out the momentum forward
    or the MLM head would drop ours below 80% of XLA's; double counting would exceed it."""
    args = argparse.Namespace(dtype="float32", remat=False, batch=8, seq=32)
    path = encoder.random_checkpoint("tiny-bert")
    config = step_mfu.softmcl_config(args, path)
    pre = from_pretrained(path, seed=0)
    model = objective.build_model(pre, objective.plan(config), config)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    _, abstract, shardings, fn = train.setup_step(model, config, mesh)
    batch = step_mfu.synthetic_batch(config, pre.config.vocab_size, 0)
    compiled = fn.lower(train.abstract_with_shardings(abstract, shardings), batch).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = step_mfu.step_flops(pre.config, 8, 32, config.data.mlm_max_predictions)
    print(f"\nSoftMCL step FLOPs, tiny BERT 8x32: ours {ours:.3e}, XLA {xla:.3e} "
          f"({ours / xla:.2f})")
    assert 0.8 * xla <= ours <= xla


def test_script_runs_on_cpu():
    out = subprocess.run(
        [sys.executable, "benchmarks/step_mfu.py", "--random", "tiny-bert", "--batch", "4",
         "--seq", "16", "--dtype", "float32", "--repeats", "2", "--no_write"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = out.stdout.strip().splitlines()[-1].split("|")
    assert float(row[1]) > 0 and "n/a" in row[7]  # no bf16 peak figure for a CPU
