"""The suite's ``*_finetune`` tasks: a thin call of :mod:`softmcl_jax.finetune`, where fine-tuning
is a trainer run (``configs/finetune.py``, ``softmcl_jax.loop.run``); there is no second
training loop here.

``SuiteConfig.finetune_workdir`` is where the runs go (``--workdir``; a second call resumes or
skips them); without one, each run goes to a temporary folder removed once it is scored.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from softmcl_jax import finetune

log = logging.getLogger(__name__)


def finetune_task(ctx: Any, task: str) -> finetune.Result:
    """Fine-tune the suite's encoder on ``task`` (a key of ``finetune.TASKS``) and score it, with
    the suite's max_len, pooling, seed, example cap and fine-tuning flags."""
    c, enc = ctx.config, ctx.encoder
    if not c.checkpoint:
        raise ValueError("fine-tuning needs the encoder's folder: SuiteConfig.checkpoint (the "
                         "CLI sets it from --checkpoint)")
    kw = dict(checkpoint=c.checkpoint, data_dir=c.data_dir, steps=c.finetune_steps, seed=c.seed,
              max_len=enc.max_len, pooling=enc.pooling, max_examples=c.max_examples,
              batch_size=c.finetune_batch_size, learning_rate=c.finetune_lr)
    if c.finetune_workdir:
        return finetune.run_task(task, workdir=c.finetune_workdir, **kw)
    with tempfile.TemporaryDirectory(prefix="softmcl_finetune_") as tmp:
        log.info("%s: fine-tuning in %s (temporary: --workdir keeps the runs, to resume)", task,
                 tmp)
        return finetune.run_task(task, workdir=tmp, **kw)
