"""Sequence packing in the encoders: sentences packed several to a row (``segment_ids``) are encoded
exactly as when each has a row of its own (every family; dropout off)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softmcl_jax.models import bert, from_pretrained, layers
from tests import tiny

FAMILIES = list(tiny.CONFIGS)
LENGTHS = (5, 9, 3, 12)  # sentences 0..3, each [CLS] ... [SEP]
L = 16
# Row 0 holds sentences 1 then 0; row 1 holds 2 then 3 (sentence 3 starts at offset 3, so its
# positions must restart; sentence 0 starts at 9; both rows end in padding).
ROWS = ((1, 0), (2, 3))
# [CLS]/<s> and [SEP]/</s> ids per family (only need to be real, non-pad tokens).
SPECIAL = {"roberta": (0, 2)}


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.cache
def sentences(vocab_size: int, pad: int, family: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cls, sep = SPECIAL.get(family, (1, 2))
    out = []
    for n in LENGTHS:
        body = rng.integers(5, vocab_size, size=n - 2)
        body = np.where(body == pad, pad + 1, body)
        out.append(np.concatenate([[cls], body, [sep]]).astype(np.int32))
    return out


def batches(config, family: str):
    """The same sentences unpacked (4, L) and packed (2, L), and where each landed."""
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    sents = sentences(config.vocab_size, pad, family)
    ids_u = np.full((len(sents), L), pad, np.int32)
    for i, s in enumerate(sents):
        ids_u[i, : len(s)] = s
    mask_u = (ids_u != pad).astype(np.int32)
    ids_p = np.full((len(ROWS), L), pad, np.int32)
    seg = np.zeros((len(ROWS), L), np.int32)
    row, start = np.zeros(len(sents), np.int32), np.zeros(len(sents), np.int32)
    for r, members in enumerate(ROWS):
        at = 0
        for k, i in enumerate(members):
            ids_p[r, at: at + len(sents[i])] = sents[i]
            seg[r, at: at + len(sents[i])] = k + 1
            row[i], start[i] = r, at
            at += len(sents[i])
    unpacked = dict(input_ids=ids_u, attention_mask=mask_u)
    packed = dict(input_ids=ids_p, attention_mask=(seg > 0).astype(np.int32), segment_ids=seg)
    return unpacked, packed, row, start


def per_sentence(packed_hidden, row, start):
    """Packed (R, L, ...) -> (S, L, ...) with sentence s's tokens at 0..len-1 (rest: zeros)."""
    packed_hidden = np.asarray(packed_hidden)
    out = np.zeros((len(LENGTHS), L, *packed_hidden.shape[2:]), packed_hidden.dtype)
    for s, n in enumerate(LENGTHS):
        out[s, :n] = packed_hidden[row[s], start[s]: start[s] + n]
    return out


def real(x):
    """(S, L, ...) -> concatenated real tokens only."""
    return np.concatenate([np.asarray(x)[s, :n] for s, n in enumerate(LENGTHS)])


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(request.param))
    tiny.make_checkpoint(request.param, folder)
    pre = from_pretrained(folder)
    return request.param, pre, batches(pre.config, request.param)


def test_packed_hidden_states_equal_unpacked(family):
    name, pre, (unpacked, packed, row, start) = family
    encode = jax.jit(functools.partial(pre.encode, train=False))
    h_u = encode(pre.params, unpacked["input_ids"], unpacked["attention_mask"])
    h_p = encode(pre.params, packed["input_ids"], packed["attention_mask"],
                 segment_ids=packed["segment_ids"])
    d = max_diff(real(per_sentence(h_p, row, start)), real(h_u))
    print(f"{name}: packed vs unpacked last_hidden_state max|Δ| = {d:.2e}")
    assert np.isfinite(np.asarray(h_p)).all()  # padding rows/queries too
    assert d <= 1e-5


def test_packed_mlm_logits_equal_unpacked(family):
    name, pre, (unpacked, packed, row, start) = family
    logits = jax.jit(functools.partial(pre.mlm_logits, train=False))
    full_u = logits(pre.params, unpacked["input_ids"], unpacked["attention_mask"])
    full_p = logits(pre.params, packed["input_ids"], packed["attention_mask"],
                    segment_ids=packed["segment_ids"])
    d_full = max_diff(real(per_sentence(full_p, row, start)), real(full_u))
    # A few positions per sentence: (S, M) within the sentence; in the packed row with mlm_rows.
    pos = np.array([[0, 1, n - 1] for n in LENGTHS], np.int32)
    at_u = pre.module.apply({"params": pre.params}, unpacked["input_ids"],
                            unpacked["attention_mask"], mlm_positions=pos)["logits"]
    at_p = pre.module.apply({"params": pre.params}, packed["input_ids"],
                            packed["attention_mask"], segment_ids=packed["segment_ids"],
                            mlm_positions=pos + start[:, None], mlm_rows=row)["logits"]
    d_at = max_diff(at_p, at_u)
    print(f"{name}: packed vs unpacked MLM logits max|Δ| = {d_full:.2e} (all), "
          f"{d_at:.2e} (at positions, mlm_rows)")
    assert at_p.shape == (len(LENGTHS), 3, pre.config.vocab_size)
    assert d_full <= 1e-5 and d_at <= 1e-5


