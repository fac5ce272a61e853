"""Evaluation of sentence encoders: the downstream suite (CLI) and the trainer's valence probe.

The suite, on any Hugging Face-format encoder (ours or not) and a data folder laid out like
``../shared/data``; markdown on stdout, numbers in ``--output``::

    python -m softmcl_jax.evaluate --checkpoint=DIR --data_dir=../shared/data
        [--tasks=sst2,emobank,...] [--pooling=mean] [--max_examples=2000] [--output=r.json]

``--checkpoint`` may also be a training workdir (``config.json`` written by the trainer,
``checkpoints/``): its exported encoder ``WORKDIR/export`` is evaluated, with the run's
``model.pooling`` unless ``--pooling`` is given (``resolve_checkpoint``). The exit status is
non-zero when no task ran (every default task skipped for missing files), with the reasons.

Tasks, split and regularisation protocol: ``softmcl_jax/evaluation/`` (``tasks.py``,
``data.py``). The trainer's probe, used from Python:

    pre = from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(pre.tokenizer_path)
    split = vader_probe_split(load_vader_sentences(), n_train=2000, n_test=2000)
    x_tr = embed_texts(pre, params, tok, split.train_texts)
    x_te = embed_texts(pre, params, tok, split.test_texts)
    r = valence_probe(x_tr, split.train_y, x_te, split.test_y)     # Pearson r on held-out VADER

The trainer also trains on VADER sentences, so it must drop ``split.exclude_idx`` (every record
whose text is a probe text, duplicates included) from its training data, or the probe measures
memorisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softmcl_jax.data.records import Sentence
from softmcl_jax.models import DTYPES, Pretrained
from softmcl_jax.models.heads import pool
from softmcl_jax.models.hf import resolve_name

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


# --- embeddings ------------------------------------------------------------------------------

# One jitted function per (module, pooling): a fresh jax.jit(pretrained.encode) per call would
# retrace and recompile on every evaluation. Keyed by the Flax module (hashable, compares by
# architecture config); the cached closure holds a params-free copy of the Pretrained so it never
# pins a set of weights in memory.
_EMBEDDERS: dict[tuple[Any, str], Callable[..., jax.Array]] = {}


def _embedder(pretrained: Pretrained, pooling: str) -> Callable[..., jax.Array]:
    key = (pretrained.module, pooling)
    fn = _EMBEDDERS.get(key)
    if fn is None:
        shell = dataclasses.replace(pretrained, params={})

        def embed(params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
            hidden = shell.encode(params, input_ids, attention_mask)
            return pool(hidden, attention_mask, pooling)

        fn = _EMBEDDERS[key] = jax.jit(embed)
    return fn


def embed_texts(pretrained: Pretrained, params: Any, tokenizer: Any, texts: Sequence[str], *,
                max_len: int = 64, batch_size: int = 64, pooling: str = "mean") -> np.ndarray:
    """Sentence embeddings (N, H), float32 numpy, of ``texts`` under ``params``.

    Args:
      pretrained: the encoder (``softmcl_jax.models.Pretrained``); only its module is used, the
        weights are ``params`` (e.g. a training state's EMA params).
      tokenizer: a transformers tokenizer (fast), or a folder/hub id to load one from.
      texts: the sentences; truncated to ``max_len`` tokens, specials included.
      batch_size: rows per forward pass. Every batch has this many rows (the last is padded with
        empty rows, dropped afterwards), so one compiled shape serves the whole call; fewer texts
        than ``batch_size`` use one batch of ``len(texts)``.
      pooling: "mean" over the attention mask (sentence-transformers' mean pooling) or "cls"
        (the first token's hidden state).

    The forward pass is inference mode (no dropout). The result does not depend on
    ``batch_size`` beyond float rounding.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    if isinstance(tokenizer, str):
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    texts = list(texts)
    hidden_size = int(pretrained.config.hidden_size)
    if not texts:
        return np.zeros((0, hidden_size), np.float32)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len,
                    return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], np.int32)
    mask = np.asarray(enc["attention_mask"], np.int32)
    n = len(texts)
    bs = min(batch_size, n)
    pad_rows = -n % bs
    if pad_rows:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = np.concatenate([ids, np.full((pad_rows, ids.shape[1]), pad_id, np.int32)])
        mask = np.concatenate([mask, np.zeros((pad_rows, mask.shape[1]), np.int32)])
    fn = _embedder(pretrained, pooling)
    out = [fn(params, ids[i:i + bs], mask[i:i + bs]) for i in range(0, len(ids), bs)]
    # One device-to-host transfer at the end: the batches above are dispatched asynchronously.
    return np.asarray(jnp.concatenate(out)[:n], np.float32)


# --- the probe -------------------------------------------------------------------------------

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


# --- the downstream suite: python -m softmcl_jax.evaluate ------------------------------------

EXPORT_DIR = "export"  # where the trainer (and the export command) put a workdir's encoder


def _trainer_config(folder: str) -> dict[str, Any] | None:
    """``folder``'s config.json if the trainer wrote it (not a transformers config), else None."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = None
    if isinstance(cfg, dict) and "model_type" in cfg:
        return None  # a Hugging Face folder
    if isinstance(cfg, dict) and ("objective" in cfg or isinstance(cfg.get("model"), dict)):
        return cfg
    if os.path.isdir(os.path.join(folder, "checkpoints")):
        return cfg if isinstance(cfg, dict) else {}
    return None


def resolve_checkpoint(checkpoint: str) -> tuple[str, str | None]:
    """The encoder that ``--checkpoint`` names: (folder or hub id to load, the run's pooling).

    A training workdir (its ``config.json`` is the trainer's, with keys such as ``objective``
    and ``model``, or it has a ``checkpoints/`` folder) stands for its exported encoder,
    ``WORKDIR/export``, which a finished run writes; the pooling returned is the run's
    ``model.pooling`` ("mean" or "cls") when its config says. A workdir without ``export/``
    raises ``FileNotFoundError`` saying how to write one. Anything else (a Hugging Face folder,
    a hub id, "minilm") resolves as ``models.hf.resolve_name`` does, with pooling None.
    """
    if not os.path.isdir(checkpoint):
        return resolve_name(checkpoint), None
    cfg = _trainer_config(checkpoint)
    if cfg is None:
        return checkpoint, None
    export = os.path.join(checkpoint, EXPORT_DIR)
    if not os.path.isfile(os.path.join(export, "config.json")):
        workdir = checkpoint.rstrip("/") or checkpoint
        raise FileNotFoundError(
            f"{checkpoint} is a training workdir, not an encoder folder, and it has no exported "
            f"encoder ({export}/config.json is missing; a run writes it when it finishes with "
            f"export.enabled). Write one with: python -m softmcl_jax.export "
            f"--workdir={workdir} --out={os.path.join(workdir, EXPORT_DIR)}")
    model = cfg.get("model")
    pooling = model.get("pooling") if isinstance(model, dict) else None
    if pooling not in POOLINGS:
        pooling = None
    log.info("%s is a training workdir: evaluating its exported encoder %s", checkpoint, export)
    return export, pooling


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def run_suite(checkpoint: str, tasks: Sequence[str] | None, config: Any, *,
              pooling: str | None = None, max_len: int = 128, batch_size: int = 64,
              dtype: str = "float32") -> tuple[list[Any], dict[str, str]]:
    """Run ``tasks`` (None: every default task the data folder has) on ``checkpoint``.

    ``checkpoint`` is resolved by ``resolve_checkpoint`` (a training workdir means its
    ``export/``); ``pooling`` None is the workdir run's pooling, else "mean".

    Returns (results, skipped): ``TaskResult``s in task order, and ``{task: why}`` for default
    tasks whose files are missing. A task named explicitly whose files are missing raises
    ``MissingData``. Both may be empty: the caller decides whether that is an error (the CLI
    exits non-zero).
    """
    import time

    import transformers

    from softmcl_jax.evaluation import DEFAULT_TASKS, TASKS, Context, run_task
    from softmcl_jax.evaluation.data import MissingData
    from softmcl_jax.evaluation.embed import Encoder
    from softmcl_jax.models import from_pretrained

    names = list(DEFAULT_TASKS if tasks is None else tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; tasks: {', '.join(TASKS)}")
    path, run_pooling = resolve_checkpoint(checkpoint)
    pooling = pooling or run_pooling or "mean"
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    pretrained = from_pretrained(path, dtype=DTYPES[dtype], seed=config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained.tokenizer_path or path)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < max_len:  # unset limits are huge sentinels
        log.info("max_len %d > the tokenizer's model_max_length %d: using %d", max_len, limit,
                 limit)
        max_len = limit
    encoder = Encoder(pretrained, pretrained.params, tokenizer, pooling=pooling, max_len=max_len,
                      batch_size=batch_size, progress=config.progress)
    ctx = Context(encoder, pretrained, tokenizer, config)
    results, skipped = [], {}
    for name in names:
        start = time.perf_counter()
        try:
            result = run_task(ctx, name)
        except MissingData as e:
            if tasks is not None:
                raise
            skipped[name] = str(e)
            log.info("%s: skipped, %s", name, e)
            continue
        log.info("%s (%s, n=%d): %s [%.1fs]", name, result.split, result.n,
                 {k: round(v, 4) for k, v in result.metrics.items()},
                 time.perf_counter() - start)
        results.append(result)
    if encoder.empty_spans:
        log.warning("%d aspect/word spans were empty after truncation to %d tokens; their "
                    "span vector is the sentence vector", encoder.empty_spans, max_len)
    return results, skipped


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The CLI; returns the JSON-able results (also written to ``--output``).

    Raises ``SystemExit`` (status 1, the message on stderr) when no task ran, e.g. an empty
    ``--data_dir``, naming each skipped task and why; ``--output`` is then not written. Also
    when ``--checkpoint`` is a training workdir without an exported encoder.
    """
    import argparse

    from softmcl_jax.evaluation import DEFAULT_TASKS, SLOW_TASKS, SuiteConfig, report

    p = argparse.ArgumentParser(
        prog="python -m softmcl_jax.evaluate",
        description="Downstream evaluation of a Hugging Face-format encoder: markdown report on "
                    "stdout, numbers in --output.")
    p.add_argument("--checkpoint", required=True,
                   help="encoder folder (config.json, weights, tokenizer), hub id, 'minilm', "
                        "or a training workdir (its export/ is evaluated)")
    p.add_argument("--data_dir", default=os.environ.get("SOFTMCL_DATA_DIR"),
                   help="data folder laid out like ../shared/data (default: $SOFTMCL_DATA_DIR)")
    p.add_argument("--tasks", default=None,
                   help=f"comma list (default: every one the data folder has of "
                        f"{','.join(DEFAULT_TASKS)}; also {','.join(SLOW_TASKS)})")
    p.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="default: the run's model.pooling for a training workdir, else mean")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--max_examples", type=int, default=None, help="cap per split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--fewshot_k", default="8,16,32")
    p.add_argument("--fewshot_seeds", default="0,1,2,3,4")
    p.add_argument("--finetune_steps", type=int, default=500)
    p.add_argument("--finetune_lr", type=float, default=2e-5)
    p.add_argument("--finetune_batch_size", type=int, default=32)
    p.add_argument("--goemotions_drop_neutral", action="store_true",
                   help="leave neutral comments out of the clustering and retrieval")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--output", default=None, help="write {task: {metric: value, split, n}}")
    a = p.parse_args(argv)
    if not a.data_dir:
        p.error("--data_dir is required (or set SOFTMCL_DATA_DIR)")
    if not os.path.isdir(a.data_dir):
        p.error(f"--data_dir={a.data_dir}: not a folder")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SuiteConfig(
        data_dir=a.data_dir, max_examples=a.max_examples, seed=a.seed,
        fewshot_k=_int_list(a.fewshot_k), fewshot_seeds=_int_list(a.fewshot_seeds),
        finetune_steps=a.finetune_steps, finetune_lr=a.finetune_lr,
        finetune_batch_size=a.finetune_batch_size,
        goemotions_drop_neutral=a.goemotions_drop_neutral, progress=not a.no_progress)
    tasks = None if a.tasks in (None, "", "default") else [
        t.strip() for t in a.tasks.split(",") if t.strip()]
    if tasks == []:
        p.error(f"--tasks={a.tasks} names no task")
    try:
        path, run_pooling = resolve_checkpoint(a.checkpoint)
    except FileNotFoundError as e:
        raise SystemExit(f"{p.prog}: error: {e}") from None
    pooling = a.pooling or run_pooling or "mean"
    if run_pooling and not a.pooling:
        log.info("pooling=%s: the run's model.pooling (--pooling overrides)", pooling)
    elif run_pooling and a.pooling != run_pooling:
        log.warning("--pooling=%s, but the run trained with model.pooling=%s", a.pooling,
                    run_pooling)
    results, skipped = run_suite(path, tasks, config, pooling=pooling,
                                 max_len=a.max_len, batch_size=a.batch_size, dtype=a.dtype)
    header = {"checkpoint": a.checkpoint}
    if path != resolve_name(a.checkpoint):  # a training workdir: say which folder was loaded
        header["encoder"] = path
    header.update(data_dir=a.data_dir, pooling=pooling, max_len=a.max_len,
                  max_examples=a.max_examples, seed=a.seed)
    print(report.markdown(results, header=header, skipped=skipped), end="", flush=True)
    if not results:
        why = "".join(f"\n  {task}: {reason}" for task, reason in skipped.items())
        raise SystemExit(f"{p.prog}: error: no task ran on --data_dir={a.data_dir}; "
                         f"skipped:{why or ' none'}")
    if a.output:
        report.write_json(results, a.output)
    return report.to_json(results)


__all__ = [
    "ProbeSplit",
    "embed_texts",
    "main",
    "probe_split",
    "resolve_checkpoint",
    "run_suite",
    "valence_probe",
    "vader_probe_split",
]


if __name__ == "__main__":
    main()
