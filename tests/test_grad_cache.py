"""Gradient caching (``config.grad_cache.chunk``) and ``config.model.dropout``.

The chunked step is checked against the unoptimised paths: with dropout off, against the
unchunked step (every preset and the recommended mix, packed and unpacked, on 1 device and on
8 simulated devices); with dropout on, against the same chunks run one after another without
scan or rematerialisation (the same per-chunk keys). From the command line, 3 SimCSE steps
export the same weights chunked and unchunked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from softmcl_jax import config_check, grad_cache, loop, sharding
from tests import grad_cache_cases as cases
from tests import train_utils as tu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5  # per tensor, relative (the bound)


@pytest.fixture(scope="module")
def one_device():
    return sharding.make_mesh(1, 1, jax.devices()[:1])


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("name", cases.PRESETS)
def test_chunked_gradients_equal_unchunked_ones(name, packed, tiny_model, one_device):
    r = cases.compare(name, tiny_model, one_device, packed=packed, chunk=2)
    print(f"{name} {'packed' if packed else 'unpacked'}: worst {r['worst']:.2e} at "
          f"{r['where']}, loss {r['loss']}")
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5)
    assert r["worst"] <= TOLERANCE, r


def test_chunked_gradients_equal_unchunked_ones_on_8_devices(tiny_model):
    """Every preset and the mix, packed and unpacked, with the batch split over 8 devices,
    each chunking its own rows (batch 32, 4 per device, chunks of 2)."""
    # Compiling 8-device programs dominates; the unoptimised backend compiles both sides alike.
    env = tu.fast_env(devices=8)
    proc = subprocess.run([sys.executable, "-m", "tests.grad_cache_cases", tiny_model],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {(r["name"], r["packed"]) for r in results} == {
        (n, p) for n in cases.PRESETS for p in (False, True)}
    for r in results:
        print(f"8 devices {r['name']} {'packed' if r['packed'] else 'unpacked'}: worst "
              f"{r['worst']:.2e} at {r['where']}")
        assert r["devices"] == 8
        assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5), r
        assert r["worst"] <= TOLERANCE, r


@pytest.mark.parametrize("name", ["simcse", "softmcl"])
def test_with_dropout_chunks_equal_the_unrolled_chunks(name, tiny_model, one_device):
    """Dropout on (the tiny checkpoint's 0.1; test_model_dropout_... shows it is on): the
    scanned, rematerialised chunks give the gradients of the same chunks run one by one and
    kept whole (same keys), so the recomputation drew the first forward's masks. SimCSE: two
    views of each row in the same chunk; SoftMCL packed, with the MLM head chunked."""
    r = cases.compare(name, tiny_model, one_device, packed=name == "softmcl", chunk=2,
                      dropout=None)
    print(f"{name} dropout on: worst {r['worst']:.2e} at {r['where']}; loss {r['loss']}")
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5)
    assert r["worst"] <= TOLERANCE, r


def test_chunks_are_each_devices_own_rows():
    """to_chunks / from_chunks: each chunk takes the same rows of every device's block (and of
    every view), padding a block to whole chunks; from_chunks inverts it, views stacked."""
    shards, chunks, views, rows = 2, 3, 2, 10  # 5 rows per device: k = 2, one padding row each
    x = jnp.arange(rows * 3).reshape(rows, 3)
    c = grad_cache.to_chunks(x, shards=shards, chunks=chunks, views=views)
    assert c.shape == (chunks, shards * views * 2, 3)
    first = np.asarray(c[0, :, 0]) // 3  # chunk 0: rows 0, 1 of each block, each view
    assert first.tolist() == [0, 1, 0, 1, 5, 6, 5, 6]
    assert np.asarray(c[2, :, 0]).tolist() == [12, 0, 12, 0, 27, 0, 27, 0]  # row 4, padding
    back = grad_cache.from_chunks(c, shards=shards, views=views, rows=rows)
    np.testing.assert_array_equal(back, jnp.stack([x] * views))


@pytest.mark.parametrize("fields,message", [
    ({"grad_cache.chunk": 3, "batch_size": 16},
     r"config.grad_cache.chunk=3 does not divide the per-device batch: config.batch_size=16 "
     r"over 1 device is 16 sentences per device; use one of \[1, 2, 4, 8, 16\]"),
    ({"grad_cache.chunk": 32, "batch_size": 16}, r"config.grad_cache.chunk=32 does not divide"),
    ({"grad_cache.chunk": -1}, r"config.grad_cache.chunk=-1 must be >= 0"),
    ({"model.dropout": 1.0}, r"config.model.dropout=1.0 must be in \[0, 1\)"),
])
def test_validate_names_the_field_and_the_numbers(fields, message):
    config = tu.load_config("simcse", **fields)
    with pytest.raises(ValueError, match=message):
        config_check.validate(config)


def test_model_dropout_sets_the_rates_and_keeps_the_checkpoints_config(tiny_model):
    """None: the checkpoint's 0.1; 0.0: a training forward equals the eval forward; the
    Pretrained config (written into exports) keeps the checkpoint's rates."""
    from softmcl_jax.models import from_pretrained

    ids = jnp.asarray(cases.synthetic(4, 0, 0)["input_ids"])
    mask = (ids > 0).astype(jnp.int32)
    key = {"dropout": jax.random.PRNGKey(0)}
    outs = {}
    for rate in (None, 0.0):
        pre = from_pretrained(tiny_model, dropout=rate)
        assert pre.config.hidden_dropout_prob == 0.1  # the checkpoint's, for the export
        outs[rate] = (pre.encode(pre.params, ids, mask, train=True, rngs=key),
                      pre.encode(pre.params, ids, mask))
    assert float(jnp.abs(outs[None][0] - outs[None][1]).max()) > 1e-3
    np.testing.assert_array_equal(outs[0.0][0], outs[0.0][1])


