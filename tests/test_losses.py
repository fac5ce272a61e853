"""softmcl_jax.losses against independent PyTorch references, identities and numerics.

Parity: JAX float32 vs the float64 references in baselines/torch_losses.py (and, for SupCon,
pytorch-metric-learning), values and input gradients to 1e-5, with queues, masks and padding.
"""

from __future__ import annotations

import functools
import inspect
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.losses import SupConLoss

from baselines import torch_losses as T
from softmcl_jax import losses as L

RTOL, ATOL = 1e-5, 1e-6
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
# Few distinct shapes so that hypothesis examples mostly hit the jit cache.
SIZES = st.sampled_from([3, 8])
QUEUES = st.sampled_from([0, 5])  # 0: an empty (0, D) queue
DIMS = st.sampled_from([4])
SEEDS = st.integers(0, 2**16)


# ----------------------------------------------------------------------------------- fixtures


def make_batch(seed: int, b: int = 12, k: int = 20, d: int = 16, n_cls: int = 4,
               masks: bool = True, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = lambda *s: (scale * rng.normal(size=s)).astype(np.float32)
    valid = np.ones(b, bool)
    queue_valid = np.ones(k, bool)
    if masks:  # padding rows at random places, the queue's tail not yet filled
        valid[rng.choice(b, size=max(1, b // 5), replace=False)] = False
        queue_valid[k - k // 3:] = False
    logits = rng.normal(size=(b, n_cls))
    return {
        "query": normal(b, d), "key": normal(b, d), "queue_keys": normal(k, d),
        "labels": rng.integers(0, n_cls, b), "queue_labels": rng.integers(0, n_cls, k),
        "valence": rng.uniform(size=b).astype(np.float32),
        "queue_valence": rng.uniform(size=k).astype(np.float32),
        "valid": valid, "queue_valid": queue_valid,
        "class_weights": (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32),
        "classifier_logits": normal(b, n_cls), "weight_logits": normal(b, n_cls),
        "frozen": normal(b, d),
    }


def case(name: str, x: dict, queue: bool) -> tuple[dict, dict]:
    """(differentiable inputs, fixed inputs and options) of loss ``name`` on batch ``x``."""
    masks = {"valid": x["valid"]} | ({"queue_valid": x["queue_valid"]} if queue else {})
    qk = {"queue_keys": x["queue_keys"]} if queue else {}
    ql = {"queue_labels": x["queue_labels"]} if queue else {}
    pair = {"query": x["query"], "key": x["key"]} | qk
    if name == "info_nce":
        return pair, masks
    if name == "supervised_contrastive":
        return {"features": x["query"]} | qk, {"labels": x["labels"]} | ql | masks
    if name == "soft_label_contrastive":
        qv = {"queue_valence": x["queue_valence"]} if queue else {}
        return pair, {"valence": x["valence"], "label_temperature": 0.2} | qv | masks
    if name == "soft_cse_weight":
        return pair, {"mode": "weight", "strength": 2.0} | masks
    if name == "soft_cse_temperature":
        return pair, {"mode": "temperature", "strength": 1.5} | masks
    if name == "label_aware_contrastive":
        return ({"features": x["query"], "class_weights": x["class_weights"]} | qk,
                {"labels": x["labels"]} | ql | masks)
    if name == "lcl_objective":
        return ({"features": x["query"], "classifier_logits": x["classifier_logits"],
                 "weight_logits": x["weight_logits"]} | qk,
                {"labels": x["labels"], "alpha": 0.3} | ql | masks)
    if name == "retrofit_loss":
        return ({"projections": x["key"], "embeddings": x["query"],
                 "frozen_embeddings": x["frozen"]} | qk,
                {"labels": x["labels"], "vsp_weight": 0.7} | ql | masks)
    if name.startswith("vector_space_preservation"):
        return ({"embeddings": x["query"], "frozen_embeddings": x["frozen"]},
                {"valid": x["valid"], "mode": name.split("_")[-1]})
    raise KeyError(name)


def no_temperature(fn):
    """VSP takes no temperature; the shared test harness passes one."""
    return lambda temperature=None, **kw: fn(**kw)


VSP = (no_temperature(L.vector_space_preservation), no_temperature(T.vector_space_preservation))
FUNCTIONS = {
    "soft_cse_weight": (L.soft_cse, T.soft_cse),
    "soft_cse_temperature": (L.soft_cse, T.soft_cse),
    "vector_space_preservation_pairwise": VSP,
    "vector_space_preservation_pointwise": VSP,
} | {n: (getattr(L, n), getattr(T, n)) for n in [
    "info_nce", "supervised_contrastive", "soft_label_contrastive", "label_aware_contrastive",
    "lcl_objective", "retrofit_loss"]}
QUEUE_LOSSES = [n for n in FUNCTIONS if not n.startswith("vector_space")]
# The losses with one anchor per row (``reduction="none"`` and per-row inputs).
ROW_LOSSES = ["info_nce", "supervised_contrastive", "soft_label_contrastive", "soft_cse_weight",
              "soft_cse_temperature", "label_aware_contrastive"]


STATIC = ("mode", "reduction", "normalize", "exclude_self", "vsp_mode", "detach_class_weights")


@functools.cache
def jitted(fn):
    """``fn`` under jit, its string/bool options static; cached so examples share compilations."""
    params = inspect.signature(fn).parameters
    return jax.jit(fn, static_argnames=[n for n in STATIC if n in params])


def to_torch(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.astype(np.float64) if v.dtype.kind == "f" else v)
    return v


def to_jax(v):
    return jnp.asarray(v) if isinstance(v, np.ndarray) else v


def jax_value_and_grads(fn, diff: dict, fixed: dict, **options):
    names = list(diff)
    fixed = {k: to_jax(v) for k, v in fixed.items()}
    f = lambda *xs: fn(**dict(zip(names, xs, strict=True)), **fixed, **options)
    value, grads = jax.value_and_grad(f, argnums=tuple(range(len(names))))(
        *[jnp.asarray(diff[n]) for n in names])
    return value, dict(zip(names, grads, strict=True))


def torch_value_and_grads(fn, diff: dict, fixed: dict, **options):
    leaves = {n: to_torch(v).requires_grad_() for n, v in diff.items()}
    out = fn(**leaves, **{k: to_torch(v) for k, v in fixed.items()}, **options)
    out.backward()
    grads = {n: (t.grad if t.grad is not None else torch.zeros_like(t)).numpy()
             for n, t in leaves.items()}
    return out.item(), grads


def assert_parity(name, diff, fixed, *, rtol=RTOL, atol=ATOL, **options):
    jfn, tfn = FUNCTIONS[name]
    jv, jg = jax_value_and_grads(jfn, diff, fixed, **options)
    tv, tg = torch_value_and_grads(tfn, diff, fixed, **options)
    np.testing.assert_allclose(jv, tv, rtol=rtol, atol=atol,
                               err_msg=f"{name} {options}: loss value differs from torch")
    for n in diff:
        np.testing.assert_allclose(jg[n], tg[n], rtol=rtol, atol=atol,
                                   err_msg=f"{name} {options}: d loss / d {n} differs from torch")
    return jv


# -------------------------------------------------------------------------------- parity tests


@pytest.mark.parametrize("masks", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("name,queue", [(n, q) for n in FUNCTIONS for q in (False, True)
                                        if q in (False, n in QUEUE_LOSSES)],
                         ids=lambda v: {False: "no_queue", True: "queue"}.get(v, v))
def test_parity_with_torch(name, queue, masks):
    x = make_batch(seed=zlib.crc32(f"{name}{queue}{masks}".encode()), masks=masks)
    diff, fixed = case(name, x, queue)
    assert np.isfinite(assert_parity(name, diff, fixed, temperature=0.1))


@pytest.mark.parametrize("name", ["info_nce", "supervised_contrastive", "soft_label_contrastive",
                                  "soft_cse_weight", "label_aware_contrastive"])
def test_parity_unnormalized(name):
    x = make_batch(seed=7, scale=0.3)
    diff, fixed = case(name, x, queue=True)
    assert_parity(name, diff, fixed, temperature=0.5, normalize=False)


@pytest.mark.parametrize("name", ["info_nce", "supervised_contrastive", "soft_label_contrastive",
                                  "soft_cse_temperature", "label_aware_contrastive"])
def test_parity_at_temperature_0_01(name):
    # Unit vectors at tau = 0.01: logits up to 100, exp() would overflow float32 without the LSE.
    x = make_batch(seed=11)
    diff, fixed = case(name, x, queue=True)
    assert_parity(name, diff, fixed, temperature=0.01, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ROW_LOSSES)
def test_parity_per_anchor(name):
    x = make_batch(seed=3)
    diff, fixed = case(name, x, queue=True)
    jfn, tfn = FUNCTIONS[name]
    kw = {"temperature": 0.1, "reduction": "none"}
    got = jfn(**{k: to_jax(v) for k, v in (diff | fixed).items()}, **kw)
    want = tfn(**{k: to_torch(v) for k, v in (diff | fixed).items()}, **kw)
    np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: per-anchor losses differ from torch")


def test_masked_lm_parity():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    labels = rng.integers(0, 11, size=(3, 7))
    labels[rng.random((3, 7)) < 0.6] = -100
    jv, jg = jax_value_and_grads(L.masked_lm_loss, {"logits": logits}, {"labels": labels})
    tv, tg = torch_value_and_grads(T.masked_lm_loss, {"logits": logits}, {"labels": labels})
    np.testing.assert_allclose(jv, tv, rtol=RTOL, err_msg="masked_lm_loss value")
    np.testing.assert_allclose(jg["logits"], tg["logits"], rtol=RTOL, atol=ATOL,
                               err_msg="masked_lm_loss gradient")
    # The mean is over scored tokens only, which is what torch's ignore_index mean does too.
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits).reshape(-1, 11),
                                             torch.from_numpy(labels).reshape(-1))
    np.testing.assert_allclose(jv, want.item(), rtol=RTOL, err_msg="vs F.cross_entropy")


def test_masked_lm_nothing_scored_is_zero_with_finite_grad():
    logits = jnp.ones((2, 3, 5), jnp.bfloat16)
    value, grad = jax.value_and_grad(lambda z: L.masked_lm_loss(z, jnp.full((2, 3), -100)))(logits)
    assert value == 0.0 and value.dtype == jnp.float32
    assert bool(jnp.all(grad == 0)), "no token scored: the gradient must be exactly zero"


@pytest.mark.parametrize("seed", [0, 1])
def test_supcon_matches_pytorch_metric_learning(seed):
    # Labels with singletons: pml's AvgNonZeroReducer drops their (zero) losses, as we do.
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(16, 8)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7, 7])
    rng.shuffle(labels)
    jv, jg = jax_value_and_grads(L.supervised_contrastive, {"features": feats},
                                 {"labels": labels}, temperature=0.07)
    t = torch.from_numpy(feats.astype(np.float64)).requires_grad_()
    tv = SupConLoss(temperature=0.07)(t, torch.from_numpy(labels))
    tv.backward()
    np.testing.assert_allclose(jv, tv.item(), rtol=RTOL,
                               err_msg="SupCon differs from pytorch-metric-learning")
    np.testing.assert_allclose(jg["features"], t.grad.numpy(), rtol=RTOL, atol=ATOL,
                               err_msg="SupCon gradient differs from pytorch-metric-learning")


# ---------------------------------------------------------------------------------- identities


def random_arrays(seed, b, k, d, masked=True):
    rng = np.random.default_rng(seed)
    valid = rng.random(b) < 0.8 if masked else np.ones(b, bool)
    return (rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32),
            rng.normal(size=(k, d)).astype(np.float32), valid, rng.random(k) < 0.7)


@functools.partial(jax.jit, static_argnames="reduction")
def _info_nce(q, k, queue, valid, queue_valid, reduction="none"):
    return L.info_nce(q, k, temperature=0.1, queue_keys=queue, valid=valid,
                      queue_valid=queue_valid, reduction=reduction)


@jax.jit
def _supcon_per_anchor_alone(q, labels, valid, cands, cand_labels, cand_valid):
    """SupCon of each anchor in a batch of its own, all candidates coming from the "queue"."""
    one = lambda qi, yi, vi: L.supervised_contrastive(
        qi[None], yi[None], temperature=0.1, queue_keys=cands, queue_labels=cand_labels,
        valid=vi[None], queue_valid=cand_valid, reduction="none")[0]
    return jax.vmap(one)(q, labels, valid)


@PROPERTY
@given(b=SIZES, k=QUEUES, d=DIMS, seed=SEEDS)
def test_supcon_with_one_positive_is_info_nce(b, k, d, seed):
    """Anchor q_i alone in its batch, candidates k_1..k_B + queue, only k_i sharing its label."""
    q, key, queue, valid, queue_valid = random_arrays(seed, b, k, d)
    cands = np.concatenate([key, queue])
    cand_labels = np.arange(b + k)  # k_i has label i, queue slots labels no anchor has
    cand_valid = np.concatenate([valid, queue_valid])

    got = _supcon_per_anchor_alone(q, np.arange(b), valid, cands, cand_labels, cand_valid)
    np.testing.assert_allclose(got, _info_nce(q, key, queue, valid, queue_valid), rtol=RTOL,
                               atol=ATOL, err_msg="SupCon with one positive != InfoNCE")


@PROPERTY
@given(b=SIZES, k=QUEUES, d=DIMS, seed=SEEDS)
def test_soft_labels_with_distinct_valences_are_info_nce(b, k, d, seed):
    q, key, queue, valid, queue_valid = random_arrays(seed, b, k, d)
    rng = np.random.default_rng(seed)
    v = (rng.permutation(b + k) / (b + k)).astype(np.float32)  # distinct, gaps >= 1/(b+k)
    got = jitted(L.soft_label_contrastive)(q, key, v[:b], temperature=0.1, queue_keys=queue,
                                   queue_valence=v[b:], valid=valid, queue_valid=queue_valid,
                                   label_temperature=1e-3, reduction="none")
    np.testing.assert_allclose(got, _info_nce(q, key, queue, valid, queue_valid), rtol=RTOL,
                               atol=ATOL, err_msg="one-hot soft targets != InfoNCE")


@PROPERTY
@given(n_cls=st.sampled_from([2, 3, 4]), extra=st.sampled_from([0, 3]), k=QUEUES, d=DIMS,
       seed=SEEDS)
def test_soft_labels_with_class_valences_are_supcon(n_cls, extra, k, d, seed):
    """Valence = class / C and lambda -> 0: uniform over same-class candidates = SupCon L_out."""
    rng = np.random.default_rng(seed)
    b = 2 * n_cls + extra
    labels = np.concatenate([np.arange(2 * n_cls) % n_cls, rng.integers(0, n_cls, extra)])
    valid = np.concatenate([np.ones(2 * n_cls, bool), rng.random(extra) < 0.5])  # >= 2 per class
    feats = rng.normal(size=(b, d)).astype(np.float32)
    queue = rng.normal(size=(k, d)).astype(np.float32)
    queue_labels, queue_valid = rng.integers(0, n_cls, k), rng.random(k) < 0.7
    supcon = jitted(L.supervised_contrastive)(feats, labels, temperature=0.1, queue_keys=queue,
                                      queue_labels=queue_labels, valid=valid,
                                      queue_valid=queue_valid, reduction="none")
    soft = jitted(L.soft_label_contrastive)(feats, feats, labels / n_cls, temperature=0.1,
                                    queue_keys=queue, queue_valence=queue_labels / n_cls,
                                    valid=valid, queue_valid=queue_valid, label_temperature=1e-3,
                                    exclude_self=True, reduction="none")
    np.testing.assert_allclose(soft, supcon, rtol=RTOL, atol=ATOL,
                               err_msg="soft labels on class valences != SupCon")


@PROPERTY
@given(b=SIZES, k=QUEUES, seed=SEEDS)
def test_equal_valences_give_uniform_targets(b, k, seed):
    rng = np.random.default_rng(seed)
    valid, queue_valid = rng.random(b) < 0.8, rng.random(k) < 0.7
    for exclude_self in (False, True):
        t = jitted(L.soft_label_targets)(np.full(b, 0.3), np.full(k, 0.3), valid=valid,
                                 queue_valid=queue_valid, exclude_self=exclude_self)
        cand = np.concatenate([np.broadcast_to(valid, (b, b)),
                               np.broadcast_to(queue_valid, (b, k))], 1)
        if exclude_self:
            cand[np.arange(b), np.arange(b)] = False
        n = cand.sum(1, keepdims=True)
        want = np.where(cand, 1.0 / np.maximum(n, 1), 0.0)
        np.testing.assert_allclose(t, want, rtol=RTOL, atol=1e-7,
                                   err_msg=f"targets not uniform (exclude_self={exclude_self})")


# ----------------------------------------------------------------- several affect dimensions


def affect_labels(seed: int, b: int = 12, k: int = 20, dims: int = 3, nan_padding: bool = True):
    """(N, D) and (K, D) labels in [0, 1] with padding rows and empty queue slots; padding holds
    NaN (it must never matter)."""
    rng = np.random.default_rng(seed)
    v = rng.uniform(size=(b, dims)).astype(np.float32)
    qv = rng.uniform(size=(k, dims)).astype(np.float32)
    valid, queue_valid = rng.random(b) < 0.7, rng.random(k) < 0.6
    valid[0] = True
    if nan_padding:
        v[~valid] = np.nan
        qv[~queue_valid] = np.nan
    return v, qv, valid, queue_valid


def numpy_affect_targets(v, qv, valid, queue_valid, weights, lam, valence_range, exclude_self):
    """The weighted-L1 softmax written out in float64: t_ij ~ exp(-sum_d w_d |v_id - v_jd| /
    (lam * range)) over the valid candidates."""
    v, qv = v.astype(np.float64), qv.astype(np.float64)
    cands = np.concatenate([v, qv])
    dist = (np.asarray(weights) * np.abs(v[:, None, :] - cands[None, :, :])).sum(-1)
    cand = np.concatenate([np.broadcast_to(valid, (len(v), len(v))),
                           np.broadcast_to(queue_valid, (len(v), len(qv)))], 1).copy()
    if exclude_self:
        cand[np.arange(len(v)), np.arange(len(v))] = False
    cand &= valid[:, None]  # invalid anchors: the candidates are fine, but their labels are NaN
    logits = np.where(cand, -dist / (lam * valence_range), -np.inf)
    out = np.zeros_like(logits)
    rows = cand.any(1)
    shifted = logits[rows] - logits[rows].max(1, keepdims=True)
    out[rows] = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    return out


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("queue", [False, True], ids=["no_queue", "queue"])
def test_one_affect_dimension_with_unit_weight_is_bitwise_the_valence_targets(queue,
                                                                              exclude_self):
    v, qv, valid, queue_valid = affect_labels(seed=1, dims=1)
    one_d = {"valence": v[:, 0], "valid": valid}
    two_d = {"valence": v, "valid": valid, "label_weights": (1.0,)}
    if queue:
        one_d |= {"queue_valence": qv[:, 0], "queue_valid": queue_valid}
        two_d |= {"queue_valence": qv, "queue_valid": queue_valid}
    opts = {"label_temperature": 0.05, "exclude_self": exclude_self}
    for fn in (L.soft_label_targets, jitted(L.soft_label_targets)):
        want = fn(**one_d, **opts)
        got = fn(**two_d, **opts)
        assert np.isfinite(np.asarray(got)).all(), "NaN padding labels leaked into the targets"
        np.testing.assert_array_equal(got, want, err_msg="(N, 1) with w = 1 != (N,) targets")
    # And so the losses too.
    x = make_batch(seed=2, b=12, k=20)
    feats = {"query": x["query"], "key": x["key"]} | (
        {"queue_keys": x["queue_keys"]} if queue else {})
    fn = jitted(L.soft_label_contrastive)
    np.testing.assert_array_equal(
        fn(**feats, **two_d, **opts, temperature=0.1, reduction="none"),
        fn(**feats, **one_d, **opts, temperature=0.1, reduction="none"),
        err_msg="(N, 1) with w = 1 != (N,) per-anchor losses")


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("weights", [None, (0.5, 0.3, 0.2), (2.0, 0.0, 1.0)], ids=str)
def test_affect_targets_match_the_weighted_l1_softmax(weights, exclude_self):
    v, qv, valid, queue_valid = affect_labels(seed=3)
    got = jitted(L.soft_label_targets)(
        v, qv, valid=valid, queue_valid=queue_valid, label_temperature=0.1, valence_range=2.0,
        label_weights=weights, exclude_self=exclude_self)
    want = numpy_affect_targets(v, qv, valid, queue_valid, (1.0, 1.0, 1.0) if weights is None
                                else weights, 0.1, 2.0, exclude_self)
    got = np.where(valid[:, None], got, 0.0)  # numpy has no targets for padding anchors
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7,
                               err_msg=f"targets != weighted-L1 softmax (w={weights})")


