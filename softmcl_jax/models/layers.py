"""Building blocks shared by the encoders.

Parameter names follow the PyTorch modules of transformers (``query``, ``LayerNorm``, ...), so
that a Flax parameter path maps one-to-one onto a state-dict key (see softmcl_jax.models.hf).
Parameters are kept in ``param_dtype`` (fp32); matmuls run in ``dtype`` (fp32 or bf16); layer norms,
softmaxes and the residual stream's statistics run in fp32 whatever ``dtype`` is, because bf16
variance and bf16 exp lose too much precision over 12-24 layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=True)


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# Names as in transformers' ACT2FN; "gelu" there is the exact (erf) GELU.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_exact,
    "gelu_python": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation transformers calls ``name``; a clear error for one we do not implement."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"hidden_act={name!r} is not supported; known: {sorted(ACTIVATIONS)}"
        ) from None


def dense(features: int, name: str, *, init_std: float, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True) -> nn.Dense:
    """A ``nn.Dense`` named like the PyTorch ``nn.Linear`` it mirrors."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.normal(init_std),
        name=name,
    )


def layer_norm(name: str, *, eps: float, param_dtype: Dtype) -> nn.LayerNorm:
    # fp32 statistics and output: see the module docstring.
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name)


def embed(num: int, features: int, name: str, *, init_std: float, dtype: Dtype,
          param_dtype: Dtype) -> nn.Embed:
    """An embedding table whose lookups stay in ``param_dtype``; ``dtype`` is deliberately unused.

    Embeddings feed a LayerNorm that runs in fp32 anyway, and a bf16 gather makes the backward pass
    a bf16 scatter-add: on GPUs that is a compare-and-swap loop per element, serialised on the pad
    row that every padded position hits (it made a bf16 BERT step slower than an fp32 one).
    """
    del dtype
    return nn.Embed(
        num,
        features,
        dtype=param_dtype,
        param_dtype=param_dtype,
        embedding_init=nn.initializers.normal(init_std),
        name=name,
    )


def lookup(table: nn.Embed, ids: jax.Array, padding_idx: int | None) -> jax.Array:
    """``table(ids)`` where positions holding ``padding_idx`` send no gradient into the table.

    This is what ``torch.nn.Embedding(padding_idx=...)`` does (transformers builds word embeddings,
    and RoBERTa its position embeddings, that way); without it a training step here differs from
    the same step in PyTorch in the pad row.
    """
    x = table(ids)
    if padding_idx is None:
        return x
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(x), x)


DROPOUT_RESOLUTION = 1 << 16  # keep/drop decisions are made on 16 random bits


def dropout_keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Bool keep-mask of ``shape``: each element is dropped with probability ``q``, independently.

    ``q = round(rate * 2**16) / 2**16`` (0.1 -> 0.1000061): each decision uses 16 random bits, two
    per 32-bit threefry word, instead of the 32-bit float per element that
    ``jax.random.bernoulli`` draws. On XLA:CPU threefry is the cost of dropout: the masks of one
    MiniLM SimCSE step alone took ~0.45 s with bernoulli, ~0.2 s this way (in the full jitted step
    the difference was within run-to-run noise; BENCHMARKS.md). The rate moves by < 1e-5.
    """
    threshold = round(rate * DROPOUT_RESOLUTION)
    if threshold <= 0:
        return jnp.ones(shape, bool)
    if threshold >= DROPOUT_RESOLUTION:
        return jnp.zeros(shape, bool)
    *lead, last = shape
    words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # (..., words, 2)
    bits = halves.reshape(*lead, -1)[..., :last]
    return bits >= jnp.uint16(threshold)


def dropout_scale(rate: float) -> float:
    """``1 / (1 - q)`` for the ``q`` that :func:`dropout_keep_mask` realises (unbiased output)."""
    threshold = round(rate * DROPOUT_RESOLUTION)
    return DROPOUT_RESOLUTION / (DROPOUT_RESOLUTION - threshold)


class Dropout(nn.Module):
    """Inverted dropout with :func:`dropout_keep_mask`; same interface as ``nn.Dropout``
    (``rngs={'dropout': key}`` when not ``deterministic``)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        threshold = round(self.rate * DROPOUT_RESOLUTION)
        if deterministic or threshold <= 0:
            return x
        if threshold >= DROPOUT_RESOLUTION:
            return jnp.zeros_like(x)
        keep = dropout_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        scaled = x * jnp.asarray(dropout_scale(self.rate), x.dtype)
        return jnp.where(keep, scaled, jnp.zeros_like(x))


