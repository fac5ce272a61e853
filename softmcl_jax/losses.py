r"""Contrastive and auxiliary losses: InfoNCE, SupCon, SoftMCL, VSP/retrofitting, SoftCSE, LCL, MLM.

Conventions shared by every contrastive loss here:

* Pure functions of arrays: no state, jit/vmap/grad-safe. Python branches only on static
  arguments (``normalize``, ``mode``, ``reduction``, whether an optional array is ``None``).
* Inputs of any float dtype are computed in (at least) float32; the loss is float32. Matmuls use
  JAX's default precision, which is TF32 on recent NVIDIA GPUs: on an H200 at B = 256,
  K = 65,536, D = 768 the losses were within 5e-6 (relative) and the gradients within 1e-3 (of
  their max) of full fp32; wrap the call in ``jax.default_matmul_precision("highest")`` for fp32.
* Features are L2-normalised inside (``x / max(||x||, 1e-12)``) unless ``normalize=False``;
  then ``z_i . z_j / tau`` are the logits.
* ``temperature`` may be a Python float or a traced scalar (a learnable temperature).
* Candidates of anchor ``i`` are the ``B`` in-batch keys followed by the ``K`` queue keys; the
  logit matrix is ``(B, B + K)``. ``valid (B,)`` marks real rows (padding is ``False``): an invalid
  row is neither an anchor nor a candidate and gets an exactly zero gradient, whatever it contains
  (even NaN). ``queue_valid (K,)`` marks filled queue slots. Both default to all ``True``.
* Every log-normaliser is a log-sum-exp over the candidates only (masked entries never enter the
  max), so unit vectors at ``tau = 0.01`` do not overflow, and rows without candidates are
  substituted before the ``log`` so that neither value nor gradient is NaN (all-masked batch:
  loss 0, gradient 0).
* ``reduction="mean"`` averages over *included* anchors (valid, and with something to predict:
  e.g. at least one positive for SupCon), 0 if there is none; ``"sum"`` sums them; ``"none"``
  returns the ``(B,)`` per-anchor losses with 0 at excluded anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import logsumexp

Array = jax.Array
Reduction = Literal["mean", "sum", "none"]

__all__ = [
    "info_nce",
    "label_aware_contrastive",
    "lcl_objective",
    "masked_lm_loss",
    "regression_squared_error",
    "retrofit_loss",
    "soft_cse",
    "soft_label_contrastive",
    "soft_label_targets",
    "supervised_contrastive",
    "vector_space_preservation",
]

_EPS = 1e-12


# --------------------------------------------------------------------------------------- helpers


def _as_float(x) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _l2_normalize(x: Array) -> Array:
    # rsqrt(max(|x|^2, eps^2)) instead of x / norm(x): the gradient of norm() is NaN at a zero row.
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, _EPS * _EPS))


def _mask(mask, n: int) -> Array:
    return jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)


def _rows(x, valid: Array, normalize: bool) -> Array:
    # Zero invalid rows *before* anything else: padding may hold garbage, and a where() before the
    # arithmetic is what keeps its gradient exactly 0 rather than 0 * NaN.
    x = jnp.where(valid[:, None], _as_float(x), 0.0)
    return _l2_normalize(x) if normalize else x


def _queue(queue_keys, queue_valid, normalize: bool) -> tuple[Array | None, Array | None]:
    if queue_keys is None:
        return None, None
    queue_valid = _mask(queue_valid, queue_keys.shape[0])
    return _rows(queue_keys, queue_valid, normalize), queue_valid


def _similarities(anchors: Array, keys: Array, queue: Array | None) -> Array:
    """(B, B + K) dot products; two matmuls so the (K, D) queue is never copied by a concat."""
    sims = anchors @ keys.T
    return sims if queue is None else jnp.concatenate([sims, anchors @ queue.T], axis=1)


def _candidates(valid: Array, queue_valid: Array | None, exclude_self: bool) -> Array:
    """(B, B + K) bool: candidate j may enter anchor i's softmax."""
    b = valid.shape[0]
    batch = jnp.broadcast_to(valid[None, :], (b, b))
    if exclude_self:
        batch = batch & ~jnp.eye(b, dtype=bool)
    if queue_valid is None:
        return batch
    queue = jnp.broadcast_to(queue_valid[None, :], (b, queue_valid.shape[0]))
    return jnp.concatenate([batch, queue], axis=1)


def _concat(batch: Array, queue: Array | None) -> Array:
    return batch if queue is None else jnp.concatenate([batch, queue])