def test_a_zero_weight_makes_its_dimension_irrelevant():
    v, qv, valid, queue_valid = affect_labels(seed=4, nan_padding=False)
    rng = np.random.default_rng(4)
    fn = jitted(L.soft_label_targets)
    kw = {"valid": valid, "queue_valid": queue_valid, "label_temperature": 0.1,
          "label_weights": (1.0, 0.0, 2.0)}
    base = fn(v, qv, **kw)
    for change in ("permute", "redraw"):
        v2, qv2 = v.copy(), qv.copy()
        if change == "permute":
            v2[:, 1], qv2[:, 1] = v[rng.permutation(len(v)), 1], qv[rng.permutation(len(qv)), 1]
        else:
            v2[:, 1], qv2[:, 1] = rng.uniform(size=len(v)), rng.uniform(size=len(qv))
        # 0 * |diff| is +0 and x + 0 is x: exactly unchanged, not merely close.
        np.testing.assert_array_equal(fn(v2, qv2, **kw), base,
                                      err_msg=f"the zero-weight column mattered ({change})")
    without = fn(v[:, [0, 2]], qv[:, [0, 2]], **(kw | {"label_weights": (1.0, 2.0)}))
    np.testing.assert_allclose(without, base, rtol=RTOL, atol=1e-7,
                               err_msg="a zero-weight column != dropping that column")


