"""PyTorch reference implementations of the losses in ``softmcl_jax.losses``.

Written from the equations in the papers (and the docstrings' choices), deliberately in a
different style from the JAX code, to serve as an independent check in tests/test_losses.py and
as the baseline in benchmarks/losses.py:

* anchors that are excluded (padding, no positive, no candidate) are *dropped* by boolean
  indexing before any arithmetic instead of being masked and zeroed;
* log-normalisers use ``masked_fill(-inf)`` + ``torch.logsumexp`` / ``log_softmax``, or the
  SupContrast-style "subtract the row max, exp, multiply by the mask, log of the sum".

Every function takes the same arguments as its JAX counterpart (torch tensors) and returns the
mean over included anchors, or for ``reduction="none"`` a ``(B,)`` tensor with 0 at excluded
anchors. Works in float32 or float64 (the tests use float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _valid(mask: Tensor | None, n: int, device) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask.bool()


def _prep(x: Tensor, valid: Tensor, normalize: bool) -> Tensor:
    x = torch.where(valid[:, None], x, torch.zeros_like(x))
    return F.normalize(x, dim=-1, eps=1e-12) if normalize else x


def _finish(per_anchor: Tensor, include: Tensor, reduction: str) -> Tensor:
    """``per_anchor`` holds only the included anchors' losses, in order."""
    if reduction == "none":
        out = per_anchor.new_zeros(include.shape[0])
        return out.index_put((include.nonzero()[:, 0],), per_anchor)
    if reduction == "sum":
        return per_anchor.sum()
    if per_anchor.numel() == 0:
        return per_anchor.sum()  # 0 with a zero gradient
    return per_anchor.mean()


def _setup(anchors, keys, queue_keys, valid, queue_valid, normalize):
    """Normalised anchors, the (B + K, D) candidate matrix and the (B + K,) candidate validity."""
    b = anchors.shape[0]
    valid = _valid(valid, b, anchors.device)
    a = _prep(anchors, valid, normalize)
    k = a if keys is None else _prep(keys, valid, normalize)
    cand_valid = valid
    if queue_keys is not None:
        qv = _valid(queue_valid, queue_keys.shape[0], anchors.device)
        k = torch.cat([k, _prep(queue_keys, qv, normalize)])
        cand_valid = torch.cat([valid, qv])
    return a, k, valid, cand_valid


def info_nce(query, key, *, temperature, queue_keys=None, valid=None, queue_valid=None,
             normalize=True, reduction="mean"):
    q, cands, valid, cand_valid = _setup(query, key, queue_keys, valid, queue_valid, normalize)
    logits = (q @ cands.T / temperature).masked_fill(~cand_valid[None, :], float("-inf"))
    idx = valid.nonzero()[:, 0]
    per = F.cross_entropy(logits[idx], idx, reduction="none")
    return _finish(per, valid, reduction)


def supervised_contrastive(features, labels, *, temperature, queue_keys=None, queue_labels=None,
                           valid=None, queue_valid=None, normalize=True, reduction="mean"):
    z, cands, valid, cand_valid = _setup(features, None, queue_keys, valid, queue_valid, normalize)
    b = z.shape[0]
    cand_labels = labels if queue_labels is None else torch.cat([labels, queue_labels])
    logits = z @ cands.T / temperature
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(b), torch.arange(b)] = False
    cand = not_self & cand_valid[None, :]
    pos = cand & (labels[:, None] == cand_labels[None, :])
    include = valid & (pos.sum(1) > 0)
    logits, cand, pos = logits[include], cand[include], pos[include]
    # SupContrast style: subtract the (candidate) row max, exp, mask, log-sum.
    row_max = logits.masked_fill(~cand, float("-inf")).max(1, keepdim=True).values.detach()
    shifted = logits - row_max
    log_prob = shifted - torch.log((torch.exp(shifted) * cand).sum(1, keepdim=True))
    per = -(log_prob * pos).sum(1) / pos.sum(1)
    return _finish(per, include, reduction)


def soft_label_targets(valence, queue_valence=None, *, valid=None, queue_valid=None,
                       label_temperature=0.1, valence_range=1.0, label_weights=None,
                       exclude_self=False):
    b = valence.shape[0]
    valid = _valid(valid, b, valence.device)
    cand_v, cand_valid = valence, valid
    if queue_valence is not None:
        cand_v = torch.cat([valence, queue_valence])
        cand_valid = torch.cat([valid, _valid(queue_valid, queue_valence.shape[0], valence.device)])
    cand = cand_valid[None, :].expand(b, -1).clone()
    if exclude_self:
        cand[torch.arange(b), torch.arange(b)] = False
    if valence.dim() == 1 and label_weights is None:
        dist = (valence[:, None] - cand_v[None, :]).abs()
    else:
        # (N, D) labels: the weighted L1 over the dimensions, through a (N, N + K, D) broadcast.
        v, c = (valence[:, None], cand_v[:, None]) if valence.dim() == 1 else (valence, cand_v)
        w = (torch.ones(v.shape[1], dtype=v.dtype, device=v.device) if label_weights is None
             else torch.as_tensor(label_weights, dtype=v.dtype, device=v.device))
        dist = ((v[:, None, :] - c[None, :, :]).abs() * w).sum(-1)
    sim = 1.0 - dist / valence_range
    t = torch.softmax((sim / label_temperature).masked_fill(~cand, float("-inf")), dim=1)
    return torch.nan_to_num(t, nan=0.0), cand  # rows without candidates: softmax of -inf = NaN