def test_packed_gradient_equals_unpacked(family):
    name, pre, (unpacked, packed, row, start) = family
    width = pre.config.hidden_size
    v = jnp.asarray(np.random.default_rng(3).normal(size=(len(LENGTHS), width)), jnp.float32)
    lengths = jnp.asarray(LENGTHS, jnp.float32)

    def loss_unpacked(params):
        h = pre.encode(params, unpacked["input_ids"], unpacked["attention_mask"])
        m = jnp.asarray(unpacked["attention_mask"], jnp.float32)[..., None]
        pooled = (h * m).sum(1) / lengths[:, None]
        return jnp.sum(pooled * v)

    def loss_packed(params):
        h = pre.encode(params, packed["input_ids"], packed["attention_mask"],
                       segment_ids=packed["segment_ids"])
        pooled = []
        for s, n in enumerate(LENGTHS):
            pooled.append(h[row[s], start[s]: start[s] + n].sum(0) / n)
        return jnp.sum(jnp.stack(pooled) * v)

    l_u, g_u = jax.jit(jax.value_and_grad(loss_unpacked))(pre.params)
    l_p, g_p = jax.jit(jax.value_and_grad(loss_packed))(pre.params)
    flat_u = dict(jax.tree_util.tree_leaves_with_path(g_u))
    flat_p = dict(jax.tree_util.tree_leaves_with_path(g_p))
    assert flat_u.keys() == flat_p.keys()
    scale = max(float(jnp.max(jnp.abs(g))) for g in flat_u.values())
    worst = max(max_diff(flat_p[k], flat_u[k]) for k in flat_u)
    print(f"{name}: loss {float(l_u):.6f} vs {float(l_p):.6f}; grad max|Δ| = {worst:.2e} "
          f"(max|g| = {scale:.2e})")
    assert abs(float(l_u) - float(l_p)) <= 1e-5 * max(1.0, abs(float(l_u)))
    assert worst <= 1e-5 * scale


def test_one_segment_per_row_equals_the_unpacked_path(family):
    """segment_ids = attention_mask runs the packed code on unpacked data."""
    name, pre, (unpacked, _, _, _) = family
    run = jax.jit(functools.partial(pre, train=False))
    plain = run(pre.params, unpacked["input_ids"], unpacked["attention_mask"])
    seg = run(pre.params, unpacked["input_ids"], unpacked["attention_mask"],
              segment_ids=unpacked["attention_mask"])
    dh = max_diff(real(seg["last_hidden_state"]), real(plain["last_hidden_state"]))
    dl = max_diff(real(seg["logits"]), real(plain["logits"]))
    print(f"{name}: one segment per row vs unpacked: hidden {dh:.2e}, logits {dl:.2e}")
    assert dh <= 1e-6 and dl <= 1e-5
    if "pooler_output" in plain:  # token 0 of each row: the [CLS] of its only sentence
        assert max_diff(seg["pooler_output"], plain["pooler_output"]) <= 1e-6


# --- the helpers ------------------------------------------------------------------------------

SEG = np.array([[1, 1, 1, 2, 2, 0, 0],
                [1, 1, 2, 3, 3, 3, 0],
                [1, 1, 1, 1, 1, 1, 1]], np.int32)


def test_segment_positions_restart_at_each_segment():
    np.testing.assert_array_equal(layers.segment_starts(jnp.asarray(SEG)),
                                  [[0, 0, 0, 3, 3, 5, 5], [0, 0, 2, 3, 3, 3, 6],
                                   [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(layers.segment_positions(jnp.asarray(SEG)),
                                  [[0, 1, 2, 0, 1, 0, 0], [0, 1, 0, 0, 1, 2, 0],
                                   [0, 1, 2, 3, 4, 5, 6]])


def test_roberta_positions_restart_after_pad_token_id():
    pad = 1
    ids = jnp.asarray(np.where(SEG > 0, 7, pad), jnp.int32)
    pos = bert.position_ids(ids, "roberta", pad, jnp.asarray(SEG))
    np.testing.assert_array_equal(pos, [[2, 3, 4, 2, 3, 1, 1], [2, 3, 2, 2, 3, 4, 1],
                                        [2, 3, 4, 5, 6, 7, 8]])
    # One segment per row: exactly RoBERTa's own position ids.
    mask = jnp.asarray(SEG > 0, jnp.int32)
    np.testing.assert_array_equal(bert.position_ids(ids, "roberta", pad, mask),
                                  bert.position_ids(ids, "roberta", pad))
    np.testing.assert_array_equal(bert.position_ids(ids, "bert", 0, mask)[2], np.arange(7))


def test_segment_mask_is_block_diagonal():
    m = np.asarray(layers.segment_mask(jnp.asarray(SEG)))
    assert m.shape == (3, 1, 7, 7)
    np.testing.assert_array_equal(m[0, 0], SEG[0][:, None] == SEG[0][None, :])
    assert m.any(-1).all()  # every query, padding included, attends something
    bias = np.asarray(layers.segment_bias(jnp.asarray(SEG)))
    np.testing.assert_array_equal(bias == 0, m)
    assert np.isfinite(bias).all()


def test_mlm_rows_needs_positions():
    with pytest.raises(ValueError, match="mlm_rows"):
        layers.at_positions(jnp.zeros((2, 4, 3)), None, jnp.zeros((2,), jnp.int32))