def test_affect_label_shapes_are_checked():
    v, qv, _, _ = affect_labels(seed=5, nan_padding=False)
    with pytest.raises(ValueError, match=r"label_weights must have shape \(3,\)"):
        L.soft_label_targets(v, qv, label_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="rank of valence"):
        L.soft_label_targets(v, qv[:, 0])
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, D\)"):
        L.soft_label_targets(v[..., None])


@pytest.mark.parametrize("queue", [False, True], ids=["no_queue", "queue"])
@pytest.mark.parametrize("weights", [None, (0.5, 0.3, 0.2)], ids=str)
def test_affect_parity_with_torch(weights, queue):
    x = make_batch(seed=zlib.crc32(f"affect{weights}{queue}".encode()))
    v, qv, valid, queue_valid = affect_labels(seed=6, nan_padding=False)
    diff, fixed = case("soft_label_contrastive", x, queue)
    fixed = fixed | {"valence": v, "valid": valid, "label_weights": weights}
    if queue:
        fixed |= {"queue_valence": qv, "queue_valid": queue_valid}
    assert np.isfinite(assert_parity("soft_label_contrastive", diff, fixed, temperature=0.1))


def row_inputs(name, x, queue=True):
    diff, fixed = case(name, x, queue)
    return {k: to_jax(v) for k, v in (diff | fixed).items()}