def soft_label_contrastive(query, key, valence, *, temperature, queue_keys=None,
                           queue_valence=None, valid=None, queue_valid=None,
                           label_temperature=0.1, valence_range=1.0, label_weights=None,
                           exclude_self=False, normalize=True, reduction="mean"):
    q, cands, valid, _ = _setup(query, key, queue_keys, valid, queue_valid, normalize)
    t, cand = soft_label_targets(valence, queue_valence, valid=valid, queue_valid=queue_valid,
                                 label_temperature=label_temperature,
                                 valence_range=valence_range, label_weights=label_weights,
                                 exclude_self=exclude_self)
    include = valid & cand.any(1)
    logits = (q @ cands.T / temperature)[include].masked_fill(~cand[include], float("-inf"))
    log_p = torch.log_softmax(logits, dim=1)
    per = -torch.where(cand[include], t[include].detach() * log_p, torch.zeros_like(log_p)).sum(1)
    return _finish(per, include, reduction)


def vector_space_preservation(embeddings, frozen_embeddings, *, valid=None, mode="pairwise",
                              normalize=True, reduction="mean"):
    valid = _valid(valid, embeddings.shape[0], embeddings.device)
    e = _prep(embeddings, valid, normalize)[valid]
    f = _prep(frozen_embeddings, valid, normalize)[valid].detach()
    n = e.shape[0]
    if mode == "pointwise":
        return _finish(((e - f) ** 2).sum(1), valid, reduction)
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    sq = ((e @ e.T - f @ f.T) ** 2) * off
    if n < 2:
        return _finish(sq.sum(1)[:0], valid & False, reduction)
    return _finish(sq.sum(1) / (n - 1), valid, reduction)


def retrofit_loss(projections, labels, embeddings, frozen_embeddings, *, temperature,
                  vsp_weight=1.0, queue_keys=None, queue_labels=None, valid=None,
                  queue_valid=None, vsp_mode="pairwise", normalize=True):
    supcon = supervised_contrastive(projections, labels, temperature=temperature,
                                    queue_keys=queue_keys, queue_labels=queue_labels, valid=valid,
                                    queue_valid=queue_valid, normalize=normalize)
    vsp = vector_space_preservation(embeddings, frozen_embeddings, valid=valid, mode=vsp_mode,
                                    normalize=normalize)
    return supcon + vsp_weight * vsp


def soft_cse(query, key, *, temperature, mode="weight", strength=1.0, queue_keys=None,
             valid=None, queue_valid=None, normalize=True, reduction="mean"):
    q, cands, valid, cand_valid = _setup(query, key, queue_keys, valid, queue_valid, normalize)
    b = q.shape[0]
    sims = q @ cands.T
    cos = sims if normalize else (
        F.normalize(q, dim=1, eps=1e-12) @ F.normalize(cands, dim=1, eps=1e-12).T)
    u = cos.detach().clamp(0.0, 1.0 - 1e-6)
    pos_sim = sims[torch.arange(b), torch.arange(b)]
    neg = cand_valid[None, :].expand(b, -1).clone()
    neg[torch.arange(b), torch.arange(b)] = False
    if mode == "weight":
        neg_terms = (1.0 - u) ** strength * torch.exp(sims / temperature)
    else:
        neg_terms = torch.exp(sims / (temperature * (1.0 + strength * u)))
    # Direct form of the equation (no max shift): fine at the test temperatures.
    denom = torch.exp(pos_sim / temperature) + (neg_terms * neg).sum(1)
    per = -(pos_sim / temperature - torch.log(denom))
    return _finish(per[valid], valid, reduction)


def label_aware_contrastive(features, labels, class_weights, *, temperature, queue_keys=None,
                            queue_labels=None, valid=None, queue_valid=None, normalize=True,
                            reduction="mean"):
    z, cands, valid, cand_valid = _setup(features, None, queue_keys, valid, queue_valid, normalize)
    b = z.shape[0]
    cand_labels = labels if queue_labels is None else torch.cat([labels, queue_labels])
    logits = z @ cands.T / temperature
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(b), torch.arange(b)] = False
    cand = not_self & cand_valid[None, :]
    pos = cand & (labels[:, None] == cand_labels[None, :])
    # As in the authors' code: weighted_mask[i, j] = w[i, y_j]; positives weighted outside the log.
    weighted = class_weights[:, cand_labels] * cand
    include = valid & (pos.sum(1) > 0)
    logits, weighted, pos = logits[include], weighted[include], pos[include]
    row_max = logits.masked_fill(weighted == 0, float("-inf")).max(1, keepdim=True).values
    shifted = logits - row_max.detach()
    log_prob = shifted - torch.log((torch.exp(shifted) * weighted).sum(1, keepdim=True))
    pos_weighted = weighted * pos
    per = -(pos_weighted * log_prob).sum(1) / pos.sum(1)
    return _finish(per, include, reduction)


def lcl_objective(classifier_logits, weight_logits, labels, features, *, temperature, alpha=0.5,
                  valid=None, queue_keys=None, queue_labels=None, queue_valid=None,
                  detach_class_weights=False, normalize=True):
    v = _valid(valid, features.shape[0], features.device)
    l_ce = F.cross_entropy(classifier_logits[v], labels[v])
    l_w = F.cross_entropy(weight_logits[v], labels[v])
    w = torch.softmax(weight_logits, dim=1)
    if detach_class_weights:
        w = w.detach()
    lcl = label_aware_contrastive(features, labels, w, temperature=temperature,
                                  queue_keys=queue_keys, queue_labels=queue_labels, valid=valid,
                                  queue_valid=queue_valid, normalize=normalize)
    return alpha * (l_ce + l_w) + (1 - alpha) * lcl


def masked_lm_loss(logits, labels, *, ignore_index=-100, reduction="mean"):
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    per = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="none")
    scored = flat_labels != ignore_index
    if reduction == "none":
        return per.reshape(labels.shape)
    if reduction == "sum":
        return per.sum()
    return per.sum() / max(int(scored.sum()), 1)
