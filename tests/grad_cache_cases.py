"""The gradient-caching comparisons, shared by tests/test_grad_cache.py (one device, in the test
process) and its 8-device subprocess (``python -m tests.grad_cache_cases MODEL_DIR``: XLA_FLAGS
must be set by the caller, before jax initialises).

A case is a preset (or the recommended mix) on a synthetic batch with every array a term can
read (ratings, lexicon words, classes, MLM targets; some rows without them, one padding row),
unpacked or packed, and its queues filled with random valid keys so that they are candidates.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softmcl_jax import config_check, grad_cache, loop, objective, sharding, train
from softmcl_jax.data import packing
from tests import train_utils as tu

PRESETS = ("softmcl", "simcse", "softcse", "retrofit", "lcl", "softmcl_anchored")
LENGTH = 24


def config_of(name: str, model_dir: str, batch: int, *, packed: bool, dropout: float | None
              ) -> Any:
    config = tu.load_config(name, **{
        "batch_size": batch, "model.max_len": LENGTH, "head.dim": 16, "probe.enabled": False,
        "model.name_or_path": model_dir, "data.packing": packed, "model.dropout": dropout,
        "data.mlm_max_predictions": 4})
    for term in ("soft_sentence", "infonce", "softcse"):
        if config.objective[term].weight > 0 and config.objective[term].queue_size:
            config.objective[term].queue_size = 2 * batch
    if config.objective.soft_word.weight > 0:
        config.objective.soft_word.queue_size = 2 * batch * 4
    return config


def synthetic(n: int, num_labels: int, seed: int) -> dict[str, np.ndarray]:
    """An unpacked batch of ``n`` rows with every array any term reads."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, LENGTH + 1, n)
    pos = np.arange(LENGTH)[None]
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(1000, 5000, (n, LENGTH)), 0).astype(np.int32)
    ids[:, 0], ids[np.arange(n), lengths - 1] = 101, 102
    inner = (pos > 0) & (pos < lengths[:, None] - 1)
    scored = inner & (rng.random((n, LENGTH)) < 0.2)
    words = inner & (rng.random((n, LENGTH)) < 0.2)
    valid = np.ones(n, bool)
    valid[-1] = False  # a padding row: read by no term
    return {
        "input_ids": ids, "attention_mask": mask, "valid": valid,
        "mlm_input_ids": np.where(scored, 103, ids).astype(np.int32),
        "mlm_labels": np.where(scored, ids, -100).astype(np.int32),
        "sentence_valence": np.where(rng.random(n) < 0.8, rng.random(n), -1).astype(np.float32),
        "token_valence": np.where(words, rng.random((n, LENGTH)), 0).astype(np.float32),
        "token_valence_mask": words,
        "labels": np.where(rng.random(n) < 0.8, rng.integers(0, max(num_labels, 1), n),
                           -1).astype(np.int32),
    }


def batch_for(the_plan: objective.Plan, config: Any, shards: int, seed: int = 0
              ) -> dict[str, np.ndarray]:
    arrays = synthetic(config.batch_size, config.data.num_labels, seed)
    if config.data.packing:
        # The fewest rows that hold the batch: not a multiple of the chunks as a rule (the
        # chunker pads each device's block).
        rows, packed = shards, None
        while packed is None:
            rows += shards
            packed = packing.pack(arrays, rows=rows, shards=shards, pad_id=0)
        arrays = packed
    return {k: arrays[k] for k in the_plan.batch_keys}


