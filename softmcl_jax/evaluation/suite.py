"""``run_suite``: the downstream tasks on one encoder (``python -m softmcl_jax.evaluate``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from softmcl_jax.evaluation.checkpoints import resolve_checkpoint
from softmcl_jax.evaluation.data import MissingData
from softmcl_jax.evaluation.embed import Encoder
from softmcl_jax.evaluation.tasks import DEFAULT_TASKS, TASKS, Context, run_task
from softmcl_jax.models import DTYPES, from_pretrained
from softmcl_jax.models.heads import POOLINGS

log = logging.getLogger(__name__)


DEFAULT_MAX_LEN = 128  # tokens per sentence when neither the caller nor the encoder says


def run_suite(checkpoint: str, tasks: Sequence[str] | None, config: Any, *,
              pooling: str | None = None, max_len: int = DEFAULT_MAX_LEN, batch_size: int = 64,
              dtype: str = "float32") -> tuple[list[Any], dict[str, str]]:
    """Run ``tasks`` (None: every default task the data folder has) on ``checkpoint``.

    ``checkpoint`` is resolved by ``resolve_checkpoint`` (a training workdir means its
    ``export/``); ``pooling`` None is the workdir run's pooling, else "mean".

    Returns (results, skipped): ``TaskResult``s in task order, and ``{task: why}`` for default
    tasks whose files are missing. A task named explicitly whose files are missing raises
    ``MissingData``. Both may be empty: the caller decides whether that is an error (the CLI
    exits non-zero).
    """
    import transformers

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
