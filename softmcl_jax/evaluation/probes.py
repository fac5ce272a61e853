"""Linear probes on frozen embeddings, with the regularisation chosen on a selection split.

Protocol (the same for every probe): standardise features with training statistics, fit one
model per value of the grid on the training split, keep the one that scores best on the
selection split (dev when the data has a test split, else a held-out part of train; see
``data.py``), and score that model on the evaluation split. The chosen model is not refit on
train + selection: the selection split then only ever selects, and a probe's score is a function
of the training split alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from softmcl_jax.evaluation.metrics import correlation

# Decades wide enough that MiniLM's choices (C ~ 1e-3, alpha ~ 1e4 at 2k examples) are inside.
C_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
FEWSHOT_C = 1.0  # few-shot has no dev set to choose on: scikit-learn's default, fixed


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    metrics: dict[str, float]
    chosen: float  # the C or alpha picked on the selection split
    select_score: float


def _classification_scores(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"acc": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}


def _logistic(c: float, seed: int, features: str = "standardise"):
    """Logistic regression after standardising (full probes) or L2-normalising (few-shot:
    feature statistics from 16 examples are noise, and unit vectors make a fixed C mean the
    same for every encoder whatever its embedding scale)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    prep = StandardScaler() if features == "standardise" else Normalizer()
    return make_pipeline(prep, LogisticRegression(C=c, max_iter=2000, random_state=seed))


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, select_x: np.ndarray,
                   select_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, *,
                   grid: Sequence[float] = C_GRID, seed: int = 0) -> ProbeResult:
    """Logistic regression; C chosen by accuracy on the selection split (ties: smaller C).

    Returns accuracy and macro-F1 on the evaluation split.
    """
    train_y = np.asarray(train_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the training split has a single class: nothing to probe")
    best = None
    for c in grid:
        model = _logistic(c, seed).fit(train_x, train_y)
        score = float((model.predict(select_x) == np.asarray(select_y)).mean())
        if best is None or score > best[0]:
            best = (score, c, model)
    score, c, model = best
    return ProbeResult(_classification_scores(np.asarray(eval_y), model.predict(eval_x)), c,
                       score)


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, select_x: np.ndarray,
                select_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, *,
                grid: Sequence[float] = ALPHA_GRID) -> ProbeResult:
    """Ridge regression; alpha chosen by Pearson r on the selection split (ties: smaller alpha).

    Returns Pearson r (and Spearman) between prediction and gold on the evaluation split.
    """
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for alpha in grid:
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(train_x, train_y)
        score = correlation(model.predict(select_x), select_y)
        score = -np.inf if np.isnan(score) else score
        if best is None or score > best[0]:
            best = (score, alpha, model)
    score, alpha, model = best
    pred = model.predict(eval_x)
    return ProbeResult({"pearson": correlation(pred, eval_y),
                        "spearman": correlation(pred, eval_y, "spearman")}, alpha, float(score))


# --- few-shot --------------------------------------------------------------------------------

def sample_per_class(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Indices of exactly ``k`` items of every class in ``labels``, sorted; a function of
    (labels, k, seed) only.

    Raises ValueError when a class has fewer than ``k`` items (a smaller draw for one class
    would silently make the task easier or harder).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < k:
            raise ValueError(f"class {cls} has {len(members)} examples, fewer than k={k}")
        out.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(out))


def fewshot_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
                  eval_y: np.ndarray, *, ks: Sequence[int], seeds: Sequence[int]
                  ) -> tuple[dict[str, float], list[str]]:
    """Accuracy of a logistic regression (L2-normalised inputs, C = ``FEWSHOT_C``) on ``k``
    examples per class, mean and population std over ``seeds``, for each ``k``: metrics
    ``acc_k{k}_mean``/``_std``.

    A ``k`` that some class cannot supply is skipped; the second return value says which.
    """
    metrics: dict[str, float] = {}
    skipped: list[str] = []
    eval_y = np.asarray(eval_y)
    for k in ks:
        accs = []
        try:
            for seed in seeds:
                idx = sample_per_class(train_y, k, seed)
                model = _logistic(FEWSHOT_C, seed, "l2").fit(train_x[idx],
                                                             np.asarray(train_y)[idx])
                accs.append(float((model.predict(eval_x) == eval_y).mean()))
        except ValueError as e:
            skipped.append(f"k={k}: {e}")
            continue
        metrics[f"acc_k{k}_mean"] = float(np.mean(accs))
        metrics[f"acc_k{k}_std"] = float(np.std(accs))
    return metrics, skipped