def _label_distance(v: Array, cand: Array, label_weights: Array | Sequence[float] | None
                    ) -> Array:
    r"""``(N, N + K)`` label distances ``d_ij = sum_d w_d |v_id - c_jd|`` (``|v_i - c_j|`` in 1-D).

    ``v`` is ``(N,)`` or ``(N, D)``, ``cand`` ``(N + K,)`` or ``(N + K, D)`` correspondingly;
    ``label_weights`` is ``None`` (all ones) or ``(D,)`` (``(1,)`` for 1-D labels).
    """
    if v.ndim == 1 and label_weights is None:
        return jnp.abs(v[:, None] - cand[None, :])
    if v.ndim == 1:
        v, cand = v[:, None], cand[:, None]
    n_dims = v.shape[1]
    if n_dims == 0:
        raise ValueError("labels of shape (N, 0): there is no label dimension to compare")
    w = None if label_weights is None else _as_float(label_weights)
    if w is not None and w.shape != (n_dims,):
        raise ValueError(f"label_weights must have shape ({n_dims},) for {n_dims} label "
                         f"dimension(s), got {w.shape}")
    # A Python sum over the (static, few) dimensions instead of reducing an (N, N + K, D)
    # difference: that array would be D times the size of the logits, with a 65k queue the
    # largest of the step. With D = 1 and w = 1 the sum is w_0 |.| = |.|, bitwise the 1-D case.
    dist = None
    for d in range(n_dims):
        term = jnp.abs(v[:, None, d] - cand[None, :, d])
        if w is not None:
            term = w[d] * term
        dist = term if dist is None else dist + term
    return dist


def _masked_logsumexp(logits: Array, weights: Array) -> Array:
    r"""``log sum_j weights_ij exp(logits_ij)`` per row; rows with no positive weight give 0.

    jax's ``logsumexp(b=...)`` drops ``b == 0`` entries from the max, so masked logits (e.g. the
    self-similarity 1/tau) cannot push the valid terms into underflow. An empty row would be
    log(0) with a NaN gradient, so it is computed on dummy weights and then replaced by 0.
    """
    nonempty = jnp.any(weights > 0, axis=-1)
    safe = jnp.where(nonempty[:, None], weights, 1.0)
    return jnp.where(nonempty, logsumexp(logits, axis=-1, b=safe), 0.0)


def _mean_over(values: Array, where: Array) -> Array:
    return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)


def _reduce(per_anchor: Array, include: Array, reduction: Reduction) -> Array:
    per_anchor = jnp.where(include, per_anchor, 0.0)
    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        return jnp.sum(per_anchor)
    if reduction == "mean":
        return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(include), 1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _multi_positive(logits: Array, cand: Array, pos: Array) -> tuple[Array, Array]:
    """SupCon "L_out" per anchor, ``-(1/|P|) sum_p log softmax_p``, and |P|."""
    n_pos = jnp.sum(pos, axis=-1)
    mean_pos_logit = jnp.sum(jnp.where(pos, logits, 0.0), axis=-1) / jnp.maximum(n_pos, 1)
    return _masked_logsumexp(logits, cand.astype(logits.dtype)) - mean_pos_logit, n_pos


# ----------------------------------------------------------------------------- InfoNCE and SupCon


