"""The unit of the affect ratings that soft labels compare (``config.data.rating_unit``).

``"scale"`` (the default, the SoftMCL paper's): every rating as read, its rating scale mapped to
[0, 1]. A label distance then depends on how much of the scale the data use: EmoBank's sentence
valences sit in a narrow band around the middle of its 1..5 scale (two random training
sentences differ by 0.09 on average), the shipped VADER sentences span theirs (0.24). At one
label temperature the soft targets over EmoBank are then far flatter than over VADER, and each
of V, A and D weighs in a multi-dimensional distance by how widely it happens to vary.

``"spread"``: each rating dimension divided by its spread over the training data, the mean
absolute difference between two distinct training items (Gini's mean difference),

    spread = (1 / (n (n - 1))) sum_{i != j} |x_i - x_j|,

over the sentences that have the rating (``sentence_<dim>``) and over the rated tokens
(``token_<dim>``), each on its own. A label distance of 1 is then a typical difference in every
dimension and on every data set, so one label temperature means one sharpness of the targets,
and ``label_weights`` alone say how much each dimension counts. Absent ratings keep their
markers (below 0, or 0 outside ``token_valence_mask``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from softmcl_jax.data.rows import RowStats, gini_mean_difference
from softmcl_jax.data.sources import AFFECT_DIMS

RATING_UNITS = ("scale", "spread")
LEVELS = ("sentence", "token")


def mean_abs_difference(x: np.ndarray) -> float:
    """Gini's mean difference of ``x`` (n >= 2 values): the mean |x_i - x_j| over i != j.

    Exact in O(n log n): with x sorted ascending, sum_{i<j} (x_j - x_i) = sum_k (2k - n + 1) x_k.
    """
    x = np.sort(np.asarray(x, np.float64).ravel())
    n = len(x)
    if n < 2:
        raise ValueError(f"a mean difference needs 2 or more values, got {n}")
    k = np.arange(n, dtype=np.float64)
    return float(2.0 * np.dot(2.0 * k - n + 1.0, x) / (n * (n - 1)))


def _present(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """Where ``key`` holds a rating: ``token_valence`` where the lexicon found a word, the
    others where they are >= 0 (absent ones are -1)."""
    if key == "token_valence":
        return np.asarray(arrays["token_valence_mask"], bool)
    return np.asarray(arrays[key]) >= 0


def rating_keys(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The rating arrays of encoded data (``encode_sentences``' ``sentence_<dim>`` and
    ``token_<dim>``) that hold at least one rating."""
    return [k for k in arrays if k.partition("_")[0] in LEVELS
            and k.partition("_")[2] in AFFECT_DIMS and _present(arrays, k).any()]


def spreads(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``{key: spread}`` of every rating array (:func:`rating_keys`) over its present ratings.

    Raises ``ValueError`` naming the array if its ratings do not vary (spread 0 or 1 rating):
    there is no unit to measure distances in.
    """
    out = {}
    for key in rating_keys(arrays):
        values = np.asarray(arrays[key])[_present(arrays, key)]
        s = mean_abs_difference(values) if values.size >= 2 else 0.0
        if not s > 0:
            raise ValueError(f"config.data.rating_unit='spread': the training data's {key} "
                             f"ratings do not vary ({values.size} ratings, spread {s:g}); use "
                             "rating_unit='scale'")
        out[key] = s
    return out


def in_spread_units(arrays: Mapping[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A copy of ``arrays`` with every rating divided by its spread (:func:`spreads`), absent
    markers kept; and the spreads."""
    s = spreads(arrays)
    out = dict(arrays)
    for key, spread in s.items():
        x = np.asarray(arrays[key])
        out[key] = np.where(_present(arrays, key), x / spread, x).astype(x.dtype)
    return out, s


def spreads_of_manifests(manifests: Sequence[Mapping]) -> dict[str, float]:
    """:func:`spreads` of the union of prepared folders' rows, from their manifests' exact rating
    multisets (``values``; ``rows.RowStats``) without reading a row: a mixture's ratings share
    one unit. Raises ``ValueError`` as :func:`spreads` does."""
    merged: dict[str, dict[float, int]] = {}
    for m in manifests:
        for key, counts in RowStats.from_json(m).values.items():
            mine = merged.setdefault(key, {})
            for v, n in counts.items():
                mine[v] = mine.get(v, 0) + n
    out = {}
    for key, counts in merged.items():
        total = sum(counts.values())
        if not total:
            continue
        s = gini_mean_difference(counts) if total >= 2 else 0.0
        if not s > 0:
            raise ValueError(f"config.data.rating_unit='spread': the training data's {key} "
                             f"ratings do not vary ({total} ratings, spread {s:g}); use "
                             "rating_unit='scale'")
        out[key] = s
    return out
