"""Supervised fine-tuning of an encoder (the SoftMCL paper's downstream protocol), as a trainer run.

``python -m softmcl_jax.evaluate --finetune=TASKS`` builds one run of this preset per task
(``softmcl_jax.finetune``): it sets ``model.name_or_path`` (the encoder under evaluation),
``data`` (the task's train split, written as JSON Lines), the objective term (``ce`` over
``data.num_labels`` classes, or ``regression`` on the sentence rating), ``model.max_len`` /
``model.pooling`` (the suite's) and ``total_steps``; every other number below is the same for
every encoder. On its own (``python main.py --config=configs/finetune.py``) it fine-tunes
MiniLM on SST-2's train file (``--config.data.path=DATA/sst2/stsa.binary.train``).

Where the numbers come from: the SoftMCL paper fine-tunes as BERT and DeBERTa are fine-tuned on
GLUE (Devlin et al. 2019, appendix A.3; He et al. 2021): AdamW at lr 2e-5, batch 32, linear
warm-up over the first 10% of the steps, weight decay 0.01, gradient clipping at norm 1, dropout
on (the checkpoint's rates), then linear decay to 0 by the last step (``optimizer.decay``). The
papers train 2-3 epochs; here ``total_steps`` is a field (the CLI's ``--finetune_steps``,
default 500), capped so that a CPU finishes a task in minutes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402

WARMUP_FRACTION = 0.1  # of total_steps (BERT's GLUE recipe)


def warmup_steps(total_steps: int) -> int:
    """10% of the steps, at least 1."""
    return max(1, round(WARMUP_FRACTION * total_steps))


def get_config():
    c = get_base()
    c.name = "finetune"
    c.total_steps = 500
    c.batch_size = 32
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 1
    c.model.dropout = None  # the checkpoint's rates (0.1 for BERT-style encoders)
    c.model.max_len = 128
    # The default task, SST-2 (the fine-tuning CLI replaces the data with each task's).
    c.data.source = "sst"
    c.data.path = "../shared/data/sst2/stsa.binary.train"
    c.data.num_labels = 2
    c.data.lexicon = "none"  # no word valences: the supervision is the task's label or rating
    c.data.mlm_rate = 0.0
    c.data.packing = True
    o = c.optimizer
    o.learning_rate = 2e-5
    o.end_learning_rate = 0.0
    o.warmup_steps = warmup_steps(c.total_steps)
    o.decay = "linear"
    o.weight_decay = 0.01
    o.clip_norm = 1.0
    # The task's term is switched on by softmcl_jax.finetune (ce or regression, weight 1).
    c.objective.ce.weight = 1.0
    c.probe.enabled = False  # the task's dev split is the measurement
    c.export.enabled = False  # the tuned encoder + head stay in the run's checkpoint
    return c