ROW_KEYS = ["query", "key", "features", "labels", "valence", "valid", "class_weights"]
QUEUE_KEYS = ["queue_keys", "queue_labels", "queue_valence", "queue_valid"]


@PROPERTY
@given(name=st.sampled_from(ROW_LOSSES), b=SIZES, k=QUEUES, seed=SEEDS)
def test_invariant_to_permuting_batch_and_queue(name, b, k, seed):
    x = make_batch(seed, b=b, k=k, d=4, n_cls=2)
    inputs = row_inputs(name, x)
    rng = np.random.default_rng(seed)
    pb, pk = rng.permutation(b), rng.permutation(k)
    permuted = {n: (v[pb] if n in ROW_KEYS else v[pk] if n in QUEUE_KEYS else v)
                for n, v in inputs.items()}
    fn = FUNCTIONS[name][0]
    per = fn(**inputs, temperature=0.1, reduction="none")
    per_p = fn(**permuted, temperature=0.1, reduction="none")
    np.testing.assert_allclose(per_p, per[pb], rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: per-anchor losses not permutation-equivariant")
    np.testing.assert_allclose(fn(**permuted, temperature=0.1), fn(**inputs, temperature=0.1),
                               rtol=RTOL, atol=ATOL, err_msg=f"{name}: mean not invariant")


@pytest.mark.parametrize("name", QUEUE_LOSSES)
def test_masked_queue_and_padding_change_nothing(name):
    x = make_batch(seed=5)
    fn = jitted(FUNCTIONS[name][0])
    base = fn(**row_inputs(name, x, queue=False), temperature=0.1)
    # A queue whose slots are all empty (garbage, NaN included) ...
    x_q = dict(x, queue_valid=np.zeros(20, bool))
    x_q["queue_keys"][0, 0] = np.nan
    with_queue = fn(**row_inputs(name, x_q, queue=True), temperature=0.1)
    np.testing.assert_allclose(with_queue, base, rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: an all-empty queue changed the loss")
    # ... and extra padding rows holding garbage.
    pad = make_batch(seed=6, b=3)
    x_p = {n: (np.concatenate([x[n], pad[n]]) if n in ROW_KEYS + ["classifier_logits",
                                                                   "weight_logits", "frozen"]
               else x[n]) for n in x}
    x_p["valid"] = np.concatenate([x["valid"], np.zeros(3, bool)])
    for n in ("query", "key", "valence", "class_weights", "classifier_logits", "weight_logits",
              "frozen"):
        x_p[n][-1] = np.nan  # padding may hold anything
    diff, fixed = case(name, x_p, queue=False)
    padded, grads = jax_value_and_grads(fn, diff, fixed, temperature=0.1)
    np.testing.assert_allclose(padded, base, rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: padding rows changed the loss")
    for n, g in grads.items():
        assert bool(jnp.all(jnp.isfinite(g))), f"{name}: NaN padding leaked into d/d{n}"
        assert bool(jnp.all(g[-3:] == 0)), f"{name}: padding rows got a gradient in d/d{n}"


@pytest.mark.parametrize("mode", ["weight", "temperature"])
def test_soft_cse_reduces_to_info_nce_and_never_exceeds_it(mode):
    x = make_batch(seed=9)
    inputs = row_inputs("info_nce", x)
    plain = L.info_nce(**inputs, temperature=0.1, reduction="none")
    zero = L.soft_cse(**inputs, temperature=0.1, mode=mode, strength=0.0, reduction="none")
    np.testing.assert_allclose(zero, plain, rtol=RTOL, atol=ATOL,
                               err_msg=f"soft_cse({mode}, strength=0) != InfoNCE")
    soft = L.soft_cse(**inputs, temperature=0.1, mode=mode, strength=3.0, reduction="none")
    assert bool(jnp.all(soft <= plain + 1e-6)), f"soft_cse({mode}) counted a negative more"


def test_soft_cse_down_weights_the_most_similar_negative():
    # Anchor e0; positive e0; negatives at cos 0.9 and cos 0: the similar one dominates InfoNCE,
    # and SoftCSE must shrink its softmax share in both modes.
    q = jnp.array([[1.0, 0.0]])
    keys = jnp.array([[1.0, 0.0]])
    queue = jnp.array([[0.9, math.sqrt(1 - 0.81)], [0.0, 1.0]])

    def share_of_similar(**kw):
        return jax.grad(lambda qu: L.soft_cse(q, keys, temperature=0.1, queue_keys=qu, **kw))(
            queue)[0, 0]

    base = share_of_similar(mode="weight", strength=0.0)
    assert abs(share_of_similar(mode="weight", strength=2.0)) < abs(base)
    assert abs(share_of_similar(mode="temperature", strength=2.0)) < abs(base)


def test_lcl_with_uniform_weights_is_scaled_supcon():
    # w = 1/C: denominator shrinks by C, so l_i = (SupCon_i - log C) / C.
    x = make_batch(seed=4)
    n_cls = 4
    inputs = row_inputs("supervised_contrastive", x)
    supcon = L.supervised_contrastive(**inputs, temperature=0.1, reduction="none")
    lcl = L.label_aware_contrastive(**inputs, class_weights=jnp.full((12, n_cls), 1 / n_cls),
                                    temperature=0.1, reduction="none")
    np.testing.assert_allclose(lcl, jnp.where(supcon != 0, (supcon - math.log(n_cls)) / n_cls, 0),
                               rtol=RTOL, atol=ATOL, err_msg="LCL(uniform w) != (SupCon - log C)/C")


def test_lcl_objective_combination_and_detach():
    x = make_batch(seed=2)
    diff, fixed = case("lcl_objective", x, queue=True)
    inputs = {k: to_jax(v) for k, v in (diff | fixed).items()}
    alpha = inputs.pop("alpha")
    valid = inputs["valid"]
    ce = lambda z: optax_ce(z, inputs["labels"], valid)
    lcl = L.label_aware_contrastive(inputs["features"], inputs["labels"],
                                    jax.nn.softmax(inputs["weight_logits"]), temperature=0.1,
                                    queue_keys=inputs["queue_keys"],
                                    queue_labels=inputs["queue_labels"], valid=valid,
                                    queue_valid=inputs["queue_valid"])
    want = alpha * (ce(inputs["classifier_logits"]) + ce(inputs["weight_logits"])) \
        + (1 - alpha) * lcl
    got = L.lcl_objective(**inputs, alpha=alpha, temperature=0.1)
    np.testing.assert_allclose(got, want, rtol=RTOL, err_msg="L_f != alpha(L_ce+L_w)+(1-alpha)L")
    # Detached: the weighting network only learns from its own cross-entropy.
    g = jax.grad(lambda w: L.lcl_objective(**(inputs | {"weight_logits": w}), alpha=alpha,
                                           temperature=0.1, detach_class_weights=True))(
        inputs["weight_logits"])
    np.testing.assert_allclose(g, jax.grad(lambda w: alpha * ce(w))(inputs["weight_logits"]),
                               rtol=RTOL, atol=ATOL, err_msg="detach_class_weights leaks LCL grad")


def optax_ce(logits, labels, valid):
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, labels[:, None], 1)[:, 0]
    return jnp.sum(jnp.where(valid, nll, 0)) / jnp.sum(valid)


def test_vsp_properties():
    x = make_batch(seed=8, masks=False)
    e, f = jnp.asarray(x["query"]), jnp.asarray(x["frozen"])
    assert L.vector_space_preservation(e, e) < 1e-12, "VSP of identical spaces must be 0"
    # Pairwise VSP preserves structure only: a rotation of the whole space costs nothing.
    rot, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))
    rotated = e @ jnp.asarray(rot, jnp.float32)
    assert L.vector_space_preservation(rotated, e) < 1e-10
    assert L.vector_space_preservation(rotated, e, mode="pointwise") > 0.1
    g = jax.grad(lambda f: L.vector_space_preservation(e, f))(f)
    assert bool(jnp.all(g == 0)), "the frozen embeddings must be under stop_gradient"
    total = L.retrofit_loss(e, x["labels"], e, f, temperature=0.1, vsp_weight=0.25)
    want = (L.supervised_contrastive(e, x["labels"], temperature=0.1)
            + 0.25 * L.vector_space_preservation(e, f))
    np.testing.assert_allclose(total, want, rtol=RTOL, err_msg="retrofit != SupCon + l*VSP")


