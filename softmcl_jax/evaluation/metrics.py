"""Metrics of the suite that need more than one scikit-learn call.

Retrieval (``retrieval_metrics``): every item queries all the others by cosine similarity; the
relevant items are those of the same class. MRR is the mean reciprocal rank of the first relevant
item, P@1 whether the nearest neighbour is relevant, and MAP@R (Musgrave, Belongie & Lim 2020, "A
Metric Learning Reality Check") is, for a query with R relevant items,
``(1/R) * sum_{i<=R} P(i) * rel(i)``: average precision cut at rank R. Queries with no other item
of their class have nothing to find and are left out of all three means.

Clustering (``clustering_metrics``): k-means with k = the number of classes on L2-normalised
vectors (the geometry retrieval uses), scored by scikit-learn's AMI, ARI and Fowlkes-Mallows.
"""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row L2-normalised (float64; an all-zero row stays zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, *, chunk: int = 512
                      ) -> dict[str, float]:
    """MRR, P@1 and MAP@R of leave-one-out cosine retrieval (module docstring).

    Ties in similarity are broken by item index (a stable sort), so the result is deterministic.
    Memory is O(chunk * N).
    """
    x = unit_rows(embeddings)
    labels = np.asarray(labels)
    n = len(x)
    if n != len(labels):
        raise ValueError(f"{n} embeddings but {len(labels)} labels")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant_total = counts[inverse] - 1  # R per query: same-class items other than itself
    ranks_col = np.arange(1, n, dtype=np.float64)  # ranks 1..N-1 (the query itself is dropped)
    rr, p1, ap = [], [], []
    for start in range(0, n, chunk):
        q = np.arange(start, min(n, start + chunk))
        sim = x[q] @ x.T
        sim[np.arange(len(q)), q] = -np.inf  # never retrieve yourself
        order = np.argsort(-sim, axis=1, kind="stable")[:, : n - 1]
        rel = labels[order] == labels[q][:, None]  # (chunk, N-1)
        r = relevant_total[q]
        keep = r > 0
        if not keep.any():
            continue
        rel, r = rel[keep], r[keep]
        rr.append(1.0 / (rel.argmax(axis=1) + 1.0))
        p1.append(rel[:, 0].astype(np.float64))
        hits = np.cumsum(rel, axis=1)
        within_r = ranks_col[None, :] <= r[:, None]
        ap.append((rel * within_r * hits / ranks_col[None, :]).sum(axis=1) / r)
    if not rr:
        nan = float("nan")
        return {"mrr": nan, "p_at_1": nan, "map_at_r": nan}
    return {"mrr": float(np.concatenate(rr).mean()), "p_at_1": float(np.concatenate(p1).mean()),
            "map_at_r": float(np.concatenate(ap).mean())}


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                       n_init: int = 10) -> dict[str, float]:
    """k-means (k = number of distinct labels) on L2-normalised vectors -> AMI, ARI, FMS."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_mutual_info_score,
        adjusted_rand_score,
        fowlkes_mallows_score,
    )

    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if k < 2 or len(labels) <= k:
        raise ValueError(f"clustering needs at least 2 classes and more items than classes "
                         f"(got {len(labels)} items, {k} classes)")
    pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(
        unit_rows(embeddings))
    return {"ami": float(adjusted_mutual_info_score(labels, pred)),
            "ari": float(adjusted_rand_score(labels, pred)),
            "fms": float(fowlkes_mallows_score(labels, pred))}


def correlation(pred: np.ndarray, gold: np.ndarray, kind: str = "pearson") -> float:
    """Pearson or Spearman r; NaN (not an exception) when either side is constant."""
    from scipy.stats import pearsonr, spearmanr

    pred, gold = np.asarray(pred, np.float64).ravel(), np.asarray(gold, np.float64).ravel()
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return float("nan")
    fn = pearsonr if kind == "pearson" else spearmanr
    return float(fn(pred, gold).statistic)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, H) arrays."""
    return (unit_rows(a) * unit_rows(b)).sum(axis=1)