def test_three_simcse_steps_export_the_same_weights_chunked(tiny_model, tmp_path):
    """The issue's check, from the command line: dropout off, chunk 8 == chunk 0 (1e-4 relative
    per tensor) in the exported safetensors."""
    fields = dict(tu.TINY_RUN, model__dropout=0.0, batch_size=16)
    tensors = {}
    for chunk in (0, 8):
        workdir = str(tmp_path / f"chunk{chunk}")
        # Both runs compile under the same (fast) flags: their weights are compared.
        tu.run_main_fast("simcse.py", workdir, tiny_model, grad_cache__chunk=chunk, **fields)
        tensors[chunk] = load_file(os.path.join(workdir, "export", "model.safetensors"))
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    assert tensors[0].keys() == tensors[8].keys()
    # The export is the base model's state dict (no "bert." prefix, no MLM head).
    base = {k.removeprefix("bert."): v
            for k, v in load_file(os.path.join(tiny_model, "model.safetensors")).items()}
    moved = 0
    for k, want in tensors[0].items():
        got = tensors[8][k]
        scale = max(float(np.linalg.norm(want)), 1e-12)
        assert float(np.linalg.norm(got - want)) / scale <= 1e-4, k
        moved += k in base and not np.array_equal(want, base[k])
    assert moved > 10  # the steps trained (weights differ from the checkpoint's)


def test_a_chunked_pass_is_one_scan_that_keeps_no_activations(tiny_model, one_device):
    """The memory claim, structurally: with chunks, XLA's temporary memory of the gradient does
    not grow with the batch as the unchunked one does (compiled, not run)."""
    temps = {}
    for chunk in (0, 4):
        for batch in (8, 32):
            config = cases.config_of("simcse", tiny_model, batch, packed=False, dropout=0.0)
            config.grad_cache.chunk = chunk
            the_plan = config_check.validate(config)
            _, _, model = loop.setup_model(config, the_plan)
            from softmcl_jax import objective, train

            setup = train.setup_step(model, config, one_device, the_plan)
            state = setup.init()
            batch_arrays = cases.batch_for(the_plan, config, 1)

            def f(params, b, config=config, the_plan=the_plan, model=model, state=state):
                return objective.loss(model, the_plan, config, params, None, None, b, {},
                                      jax.random.PRNGKey(0), 0, one_device)[0]

            compiled = jax.jit(jax.grad(f)).lower(state.params, batch_arrays).compile()
            temps[(chunk, batch)] = compiled.memory_analysis().temp_size_in_bytes
    print("temp bytes", temps)
    grown_plain = temps[(0, 32)] - temps[(0, 8)]
    grown_chunked = temps[(4, 32)] - temps[(4, 8)]
    assert grown_chunked < 0.5 * grown_plain, temps



def test_resume_may_change_the_chunk_but_not_the_dropout():
    """grad_cache is a memory knob (a run that ran out of memory resumes with a smaller chunk);
    model.dropout changes the objective. A workdir from before both fields resumes."""
    from softmcl_jax import workdir

    stored = json.loads(tu.load_config("simcse").to_json_best_effort())
    chunked = tu.load_config("simcse", **{"grad_cache.chunk": 4})
    assert workdir.config_differences(stored, json.loads(chunked.to_json_best_effort())) == []
    no_dropout = json.loads(tu.load_config("simcse", **{"model.dropout": 0.0})
                            .to_json_best_effort())
    assert workdir.config_differences(stored, no_dropout) == ["model.dropout: null -> 0.0"]
    old = json.loads(json.dumps(stored))
    del old["grad_cache"], old["model"]["dropout"]
    assert workdir.config_differences(old, stored) == []