def filled_queues(state: train.TrainState, seed: int) -> dict[str, train.Queue]:
    """The state's queues full of random unit keys and values, all valid."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, q in state.queues.items():
        keys = rng.standard_normal(q.keys.shape).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
        values = (rng.random(q.values.shape).astype(q.values.dtype)
                  if q.values.dtype.kind == "f" else np.zeros(q.values.shape, q.values.dtype))
        out[name] = q.replace(keys=jax.device_put(keys, q.keys.sharding),
                              values=jax.device_put(values, q.values.sharding),
                              valid=jax.device_put(np.ones(q.valid.shape, bool), q.valid.sharding))
    return out


def gradients(config: Any, mesh: Any, chunks: tuple[int, ...], seed: int = 0
              ) -> dict[int, tuple[float, dict[str, Any], Any]]:
    """{chunk: (loss, metrics, gradient)} of the objective of ``config`` at its initial state,
    on one batch, with ``grad_cache.chunk`` set to each of ``chunks`` (0 = off)."""
    the_plan = config_check.validate(config)
    _, _, model = loop.setup_model(config, the_plan)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    queues = filled_queues(state, seed)
    shards = sharding.batch_size_per_axis(mesh)
    batch = jax.device_put(batch_for(the_plan, config, shards, seed),
                           sharding.batch_sharding(mesh))
    frozen = setup.step_fn.constants.get("frozen")
    rng = jax.random.PRNGKey(seed + 7)
    out = {}
    for chunk in chunks:
        variant = copy.deepcopy(config)
        variant.grad_cache.chunk = chunk
        config_check.validate(variant)

        def f(params, variant=variant):
            return objective.loss(model, the_plan, variant, params, state.ema_params, frozen,
                                  batch, queues, rng, 0, mesh)

        (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(
            state.params)
        out[chunk] = float(loss), jax.device_get(metrics), jax.device_get(grads)
    return out


def worst_difference(want: Any, got: Any) -> tuple[float, str]:
    """The largest per-tensor ``|got - want| / |want|`` (Frobenius norms) and its tensor.

    A tensor whose gradient is zero in exact arithmetic (the attention key bias: softmax is
    invariant to it) holds rounding noise only; its norm is floored at 1e-6 of the whole
    gradient's, so noise there is not counted as a difference."""
    total = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(want))))
    worst, where = 0.0, ""
    flat_got = jax.tree.leaves(got)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), flat_got, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-6 * total, 1e-30)
        if rel > worst:
            worst, where = float(rel), jax.tree_util.keystr(path)
    return worst, where


def unrolled(fn, xs, *, remat: bool):
    """``grad_cache.scan_chunks`` unoptimised: a Python loop over the chunks, no scan and no
    rematerialisation (every chunk's activations kept), the same chunk indices (keys)."""
    del remat
    n = jax.tree.leaves(xs)[0].shape[0]
    outs = [fn(jax.tree.map(lambda x, i=i: x[i], xs), jnp.int32(i)) for i in range(n)]
    return jax.tree.map(lambda *o: jnp.stack(o), *outs)


def compare(name: str, model_dir: str, mesh: Any, *, packed: bool, chunk: int,
            dropout: float | None = 0.0) -> dict[str, Any]:
    """The chunked scan against the unchunked pass (dropout off) or against the unrolled chunks
    (dropout on: the same per-chunk keys)."""
    shards = sharding.batch_size_per_axis(mesh)
    batch = (8 if shards == 1 else 4) * shards
    config = config_of(name, model_dir, batch, packed=packed, dropout=dropout)
    got = gradients(config, mesh, (chunk,) if dropout != 0.0 else (0, chunk))
    if dropout == 0.0:
        want = got[0]
    else:
        scan = grad_cache.scan_chunks
        grad_cache.scan_chunks = unrolled
        try:
            want = gradients(config, mesh, (chunk,))[chunk]
        finally:
            grad_cache.scan_chunks = scan
    got = got[chunk]
    worst, where = worst_difference(want[2], got[2])
    return {"name": name, "packed": packed, "devices": int(mesh.devices.size), "chunk": chunk,
            "loss": [want[0], got[0]], "worst": worst, "where": where,
            "terms": sorted(k for k in got[1] if k.startswith("loss/"))}


def main(model_dir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.make_mesh(-1, 1)
    results = [compare(name, model_dir, mesh, packed=packed, chunk=2)
               for name in PRESETS for packed in (False, True)]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