@pytest.mark.parametrize("name", ROW_LOSSES)
def test_reductions_agree(name):
    inputs = row_inputs(name, make_batch(seed=12))
    fn = jitted(FUNCTIONS[name][0])
    per = fn(**inputs, temperature=0.1, reduction="none")
    total = fn(**inputs, temperature=0.1, reduction="sum")
    mean = fn(**inputs, temperature=0.1)
    np.testing.assert_allclose(total, per.sum(), rtol=RTOL, err_msg=f"{name}: sum != sum(none)")
    np.testing.assert_allclose(mean, total / jnp.sum(per != 0), rtol=RTOL,
                               err_msg=f"{name}: mean != sum / included anchors")
    with pytest.raises(ValueError):
        fn(**inputs, temperature=0.1, reduction="avg")


@pytest.mark.parametrize("name", ROW_LOSSES)
def test_jit_and_vmap_over_batches(name):
    xs = [row_inputs(name, make_batch(seed=s, b=6, k=5)) for s in (0, 1)]
    static = {k: v for k, v in xs[0].items() if not isinstance(v, jax.Array)}
    arrays = [{k: v for k, v in x.items() if k not in static} for x in xs]
    fn = functools.partial(FUNCTIONS[name][0], **static, temperature=0.1)
    got = jax.jit(jax.vmap(lambda inp: fn(**inp)))(jax.tree.map(lambda *a: jnp.stack(a), *arrays))
    want = [fn(**inp) for inp in arrays]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL,
                               err_msg=f"{name}: jit(vmap) differs")