def info_nce(
    query: Array,
    key: Array,
    *,
    temperature: float | Array,
    queue_keys: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""InfoNCE of SimCSE / MoCo: the positive of query ``i`` is key ``i`` (the diagonal).

    .. math::
      \ell_i = -\log \frac{\exp(q_i \cdot k_i / \tau)}
                          {\sum_{j \le B} \exp(q_i \cdot k_j / \tau)
                           + \sum_{m \le K} \exp(q_i \cdot u_m / \tau)}

    over valid keys ``j`` and valid queue slots ``m``. No ``stop_gradient`` inside: for MoCo the
    caller passes momentum-encoder keys and a queue that carry no gradient.

    Args:
      query: ``(B, D)`` anchors.
      key: ``(B, D)``; ``key[i]`` is the positive of ``query[i]``, the other keys its negatives.
      temperature: ``tau > 0``.
      queue_keys: optional ``(K, D)`` extra negatives.
      valid: optional ``(B,)`` bool; a padding pair ``i`` is neither anchor nor candidate.
      queue_valid: optional ``(K,)`` bool, ``False`` for empty queue slots.
      normalize: L2-normalise query, key and queue first.
      reduction: ``"mean"`` over valid anchors, ``"sum"`` or ``"none"`` (``(B,)``).

    Returns:
      Scalar loss, or ``(B,)`` per-anchor losses for ``reduction="none"``.
    """
    valid = _mask(valid, query.shape[0])
    q, k = _rows(query, valid, normalize), _rows(key, valid, normalize)
    queue, queue_valid = _queue(queue_keys, queue_valid, normalize)
    logits = _similarities(q, k, queue) / temperature
    cand = _candidates(valid, queue_valid, exclude_self=False)
    loss = _masked_logsumexp(logits, cand.astype(logits.dtype)) - jnp.diagonal(logits)
    return _reduce(loss, valid, reduction)


def supervised_contrastive(
    features: Array,
    labels: Array,
    *,
    temperature: float | Array,
    queue_keys: Array | None = None,
    queue_labels: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""Supervised contrastive loss, SupCon "L_out" (Khosla et al., 2020), with an optional queue.

    With ``A(i)`` every valid candidate but ``i`` itself (batch and queue) and
    ``P(i) = {p in A(i) : y_p = y_i}``:

    .. math::
      \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
               \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)}

    Anchors with ``P(i)`` empty are excluded from the mean (the reference implementation divides
    0 by 0 there and returns NaN); their loss and gradient are 0. Multiple views of a sample are
    simply rows with the same label. No ``stop_gradient`` inside.

    Args:
      features: ``(B, D)``; every valid row is both an anchor and a candidate.
      labels: ``(B,)`` integer class labels.
      temperature: ``tau > 0``.
      queue_keys: optional ``(K, D)`` extra candidates (never anchors).
      queue_labels: ``(K,)`` labels of the queue; required with ``queue_keys``.
      valid: optional ``(B,)`` bool; padding rows are neither anchors nor candidates.
      queue_valid: optional ``(K,)`` bool, ``False`` for empty queue slots.
      normalize: L2-normalise features and queue first.
      reduction: ``"mean"`` over anchors with a positive, ``"sum"`` or ``"none"`` (``(B,)``).

    Returns:
      Scalar loss, or ``(B,)`` per-anchor losses for ``reduction="none"``.
    """
    if (queue_keys is None) != (queue_labels is None):
        raise ValueError("queue_keys and queue_labels go together")
    valid = _mask(valid, features.shape[0])
    z = _rows(features, valid, normalize)
    queue, queue_valid = _queue(queue_keys, queue_valid, normalize)
    logits = _similarities(z, z, queue) / temperature
    cand = _candidates(valid, queue_valid, exclude_self=True)
    labels = jnp.asarray(labels)
    pos = cand & (labels[:, None] == _concat(labels, queue_labels)[None, :])
    loss, n_pos = _multi_positive(logits, cand, pos)
    return _reduce(loss, valid & (n_pos > 0), reduction)


# --------------------------------------------------------------------------- SoftMCL (soft labels)


def soft_label_targets(
    valence: Array,
    queue_valence: Array | None = None,
    *,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    label_temperature: float | Array = 0.1,
    valence_range: float | Array = 1.0,
    label_weights: Array | Sequence[float] | None = None,
    exclude_self: bool = False,
) -> Array:
    r"""SoftMCL target distribution over candidates, ``(N, N + K)``, under ``stop_gradient``.

    Labels are one valence per row, ``(N,)``, or ``D`` affect dimensions per row, ``(N, D)``
    (e.g. valence, arousal, dominance), all on a scale of width ``valence_range`` (``v_max -
    v_min``; 1 for labels normalised to ``[0, 1]``). Their distance is the weighted L1

    .. math::
      d_{ij} = \sum_{d \le D} w_d\, |v_{id} - v_{jd}|   \qquad (d_{ij} = |v_i - v_j|
      \text{ for } (N,) \text{ labels})

    with ``w = label_weights`` (default all ones), the sentiment similarity is
    ``s_ij = 1 - d_ij / valence_range``, and

    .. math::
      t_{ij} = \frac{\exp(s_{ij} / \lambda)}{\sum_{c \in C(i)} \exp(s_{ic} / \lambda)}
             = \operatorname{softmax}_{j \in C(i)}\Big(-\frac{d_{ij}}{\lambda\,
               (v_{max} - v_{min})}\Big)

    over the valid candidates ``C(i)`` (batch keys, minus ``i`` itself if ``exclude_self``, and
    valid queue slots), 0 elsewhere; a row with no candidate is all 0. Why a softmax: it is a
    proper distribution for any ``s``, it keeps the ordering by label distance, and
    ``lambda = label_temperature`` interpolates between uniform (``lambda -> inf``) and one-hot on
    the nearest label, uniform over ties (``lambda -> 0``): with distinct valences this is
    InfoNCE's diagonal, with class-valued valences it is SupCon's uniform target over positives.
    The second form shows that only ``lambda * valence_range`` matters; with ``D`` dimensions at
    the default unit weights ``d`` spans ``D`` times the range, so weights summing to 1 keep a
    ``lambda`` tuned for one valence comparable. A weight of 0 removes its dimension.

    ``(N, 1)`` labels with ``label_weights=(1.0,)`` give bitwise the targets of the same labels
    as ``(N,)``.

    Args:
      valence: ``(N,)`` or ``(N, D)`` labels of the batch rows.
      queue_valence: ``(K,)`` or ``(K, D)`` (the same rank as ``valence``) labels of the queue.
      valid: optional ``(N,)`` bool; padding rows are neither anchors nor candidates.
      queue_valid: optional ``(K,)`` bool, ``False`` for empty queue slots.
      label_temperature: ``lambda > 0``.
      valence_range: ``v_max - v_min`` of every dimension.
      label_weights: optional ``(D,)`` non-negative weights ``w`` (``(1,)`` for ``(N,)`` labels);
        default all ones.
      exclude_self: drop candidate ``i`` for anchor ``i``.
    """
    ndim = jnp.ndim(valence)
    if ndim not in (1, 2):
        raise ValueError(f"valence must be (N,) or (N, D), got shape {jnp.shape(valence)}")
    if queue_valence is not None and jnp.ndim(queue_valence) != ndim:
        raise ValueError(f"queue_valence {jnp.shape(queue_valence)} must have the rank of "
                         f"valence {jnp.shape(valence)}: (K,) with (N,), (K, D) with (N, D)")
    # Padding valences are zeroed first: a NaN there would otherwise reach the gradient.
    row = lambda mask: mask if ndim == 1 else mask[:, None]
    valid = _mask(valid, jnp.shape(valence)[0])
    v = jnp.where(row(valid), _as_float(valence), 0.0)
    if queue_valence is not None:
        queue_valid = _mask(queue_valid, jnp.shape(queue_valence)[0])
        queue_valence = jnp.where(row(queue_valid), _as_float(queue_valence), 0.0)
    else:
        queue_valid = None
    # s_ij / lambda minus the constant 1 / lambda, which the softmax ignores: at a small lambda
    # the constant would eat the float32 mantissa (1000 + log n loses ~1e-4 of the target).
    scaled = -_label_distance(v, _concat(v, queue_valence), label_weights) / (
        valence_range * label_temperature
    )
    cand = _candidates(valid, queue_valid, exclude_self)
    log_norm = _masked_logsumexp(scaled, cand.astype(scaled.dtype))
    # -inf before exp (not after): masked entries could overflow exp() at a small lambda.
    targets = jnp.exp(jnp.where(cand, scaled - log_norm[:, None], -jnp.inf))
    return jax.lax.stop_gradient(targets)


def soft_label_contrastive(
    query: Array,
    key: Array,
    valence: Array,
    *,
    temperature: float | Array,
    queue_keys: Array | None = None,
    queue_valence: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    label_temperature: float | Array = 0.1,
    valence_range: float | Array = 1.0,
    label_weights: Array | Sequence[float] | None = None,
    exclude_self: bool = False,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""SoftMCL: cross-entropy between valence-similarity targets and the contrastive softmax.

    .. math::
      \ell_i = -\sum_{j \in C(i)} t_{ij} \log
               \frac{\exp(q_i \cdot k_j / \tau)}{\sum_{c \in C(i)} \exp(q_i \cdot k_c / \tau)}

    with ``t`` from :func:`soft_label_targets` (under ``stop_gradient``) and ``k`` running over the
    batch keys and the queue. Candidates ``C(i)``: every valid batch key *including* ``k_i`` --
    with a query/key pair (dropout views, momentum encoder) ``k_i`` is another encoding of the
    same sample, ``s_ii = 1`` gives it the largest target mass, and it plays MoCo's positive --
    plus the valid queue slots. For a single view (``key is query``) pass ``exclude_self=True``,
    which removes the diagonal from both the targets and the softmax.

    Sentence level: one vector and one valence per sentence. Word level: token vectors gathered
    into a fixed-size ``(N, D)`` array, their valences ``(N,)`` and ``valid (N,)`` marking real
    tokens (padding slots neither anchor nor candidate), typically with ``exclude_self=True``.
    Several affect dimensions (valence, arousal, dominance) per row: labels ``(N, A)`` and
    ``(K, A)``, compared by the weighted L1 distance of :func:`soft_label_targets`.

    Args:
      query: ``(N, D)`` anchors.
      key: ``(N, D)`` in-batch candidates (``key[i]`` pairs with ``query[i]``).
      valence: ``(N,)`` valences of the pairs, or ``(N, A)`` labels over ``A`` affect
        dimensions, normalised so ``v_max - v_min = valence_range``.
      temperature: ``tau > 0`` of the feature softmax.
      queue_keys: optional ``(K, D)`` extra candidates.
      queue_valence: ``(K,)`` (or ``(K, A)``) labels of the queue; required with ``queue_keys``.
      valid: optional ``(N,)`` bool; padding rows are neither anchors nor candidates.
      queue_valid: optional ``(K,)`` bool, ``False`` for empty queue slots.
      label_temperature: ``lambda > 0`` of the target softmax.
      valence_range: ``v_max - v_min``.
      label_weights: optional ``(A,)`` weights of the label dimensions (default all ones).
      exclude_self: drop candidate ``i`` for anchor ``i`` (single-view use).
      normalize: L2-normalise query, key and queue first.
      reduction: ``"mean"`` over anchors with a candidate, ``"sum"`` or ``"none"`` (``(N,)``).

    Returns:
      Scalar loss, or ``(N,)`` per-anchor losses for ``reduction="none"``.
    """
    if (queue_keys is None) != (queue_valence is None):
        raise ValueError("queue_keys and queue_valence go together")
    valid = _mask(valid, query.shape[0])
    q, k = _rows(query, valid, normalize), _rows(key, valid, normalize)
    queue, queue_valid = _queue(queue_keys, queue_valid, normalize)
    logits = _similarities(q, k, queue) / temperature
    targets = soft_label_targets(
        valence, queue_valence, valid=valid, queue_valid=queue_valid,
        label_temperature=label_temperature, valence_range=valence_range,
        label_weights=label_weights, exclude_self=exclude_self,
    )
    cand = _candidates(valid, queue_valid, exclude_self)
    # -sum_j t_ij (l_ij - lse_i), written so that an all-zero target row gives exactly 0.
    mass = jnp.sum(targets, axis=-1)
    loss = mass * _masked_logsumexp(logits, cand.astype(logits.dtype)) - jnp.sum(
        targets * logits, axis=-1
    )
    return _reduce(loss, valid & jnp.any(cand, axis=-1), reduction)


# ------------------------------------------------------------------- emotion retrofitting (VSP)


def vector_space_preservation(
    embeddings: Array,
    frozen_embeddings: Array,
    *,
    valid: Array | None = None,
    mode: Literal["pairwise", "pointwise"] = "pairwise",
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""Vector-space preservation: keep the retrofitted space close to the frozen encoder's.

    ``mode="pairwise"`` (default) preserves the *structure*, the pairwise cosine similarities:

    .. math::
      L = \frac{1}{n(n-1)} \sum_{i \ne j} \big(\hat e_i \cdot \hat e_j
          - \hat f_i \cdot \hat f_j\big)^2

    over the ``n`` valid rows; it leaves the encoder free to rotate the space. ``"pointwise"``
    preserves the embeddings themselves, ``L = (1/n) sum_i ||e^_i - f^_i||^2`` (``= 2 - 2 cos``
    when normalised), as the VSP term of attract-repel retrofitting does. ``^`` is
    L2-normalisation (skipped if ``normalize=False``: then raw Gram matrices / raw vectors).
    ``frozen_embeddings`` pass through ``stop_gradient``.

    Args:
      embeddings: ``(B, D)`` from the encoder being retrofitted.
      frozen_embeddings: ``(B, D)`` of the same inputs from the frozen original encoder.
      valid: optional ``(B,)`` bool; padding rows take part in no pair.
      mode: ``"pairwise"`` or ``"pointwise"``.
      normalize: L2-normalise both first.
      reduction: ``"mean"`` (the ``L`` above), ``"sum"`` or ``"none"`` (per-row means, ``(B,)``).
    """
    valid = _mask(valid, embeddings.shape[0])
    e = _rows(embeddings, valid, normalize)
    f = jax.lax.stop_gradient(_rows(frozen_embeddings, valid, normalize))
    if mode == "pointwise":
        return _reduce(jnp.sum((e - f) ** 2, axis=-1), valid, reduction)
    if mode != "pairwise":
        raise ValueError(f"mode must be 'pairwise' or 'pointwise', got {mode!r}")
    pairs = _candidates(valid, None, exclude_self=True)
    sq = jnp.where(pairs, (e @ e.T - f @ f.T) ** 2, 0.0)
    n_partners = jnp.sum(pairs, axis=-1)
    # Every valid row has the same n - 1 partners, so the mean of row means is the pair mean.
    per_row = jnp.sum(sq, axis=-1) / jnp.maximum(n_partners, 1)
    return _reduce(per_row, valid & (n_partners > 0), reduction)


def retrofit_loss(
    projections: Array,
    labels: Array,
    embeddings: Array,
    frozen_embeddings: Array,
    *,
    temperature: float | Array,
    vsp_weight: float | Array = 1.0,
    queue_keys: Array | None = None,
    queue_labels: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    vsp_mode: Literal["pairwise", "pointwise"] = "pairwise",
    normalize: bool = True,
) -> Array:
    r"""Emotion retrofitting (Shah et al., 2023): ``SupCon(projections) + lambda * VSP``.

    .. math::
      L = L_{SupCon}(g(h), y) + \lambda\, L_{VSP}(h, \operatorname{sg}(h_{frozen}))

    ``projections`` ``(B, P)`` are the projection head's outputs ``g(h)`` (SupCon, see
    :func:`supervised_contrastive`; the queue, if any, lives in projection space);
    ``embeddings``/``frozen_embeddings`` ``(B, D)`` are the encoder's representations before
    the head and the frozen encoder's (see :func:`vector_space_preservation`, which applies the
    ``stop_gradient``). Both terms are means; returns a scalar.
    """
    supcon = supervised_contrastive(
        projections, labels, temperature=temperature, queue_keys=queue_keys,
        queue_labels=queue_labels, valid=valid, queue_valid=queue_valid, normalize=normalize,
    )
    vsp = vector_space_preservation(
        embeddings, frozen_embeddings, valid=valid, mode=vsp_mode, normalize=normalize
    )
    return supcon + vsp_weight * vsp


# ------------------------------------------------------------------------------------- SoftCSE


def soft_cse(
    query: Array,
    key: Array,
    *,
    temperature: float | Array,
    mode: Literal["weight", "temperature"] = "weight",
    strength: float | Array = 1.0,
    queue_keys: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""SoftCSE (Zhuang et al., CIKM 2024): InfoNCE with a per-negative weight or temperature.

    With ``u_ij = sg(clip(cos(q_i, k_j), 0, 1 - 1e-6))`` the anchor-negative cosine similarity
    (always a cosine, even with ``normalize=False``; ``sg`` = ``stop_gradient``) and
    ``gamma = strength >= 0``:

    .. math::
      \ell_i = -\log \frac{e^{q_i \cdot k_i / \tau}}
                          {e^{q_i \cdot k_i / \tau} + \sum_{j \ne i} w_{ij}\,
                           e^{q_i \cdot k_j / \tau_{ij}}}

    * ``mode="weight"``: ``w_ij = (1 - u_ij)^gamma``, ``tau_ij = tau``. A near-duplicate
      (``cos -> 1``, most likely a false negative) gets weight -> 0.
    * ``mode="temperature"``: ``w_ij = 1``, ``tau_ij = tau (1 + gamma u_ij)``, in
      ``[tau, tau (1 + gamma)]``. The logit ``c / tau_ij`` stays increasing in ``c``, so the
      ranking of negatives is kept but similar ones are flattened.

    In both modes the direction is the same: the more similar a negative is to the anchor, the
    less it counts; negatives with ``cos <= 0`` are untouched, no negative counts more than in
    InfoNCE, and ``gamma = 0`` is exactly :func:`info_nce`. The weights/temperatures are
    functions of the similarity under ``stop_gradient`` (they re-weight, they are not a target).
    These forms and ``gamma = 1`` are this library's choice, not values from the paper. ``j``
    runs over the other batch keys and the queue; the positive keeps ``w = 1``, ``tau``.

    Args: as :func:`info_nce`, plus ``mode`` and ``strength`` (``gamma``).
    """
    valid = _mask(valid, query.shape[0])
    q, k = _rows(query, valid, normalize), _rows(key, valid, normalize)
    queue, queue_valid = _queue(queue_keys, queue_valid, normalize)
    sims = _similarities(q, k, queue)
    cos = sims
    if not normalize:  # cosines from the raw dot products and the norms, no second matmul
        inv = lambda x: jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1), _EPS * _EPS))
        cos = sims * inv(q)[:, None] * inv(_concat(k, queue))[None, :]
    u = jax.lax.stop_gradient(jnp.clip(cos, 0.0, 1.0 - 1e-6))
    b = q.shape[0]
    is_pos = jnp.eye(b, sims.shape[1], dtype=bool)
    cand = _candidates(valid, queue_valid, exclude_self=False).astype(sims.dtype)
    if mode == "weight":
        logits = sims / temperature
        weights = cand * jnp.where(is_pos, 1.0, jnp.exp(strength * jnp.log1p(-u)))
    elif mode == "temperature":
        logits = sims / (temperature * jnp.where(is_pos, 1.0, 1.0 + strength * u))
        weights = cand
    else:
        raise ValueError(f"mode must be 'weight' or 'temperature', got {mode!r}")
    loss = _masked_logsumexp(logits, weights) - jnp.diagonal(logits)
    return _reduce(loss, valid, reduction)


# ------------------------------------------------------------------------------------------ LCL


def label_aware_contrastive(
    features: Array,
    labels: Array,
    class_weights: Array,
    *,
    temperature: float | Array,
    queue_keys: Array | None = None,
    queue_labels: Array | None = None,
    valid: Array | None = None,
    queue_valid: Array | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Array:
    r"""Label-aware contrastive loss, LCL (Suresh & Ong, 2021, "Not all negatives are equal").

    With ``A(i)``, ``P(i)`` as in :func:`supervised_contrastive` and ``w_{i,c}`` the weighting
    network's probability of class ``c`` for sample ``i``:

    .. math::
      \ell_i = -\frac{w_{i,y_i}}{|P(i)|} \sum_{p \in P(i)} \log
               \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} w_{i,y_a}
               \exp(z_i \cdot z_a / \tau)}

    The positive weight ``w_{i,y_i}`` sits outside the log, as in the authors' code (their
    paper's equation puts it inside); negatives of a class the weighting network confuses with
    ``y_i`` weigh more in the denominator. Anchors with no positive are excluded (the authors'
    code returns NaN there). No ``stop_gradient``: as in the authors' code, gradients reach
    ``class_weights`` and through them the weighting network; pass ``sg(w)`` to prevent it.

    Args:
      features: ``(B, D)`` anchors and candidates.
      labels: ``(B,)`` integer labels in ``[0, C)``.
      class_weights: ``(B, C)`` probabilities (softmax of the weighting network's logits, taken
        by the caller).
      temperature, queue_keys, queue_labels (in ``[0, C)``), valid, queue_valid, normalize,
      reduction: as :func:`supervised_contrastive`.
    """
    if (queue_keys is None) != (queue_labels is None):
        raise ValueError("queue_keys and queue_labels go together")
    valid = _mask(valid, features.shape[0])
    z = _rows(features, valid, normalize)
    queue, queue_valid = _queue(queue_keys, queue_valid, normalize)
    logits = _similarities(z, z, queue) / temperature
    cand = _candidates(valid, queue_valid, exclude_self=True)
    labels = jnp.asarray(labels)
    cand_labels = _concat(labels, queue_labels)
    w = jnp.where(valid[:, None], _as_float(class_weights), 0.0)  # padding rows may hold NaN
    pos = cand & (labels[:, None] == cand_labels[None, :])
    n_pos = jnp.sum(pos, axis=-1)
    log_norm = _masked_logsumexp(logits, jnp.where(cand, w[:, cand_labels], 0.0))
    mean_pos_logit = jnp.sum(jnp.where(pos, logits, 0.0), axis=-1) / jnp.maximum(n_pos, 1)
    w_pos = jnp.take_along_axis(w, labels[:, None], axis=1)[:, 0]
    return _reduce(w_pos * (log_norm - mean_pos_logit), valid & (n_pos > 0), reduction)


def lcl_objective(
    classifier_logits: Array,
    weight_logits: Array,
    labels: Array,
    features: Array,
    *,
    temperature: float | Array,
    alpha: float | Array = 0.5,
    valid: Array | None = None,
    queue_keys: Array | None = None,
    queue_labels: Array | None = None,
    queue_valid: Array | None = None,
    detach_class_weights: bool = False,
    normalize: bool = True,
) -> Array:
    r"""Full LCL objective: ``L_f = alpha (L_ce + L_w) + (1 - alpha) L_LCL``.

    ``L_ce``: cross-entropy of the main classifier's ``(B, C)`` logits; ``L_w``: cross-entropy of
    the weighting network's ``(B, C)`` logits; ``L_LCL``: :func:`label_aware_contrastive` on
    ``features (B, D)`` with ``class_weights = softmax(weight_logits)``, through which the LCL
    term trains the weighting network too unless ``detach_class_weights`` (then ``sg``).
    All three are means over valid rows (``L_LCL`` over valid rows with a positive).
    """
    valid = _mask(valid, features.shape[0])
    ce = lambda logits: classifier_cross_entropy(logits, labels, valid=valid)
    class_weights = class_probabilities(weight_logits, valid)
    if detach_class_weights:
        class_weights = jax.lax.stop_gradient(class_weights)
    lcl = label_aware_contrastive(
        features, labels, class_weights, temperature=temperature, queue_keys=queue_keys,
        queue_labels=queue_labels, valid=valid, queue_valid=queue_valid, normalize=normalize,
    )
    return alpha * (ce(classifier_logits) + ce(weight_logits)) + (1.0 - alpha) * lcl


def classifier_cross_entropy(logits: Array, labels: Array, *, valid: Array | None = None,
                             reduction: Reduction = "mean") -> Array:
    r"""Softmax cross-entropy of ``(B, C)`` logits against ``(B,)`` labels in ``[0, C)``,
    ``mean_{i valid} -log softmax(logits_i)[y_i]`` (LCL's ``L_ce`` and ``L_w``).

    Invalid rows' logits are zeroed first (a NaN there would reach the gradient) and give 0.
    """
    valid = _mask(valid, logits.shape[0])
    per_row = optax.softmax_cross_entropy_with_integer_labels(
        _valid_rows(logits, valid), jnp.asarray(labels))
    return _reduce(per_row, valid, reduction)


def regression_squared_error(predictions: Array, targets: Array, *, valid: Array | None = None,
                             reduction: Reduction = "mean") -> Array:
    r"""Squared error of a regression head, ``mean_{i valid} (p_i - y_i)^2``.

    ``predictions`` (B,) (a 1-output linear head on the pooled vector, flattened) and ``targets``
    (B,) (a sentence rating, e.g. valence on [0, 1]); ``valid`` (B,) bool: the rows that have a
    rating. Invalid rows are zeroed before the difference (an absent rating is stored as -1 and
    padding may hold anything), so they give 0 and an exactly-0 gradient; the mean is over the
    valid rows (0 when there are none).
    """
    valid = _mask(valid, predictions.shape[0])
    p = jnp.where(valid, _as_float(predictions), 0.0)
    y = jnp.where(valid, _as_float(targets), 0.0)
    return _reduce(jnp.square(p - y), valid, reduction)


def class_probabilities(logits: Array, valid: Array | None = None) -> Array:
    """``softmax(logits)`` ``(B, C)`` in float32, uniform on invalid rows (their logits zeroed):
    LCL's class weights from the weighting network."""
    valid = _mask(valid, logits.shape[0])
    return jax.nn.softmax(_valid_rows(logits, valid), axis=-1)


def _valid_rows(logits: Array, valid: Array) -> Array:
    return jnp.where(valid[:, None], _as_float(logits), 0.0)


# ------------------------------------------------------------------------------------------ MLM


def masked_lm_loss(
    logits: Array,
    labels: Array,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Array:
    r"""Masked-LM cross-entropy, ``mean_{t : y_t != ignore} -log softmax(logits_t)[y_t]``.

    Args:
      logits: ``(..., V)`` (any float dtype; computed in float32).
      labels: ``(...)`` integer targets, ``ignore_index`` where no prediction is scored.
      ignore_index: label value to skip.
      reduction: ``"mean"`` over scored tokens (0, with a zero gradient, when there are none),
        ``"sum"`` or ``"none"`` (per-token, 0 where ignored).
    """
    labels = jnp.asarray(labels)
    scored = labels != ignore_index
    # Ignored positions get a dummy in-range label so the gather stays well defined.
    per_token = optax.softmax_cross_entropy_with_integer_labels(
        _as_float(logits), jnp.where(scored, labels, 0)
    )
    return _reduce(per_token, scored, reduction)
