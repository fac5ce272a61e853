"""The trainer's held-out valence probe: a fixed split of VADER sentences and a ridge probe.

    split = vader_probe_split(load_vader_sentences(), n_train=2000, n_test=1000)
    enc = Encoder(pretrained, params, tokenizer, pooling="mean", max_len=64, progress=False)
    r = valence_probe(enc.sentences(split.train_texts), split.train_y,
                      enc.sentences(split.test_texts), split.test_y)   # Pearson r, held out

The trainer also trains on VADER sentences, so it must drop ``split.exclude_idx`` (every record
whose text is a probe text, duplicates included) from its training data, or the probe measures
memorisation. ``probe_split`` is also the suite's deterministic held-out sampler (``data.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from softmcl_jax.data.records import Sentence
from softmcl_jax.evaluation.metrics import cosine_rows, unit_rows


def valence_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, *,
                  alphas: Sequence[float] = (0.01, 0.1, 1, 10, 100, 1000)) -> float:
    """Pearson r between held-out valence and a ridge regression's prediction from embeddings.

    Features are standardised with statistics of the training set only; the ridge penalty is
    chosen from ``alphas`` by efficient leave-one-out cross-validation on the training set
    (``RidgeCV``), so the test set is touched once. Returns NaN if the predictions are constant.
    """
    from scipy.stats import pearsonr
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = (np.asarray(a, np.float64) for a in (train_x, test_x))
    train_y, test_y = (np.asarray(a, np.float64).ravel() for a in (train_y, test_y))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"x/y lengths differ: train {len(train_x)}/{len(train_y)}, "
                         f"test {len(test_x)}/{len(test_y)}")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=tuple(alphas)))
    model.fit(train_x, train_y)
    pred = model.predict(test_x)
    if np.ptp(pred) == 0 or np.ptp(test_y) == 0:
        return float("nan")
    return float(pearsonr(pred, test_y).statistic)


# --- how much of the base encoder's similarity structure survives training -----------------

def similarity_pairs(base_x: np.ndarray, *, neighbours: int = 5, random_partners: int = 5,
                     seed: int = 0) -> np.ndarray:
    """The fixed pair set of ``similarity_kept``: ``(P, 2)`` int64 index pairs ``i < j``.

    Each sentence is paired with its ``neighbours`` nearest sentences under the base encoder
    (cosine of ``base_x``), which are the pairs a retrieval or STS user cares about, and with
    ``random_partners`` others drawn uniformly (``numpy.random.default_rng(seed)``), so that the
    unrelated end of the scale is there too; duplicates are dropped. On the probe's 1,000
    held-out VADER sentences this is about 9,000 pairs.
    """
    n = len(base_x)
    if n < 2:
        raise ValueError(f"need at least 2 sentences for pairs, got {n}")
    e = unit_rows(base_x)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    k = min(neighbours, n - 1)
    near = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k else np.zeros((n, 0), np.int64)
    rng = np.random.default_rng(seed)
    far = (np.arange(n)[:, None] + rng.integers(1, n, size=(n, random_partners))) % n
    rows = np.repeat(np.arange(n), k + random_partners)
    cols = np.concatenate([near, far], axis=1).ravel()
    pairs = np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)


def similarity_kept(base_x: np.ndarray, x: np.ndarray, pairs: np.ndarray) -> float:
    """Spearman rank correlation between the cosine similarities of ``pairs`` under the base
    encoder's vectors ``base_x`` and under the trained encoder's ``x`` (same sentences, same
    order): 1 = the trained encoder orders every pair as the base did."""
    from scipy.stats import spearmanr

    if base_x.shape[0] != x.shape[0]:
        raise ValueError(f"base_x has {base_x.shape[0]} rows, x has {x.shape[0]}")
    i, j = pairs[:, 0], pairs[:, 1]
    return float(spearmanr(cosine_rows(base_x[i], base_x[j]),
                           cosine_rows(x[i], x[j])).statistic)


# --- the held-out split ----------------------------------------------------------------------

def probe_split(n_total: int, n_train: int, n_test: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train_idx, test_idx) of ``range(n_total)``, sorted, int64.

    Indices are ranked by ``sha256(f"softmcl-probe:{seed}:{i}")``: the first ``n_test`` form
    the test set and the next ``n_train`` the training set. Unlike a numpy RNG stream this order
    is fixed forever (no library version changes it), and for a fixed seed growing ``n_test``, or
    ``n_train`` at a fixed ``n_test``, only adds indices to that side.
    """
    if min(n_total, n_train, n_test) < 0 or n_train + n_test > n_total:
        raise ValueError(f"cannot draw {n_train} + {n_test} of {n_total}")

    def rank(i: int) -> bytes:
        return hashlib.sha256(f"softmcl-probe:{seed}:{i}".encode()).digest()

    order = sorted(range(n_total), key=rank)
    test_idx = np.sort(np.asarray(order[:n_test], np.int64))
    train_idx = np.sort(np.asarray(order[n_test:n_test + n_train], np.int64))
    return train_idx, test_idx


@dataclasses.dataclass(frozen=True)
class ProbeSplit:
    """A held-out valence probe split of a list of sentences.

    Attributes:
      train_idx / test_idx: indices into the sentence list (sorted, disjoint); a probe-train
        sentence whose text is also a test text has been dropped (VADER repeats some texts).
      train_texts, train_y, test_texts, test_y: the probe's data (valence in [0, 1]).
      exclude_idx: every index whose text is a probe text (train or test), duplicates included:
        what the trainer must remove from its training data.
    """

    train_idx: np.ndarray
    test_idx: np.ndarray
    train_texts: list[str]
    train_y: np.ndarray
    test_texts: list[str]
    test_y: np.ndarray
    exclude_idx: np.ndarray


def vader_probe_split(sentences: Sequence[Sentence], *, n_train: int, n_test: int,
                      seed: int = 0) -> ProbeSplit:
    """The valence probe's split of ``sentences`` (normally ``load_vader_sentences()``, all four
    sets in their fixed order, 23,703 records).

    ``probe_split(len(sentences), n_train, n_test, seed)`` picks the indices; texts that occur
    more than once are then handled so that no text is on both sides: probe-train loses texts
    that are in probe-test, and ``exclude_idx`` covers every copy of every probe text.
    """
    missing = [i for i, s in enumerate(sentences) if s.valence is None]
    if missing:
        raise ValueError(f"{len(missing)} sentences have no valence (first: {missing[0]})")
    train_idx, test_idx = probe_split(len(sentences), n_train, n_test, seed)
    test_texts = {sentences[i].text for i in test_idx}
    train_idx = np.asarray([i for i in train_idx if sentences[i].text not in test_texts],
                           np.int64)
    probe_texts = test_texts | {sentences[i].text for i in train_idx}
    exclude = np.asarray([i for i, s in enumerate(sentences) if s.text in probe_texts], np.int64)

    def take(idx: np.ndarray) -> tuple[list[str], np.ndarray]:
        return ([sentences[i].text for i in idx],
                np.asarray([sentences[i].valence for i in idx], np.float32))

    train_texts, train_y = take(train_idx)
    test_texts_l, test_y = take(test_idx)
    return ProbeSplit(train_idx, test_idx, train_texts, train_y, test_texts_l, test_y, exclude)