# ------------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("name", QUEUE_LOSSES)
def test_tiny_temperature_near_duplicates_finite(name):
    # Near-identical unit vectors and tau = 0.01: logits ~ 100 everywhere.
    x = make_batch(seed=13)
    base = x["query"][0]
    for n in ("query", "key", "queue_keys"):
        x[n] = base + 1e-3 * x[n]
    diff, fixed = case(name, x, queue=True)
    value, grads = jax_value_and_grads(FUNCTIONS[name][0], diff, fixed, temperature=0.01)
    assert np.isfinite(value), f"{name}: loss not finite at tau=0.01"
    for n, g in grads.items():
        assert bool(jnp.all(jnp.isfinite(g))), f"{name}: d/d{n} not finite at tau=0.01"


@pytest.mark.parametrize("name", QUEUE_LOSSES)
def test_bf16_inputs_computed_in_fp32(name):
    x = make_batch(seed=14)
    diff, fixed = case(name, x, queue=True)
    rounded = {n: np.asarray(jnp.asarray(v, jnp.bfloat16).astype(jnp.float32))
               for n, v in diff.items()}
    fn = jitted(FUNCTIONS[name][0])
    fixed = {k: to_jax(v) for k, v in fixed.items()}
    as_bf16 = fn(**{n: jnp.asarray(v, jnp.bfloat16) for n, v in diff.items()}, **fixed,
                 temperature=0.05)
    as_fp32 = fn(**{n: jnp.asarray(v) for n, v in rounded.items()}, **fixed, temperature=0.05)
    assert as_bf16.dtype == jnp.float32, f"{name}: loss is {as_bf16.dtype}"
    np.testing.assert_allclose(as_bf16, as_fp32, rtol=RTOL,
                               err_msg=f"{name}: bf16 inputs not computed in fp32")
    grads = jax.grad(lambda d: fn(**d, **fixed, temperature=0.05))(
        {n: jnp.asarray(v, jnp.bfloat16) for n, v in diff.items()})
    for n, g in grads.items():
        assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))), f"{name}: d/d{n}"


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_all_masked_batch_is_finite_with_finite_grads(name):
    x = make_batch(seed=15)
    x["valid"][:] = False
    x["queue_valid"][:] = False
    x["query"][0] = np.nan  # padding may hold anything
    queue = not name.startswith("vector_space")
    diff, fixed = case(name, x, queue)
    value, grads = jax_value_and_grads(FUNCTIONS[name][0], diff, fixed, temperature=0.01)
    assert value == 0.0, f"{name}: all-masked loss {value} (want 0)"
    for n, g in grads.items():
        assert bool(jnp.all(g == 0)), f"{name}: all-masked d/d{n} not zero: {g}"


def test_supcon_no_positive_rows_never_nan():
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3, 3])  # three anchors without positive
    per = L.supervised_contrastive(feats, labels, temperature=0.1, reduction="none")
    assert bool(jnp.all(per[:3] == 0)) and bool(jnp.all(per[3:] > 0))
    g = jax.grad(lambda z: L.supervised_contrastive(z, labels, temperature=0.1))(feats)
    assert bool(jnp.all(jnp.isfinite(g)))
    only_singletons = L.supervised_contrastive(feats, jnp.arange(5), temperature=0.1)
    assert only_singletons == 0.0


def test_large_unnormalized_logits_finite():
    feats = 100.0 * jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    value, g = jax.value_and_grad(lambda z: L.info_nce(z, z[::-1], temperature=0.01,
                                                       normalize=False))(feats)
    assert np.isfinite(value) and bool(jnp.all(jnp.isfinite(g)))
