"""Full fine-tuning of the encoder with a linear head, for sentence classification (SST-2/5).

A deliberately small loop: the pooled embedding (``pooling``) feeds a linear layer, everything is
trained with AdamW (linear warm-up over the first 10% of steps, then linear decay to 0, weight
decay on matrices only, global-norm clipping at 1) for a fixed number of steps with dropout on,
and the final model is scored once. There is no early stopping and no model selection, so dev
is not used when test is scored. One ``jax.jit`` step with donated state and fixed batch shape
(``batch_size`` x ``max_len``); batches are drawn from a per-epoch permutation of the seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from softmcl_jax.evaluation.embed import progress_bar
from softmcl_jax.models import Pretrained
from softmcl_jax.models.heads import pool

log = logging.getLogger(__name__)


def _tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, ...]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                    return_attention_mask=True)
    return (np.asarray(enc["input_ids"], np.int32), np.asarray(enc["attention_mask"], np.int32))


def finetune_classifier(pretrained: Pretrained, tokenizer: Any, train_texts: Sequence[str],
                        train_labels: Sequence[int], *, num_labels: int, steps: int,
                        learning_rate: float = 2e-5, batch_size: int = 32, max_len: int = 128,
                        pooling: str = "mean", weight_decay: float = 0.01, seed: int = 0,
                        progress: bool = True) -> tuple[Any, dict[str, np.ndarray]]:
    """Fine-tune a copy of ``pretrained.params`` plus a linear head on the pooled embedding.

    Returns (encoder params, head ``{"kernel": (H, C), "bias": (C,)}``): logits are
    ``pooled @ kernel + bias``. Predictions go through the suite's ``Encoder`` with the tuned
    params, which reuses the embedding functions already compiled for the frozen tasks.
    ``pretrained.params`` themselves are not modified (the step donates its own copy).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    train_labels = np.asarray(train_labels, np.int32)
    ids, mask = _tokenize(tokenizer, train_texts, max_len)
    n = len(ids)
    bs = min(batch_size, n)
    hidden = int(pretrained.config.hidden_size)
    key = jax.random.PRNGKey(seed)
    head_key, dropout_key = jax.random.split(key)
    params = {
        # A copy: the jitted step donates its input buffers.
        "encoder": jax.tree.map(jnp.array, pretrained.params),
        "head": {"kernel": 0.02 * jax.random.normal(head_key, (hidden, num_labels)),
                 "bias": jnp.zeros((num_labels,))},
    }
    warmup = max(1, steps // 10)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup),
         optax.linear_schedule(learning_rate, 0.0, max(1, steps - warmup))], [warmup])
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=weight_decay,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
    opt_state = tx.init(params)

    def loss_fn(p: Any, ids: jax.Array, mask: jax.Array, y: jax.Array,
                rng: jax.Array) -> jax.Array:
        h = pretrained.encode(p["encoder"], ids, mask, train=True, rngs={"dropout": rng})
        logits = pool(h, mask, pooling) @ p["head"]["kernel"] + p["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step_fn(p: Any, s: Any, ids: jax.Array, mask: jax.Array, y: jax.Array, step: jax.Array):
        rng = jax.random.fold_in(dropout_key, step)
        loss, grads = jax.value_and_grad(loss_fn)(p, ids, mask, y, rng)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    train_step = jax.jit(step_fn, donate_argnums=(0, 1))

    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    bar = progress_bar(steps, "fine-tune", progress)
    loss = None
    for step in range(steps):
        if len(order) < bs:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:bs], order[bs:]
        params, opt_state, loss = train_step(params, opt_state, ids[idx], mask[idx],
                                             train_labels[idx], jnp.asarray(step))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    if loss is not None:
        log.info("fine-tuning: %d steps, final training loss %.4f", steps, float(loss))

    # The encoder stays on the device (the caller embeds with it); the head is tiny.
    return params["encoder"], {k: np.asarray(v) for k, v in params["head"].items()}
