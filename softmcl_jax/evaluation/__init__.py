"""The downstream evaluation suite behind ``python -m softmcl_jax.evaluate``.

* ``embed``: jitted, length-bucketed sentence / word / aspect-span embeddings (``Encoder``).
* ``data``: where each task's files lie, which split is scored (test if present, else dev) and
  what the regularisation is chosen on.
* ``probes``: scikit-learn linear probes (logistic / ridge) and the few-shot sampler.
* ``metrics``: retrieval (MRR, P@1, MAP@R), clustering (AMI, ARI, FMS), correlations.
* ``finetune``: full fine-tuning of encoder + linear head (SST).
* ``tasks``: the task registry; ``report``: markdown and JSON.
"""

from softmcl_jax.evaluation.tasks import (
    DEFAULT_TASKS,
    SLOW_TASKS,
    TASKS,
    Context,
    SuiteConfig,
    TaskResult,
    run_task,
)

__all__ = ["DEFAULT_TASKS", "SLOW_TASKS", "TASKS", "Context", "SuiteConfig", "TaskResult",
           "run_task"]
