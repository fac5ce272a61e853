"""Small heads that the methods put on top of the encoder's pooled or token vectors."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
    """``Dense(hidden) -> GELU -> Dense(out)``; with ``hidden == 0`` a single ``Dense(out)``.

    Serves as the contrastive projection head (MoCo-v2/SimCLR style), the LCL weighting network
    and, with ``hidden == 0``, a linear classifier.
    """

    out: int
    hidden: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)
        if self.hidden:
            x = jax.nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=init,
                                     name="hidden")(x), approximate=False)
        return nn.Dense(self.out, dtype=self.dtype, kernel_init=init, name="out")(x)


POOLINGS = ("mean", "cls")  # what pool() does; the config, the suite and the export accept these


def pool(hidden: jax.Array, attention_mask: jax.Array, how: str) -> jax.Array:
    """(B, L, H) -> (B, H): ``"cls"`` (first token) or ``"mean"`` over real tokens, in fp32."""
    hidden = hidden.astype(jnp.float32)
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = attention_mask[..., None].astype(jnp.float32)
        return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {how!r}")


def gather_words(hidden: jax.Array, token_mask: jax.Array, per_sentence: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first ``per_sentence`` flagged tokens of each row, in a fixed-shape padded array.

    Args:
      hidden: (B, L, H) token vectors.
      token_mask: (B, L) bool, tokens that carry a word valence.
      per_sentence: W, tokens kept per row (rows with more are cut, rows with fewer padded).
    Returns:
      vectors (B * W, H), positions (B, W) int32, valid (B * W,) bool.
    """
    b = token_mask.shape[0]
    # Stable argsort of "not flagged" puts flagged positions first, in their original order.
    order = jnp.argsort(~token_mask, axis=1, stable=True)[:, :per_sentence]
    valid = jnp.take_along_axis(token_mask, order, axis=1)
    vectors = jnp.take_along_axis(hidden, order[..., None], axis=1)
    return vectors.reshape(b * per_sentence, -1), order.astype(jnp.int32), valid.reshape(-1)


def scored_positions(labels: jax.Array, per_row: int, ignore_index: int = -100
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The first ``per_row`` scored positions (label != ignore) of each row, for MLM logits at
    those positions only.

    Args:
      labels: (B, L) MLM labels, ``ignore_index`` where nothing is predicted.
      per_row: M, positions kept per row.
    Returns:
      positions (B, M) int32 (padding points at position 0), labels (B, M) (``ignore_index`` at
      padding), and per row the scored tokens beyond M (B,) int32, which those positions leave
      out: zero when the data capped the targets at M (``mask_tokens(max_predictions=M)``).
    """
    scored = labels != ignore_index
    order = jnp.argsort(~scored, axis=1, stable=True)[:, :per_row]
    kept = jnp.take_along_axis(scored, order, axis=1)
    positions = jnp.where(kept, order, 0).astype(jnp.int32)
    picked = jnp.where(kept, jnp.take_along_axis(labels, order, axis=1), ignore_index)
    left_out = (scored.sum(axis=1) - kept.sum(axis=1)).astype(jnp.int32)
    return positions, picked, left_out