def at_positions(hidden: jax.Array, positions: jax.Array | None,
                 rows: jax.Array | None = None) -> jax.Array:
    """``hidden`` (B, L, H) at ``positions`` (B, M) -> (B, M, H); None: all of ``hidden``.

    The MLM heads take their input through this, so a caller that scores M << L tokens per row
    pays for B x M x V logits instead of B x L x V (the largest activation of a step for a
    128k vocabulary).

    Packed rows: with ``rows`` (S,), ``positions`` is (S, M) and entry ``[s, m]`` is token
    ``positions[s, m]`` of row ``rows[s]`` (sentence ``s``'s tokens in the row it was packed
    into) -> (S, M, H).
    """
    if positions is None:
        if rows is not None:
            raise ValueError("rows (mlm_rows) needs positions (mlm_positions)")
        return hidden
    if rows is not None:
        hidden = jnp.take(hidden, rows.astype(jnp.int32), axis=0)
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


# --- sequence packing ------------------------------------------------------------------------
# A packed row holds several sentences: ``segment_ids`` (B, L) int is 0 on padding and 1, 2, ...
# on the tokens of the row's sentences, each a contiguous run. The caller's attention_mask is
# then ``segment_ids > 0``.

def segment_starts(segment_ids: jax.Array) -> jax.Array:
    """(B, L) segment ids -> (B, L) int32: the index of the first token of each token's run.

    A run starts at position 0 and wherever the id changes; a running maximum of those start
    indices carries each start over its run.
    """
    seg = segment_ids
    idx = jnp.broadcast_to(jnp.arange(seg.shape[-1], dtype=jnp.int32), seg.shape)
    changed = jnp.concatenate(
        [jnp.ones_like(seg[..., :1], bool), seg[..., 1:] != seg[..., :-1]], axis=-1)
    return jax.lax.cummax(jnp.where(changed, idx, 0), axis=seg.ndim - 1)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """(B, L) segment ids -> (B, L) int32: each token's position within its segment, 0 at the
    segment's first token (what it would be in a row of its own); 0 on padding.

    ``[[1, 1, 1, 2, 2, 0]] -> [[0, 1, 2, 0, 1, 0]]`` (softmcl_jax.data.packing computes the same
    in numpy).
    """
    idx = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    return jnp.where(segment_ids > 0, idx - segment_starts(segment_ids), 0)


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """(B, L) segment ids -> (B, 1, L, L) bool: query i may attend key j iff they share a segment.

    Real queries therefore see only the real keys of their own sentence; padding queries (segment
    0) see only padding keys, so that no row is all masked (their outputs are never used).
    """
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


def segment_bias(segment_ids: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
    """(B, L) segment ids -> (B, 1, L, L) additive bias: 0 within a segment, dtype-min across.

    The block-diagonal counterpart of :func:`key_padding_bias` (see :func:`segment_mask`).
    """
    big_negative = jnp.finfo(dtype).min
    return jnp.where(segment_mask(segment_ids), 0.0, big_negative).astype(dtype)


def key_padding_bias(attention_mask: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
    """(B, L) 0/1 mask -> (B, 1, 1, L) additive bias: 0 where attended, dtype-min where padded.

    The finite minimum (not -inf) is what transformers adds, so rows whose keys are all padding give
    the same uniform softmax there as here rather than NaN.
    """
    big_negative = jnp.finfo(dtype).min
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, big_negative).astype(dtype)


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    *,
    dropout: Dropout | None,
    train: bool,
) -> jax.Array:
    """Scaled dot-product attention over heads.

    Args:
      q, k, v: (B, L, N, Dh) in the compute dtype.
      bias: additive, broadcastable to (B, N, L, L), fp32.
      dropout: applied to the attention probabilities when ``train``.
    Returns:
      (B, L, N, Dh) in the compute dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqnd,bknd->bnqk", q * jnp.asarray(scale, q.dtype), k)
    scores = scores.astype(jnp.float32) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs, deterministic=not train)
    return jnp.einsum("bnqk,bknd->bqnd", probs.astype(v.dtype), v)


class AddNorm(nn.Module):
    """``dense -> dropout -> LayerNorm(. + residual)``: the SelfOutput/Output block of BERT-style
    layers (BERT, RoBERTa, ELECTRA, DeBERTa). ``config`` needs ``hidden_size``,
    ``hidden_dropout_prob``, ``layer_norm_eps`` and ``initializer_range``.
    """

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array, *, train: bool) -> jax.Array:
        c = self.config
        y = dense(c.hidden_size, "dense", init_std=c.initializer_range, dtype=self.dtype,
                  param_dtype=self.param_dtype)(x)
        y = Dropout(c.hidden_dropout_prob)(y, deterministic=not train)
        y = layer_norm("LayerNorm", eps=c.layer_norm_eps, param_dtype=self.param_dtype)(
            y.astype(jnp.float32) + residual.astype(jnp.float32))
        return y.astype(self.dtype)


class Intermediate(nn.Module):
    """``dense(intermediate_size) -> hidden_act``; ``config`` as for :class:`AddNorm`."""

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        y = dense(c.intermediate_size, "dense", init_std=c.initializer_range, dtype=self.dtype,
                  param_dtype=self.param_dtype)(x)
        return activation(c.hidden_act)(y)
