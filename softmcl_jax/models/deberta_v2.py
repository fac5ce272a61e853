"""DeBERTa-v2 / DeBERTa-v3 encoder with its masked-LM head (transformers' ``DebertaV2ForMaskedLM``).

DeBERTa's disentangled attention adds to the content score ``q_i . k_j`` two relative-position
terms that share one table of relative embeddings ``r`` (projected per layer to ``k^r``/``q^r``):

    A_ij = ( q_i . k_j  +  q_i . k^r_{d(i,j)}  +  k_j . q^r_{d(j,i)} ) / sqrt(head_dim * s)
                          `----- c2p -----'     `----- p2c -----'

``d(i,j)`` is ``i - j`` (log-bucketed beyond ``position_buckets // 2`` in v3) shifted by the span
and clamped into the table, and ``s = 1 + #{c2p, p2c} in pos_att_type``. Both query and key padding
are masked; a padded query row is all masked and so attends uniformly, exactly as transformers'
``masked_fill(finfo.min) + softmax`` does (the parity tests compare padded positions too).

Packed rows (``segment_ids``, see :class:`DebertaModel`): attention is masked to each segment,
the absolute positions (``position_biased_input``) restart at each segment, and the ConvLayer
sees another segment's tokens as the zeros that padding is. The relative positions need no
change: within a segment ``pos_i - pos_j = i - j`` whatever the segment's offset, so the shared
(L, L) ``d(i, j)`` is already the restarted one wherever attention is not masked.

Submodule names mirror transformers', so parameter paths are state-dict keys (see hf.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softmcl_jax.models import layers

Dtype = Any
_POS_ATT_TYPES = ("c2p", "p2c", "p2p")


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    """The fields of a transformers ``DebertaV2Config`` that the computation depends on."""

    vocab_size: int
    hidden_size: int
    embedding_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int | None
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    initializer_range: float
    relative_attention: bool
    max_relative_positions: int  # already resolved: -1 in the HF config -> max_position_embeddings
    position_buckets: int  # <= 0: no log buckets
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    norm_rel_ebd: bool  # "layer_norm" in the HF config's norm_rel_ebd
    position_biased_input: bool
    conv_kernel_size: int  # 0: no ConvLayer
    conv_groups: int
    conv_act: str
    legacy: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def scale_factor(self) -> int:
        # transformers counts only the terms it computes; "p2p" is accepted but never computed.
        return 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)

    @property
    def att_span(self) -> int:
        """Half the number of relative embeddings (transformers' ``pos_ebd_size``)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @classmethod
    def from_hf(cls, hf_config: Any) -> DebertaConfig:
        if hf_config.model_type != "deberta-v2":
            raise ValueError(f"DebertaConfig cannot describe model_type={hf_config.model_type!r}")
        hidden, heads = hf_config.hidden_size, hf_config.num_attention_heads
        if hidden % heads:
            raise ValueError(f"hidden_size={hidden} is not a multiple of "
                             f"num_attention_heads={heads}")
        head_size = getattr(hf_config, "attention_head_size", None)
        if head_size is not None and head_size * heads != hidden:
            raise ValueError(f"attention_head_size={head_size} with {heads} heads != hidden_size "
                             f"{hidden} is not supported")
        pos_att = hf_config.pos_att_type or []
        if isinstance(pos_att, str):
            pos_att = [x.strip() for x in pos_att.lower().split("|")]
        unknown = set(pos_att) - set(_POS_ATT_TYPES)
        if unknown:
            raise ValueError(f"pos_att_type entries {sorted(unknown)} are unknown; "
                             f"known: {list(_POS_ATT_TYPES)}")
        max_rel = getattr(hf_config, "max_relative_positions", -1)
        if max_rel < 1:
            max_rel = hf_config.max_position_embeddings
        buckets = getattr(hf_config, "position_buckets", -1)
        relative = bool(getattr(hf_config, "relative_attention", False))
        if relative and buckets > 0 and max_rel - 1 <= buckets // 2:
            # log((max_rel - 1) / mid) <= 0: transformers divides by zero or flips signs there.
            raise ValueError(f"position_buckets={buckets} needs max_relative_positions > "
                             f"{buckets // 2 + 1}, got {max_rel}")
        norm_rel = getattr(hf_config, "norm_rel_ebd", "none").lower().split("|")
        norm_rel = [x.strip() for x in norm_rel]
        if set(norm_rel) - {"none", "layer_norm"}:
            raise ValueError(f"norm_rel_ebd={hf_config.norm_rel_ebd!r} is not supported")
        emb_size = getattr(hf_config, "embedding_size", None) or hidden
        legacy = bool(getattr(hf_config, "legacy", True))
        if not legacy and emb_size != hidden:
            raise ValueError("legacy=False multiplies hidden states by the word embeddings, which "
                             f"needs embedding_size ({emb_size}) == hidden_size ({hidden})")
        if legacy and not getattr(hf_config, "tie_word_embeddings", True):
            raise ValueError("an untied legacy MLM decoder (tie_word_embeddings=False) is not "
                             "supported")
        conv_k = getattr(hf_config, "conv_kernel_size", 0)
        if conv_k > 0 and conv_k % 2 == 0:
            raise ValueError(f"conv_kernel_size={conv_k}: an even kernel changes the length in "
                             "transformers' ConvLayer; only odd kernels are supported")
        conv_act = getattr(hf_config, "conv_act", "tanh")
        for act in (hf_config.hidden_act, conv_act if conv_k > 0 else "tanh"):
            layers.activation(act)  # raises a clear ValueError for an unknown name
        return cls(
            vocab_size=hf_config.vocab_size, hidden_size=hidden, embedding_size=emb_size,
            num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=heads,
            intermediate_size=hf_config.intermediate_size, hidden_act=hf_config.hidden_act,
            layer_norm_eps=hf_config.layer_norm_eps,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            pad_token_id=getattr(hf_config, "pad_token_id", 0),
            hidden_dropout_prob=hf_config.hidden_dropout_prob,
            attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
            initializer_range=hf_config.initializer_range,
            relative_attention=relative, max_relative_positions=max_rel,
            position_buckets=buckets, pos_att_type=tuple(pos_att),
            share_att_key=bool(getattr(hf_config, "share_att_key", False)),
            norm_rel_ebd="layer_norm" in norm_rel,
            position_biased_input=bool(getattr(hf_config, "position_biased_input", True)),
            conv_kernel_size=max(conv_k, 0), conv_groups=getattr(hf_config, "conv_groups", 1),
            conv_act=conv_act, legacy=legacy,
        )


@functools.lru_cache(maxsize=64)
def relative_positions(query_size: int, key_size: int, bucket_size: int = -1,
                       max_position: int = -1) -> np.ndarray:
    """transformers' ``build_relative_position`` (with ``make_log_bucket_position``): (Lq, Lk) int.

    Plain numpy at trace time (shapes are static), in float32 like torch, so that ``ceil`` lands on
    the same bucket as in transformers whatever the accelerator. Read-only (it is cached).
    """
    rel = np.arange(query_size)[:, None] - np.arange(key_size)[None, :]
    if bucket_size > 0 and max_position > 0:
        f32 = np.float32
        sign = np.sign(rel)
        mid = bucket_size // 2
        abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(abs_pos.astype(f32) / f32(mid)) / np.log(f32((max_position - 1) / mid))
            log_pos = np.ceil(ratio * f32(mid - 1)) + f32(mid)
            rel = np.where(abs_pos <= mid, rel.astype(f32), log_pos * sign).astype(np.int64)
    rel.setflags(write=False)
    return rel


def disentangled_bias(q: jax.Array, k: jax.Array, pos_q: jax.Array | None,
                      pos_k: jax.Array | None, rel_pos: np.ndarray, span: int,
                      scale: np.float32) -> jax.Array:
    """c2p + p2c scores (B, N, Lq, Lk) in fp32, already divided by ``scale``.

    q, k: (B, L, N, Dh); pos_q/pos_k: (2*span, N, Dh) projected relative embeddings (None: skip
    that term); rel_pos: (L, L) from :func:`relative_positions`.
    """
    score = jnp.zeros((), jnp.float32)
    rows = np.arange(rel_pos.shape[0])[:, None]
    if pos_k is not None:  # c2p: q_i . k^r[d(i,j)]
        att = jnp.einsum("bqnd,rnd->bnqr", q, pos_k, preferred_element_type=jnp.float32)
        idx = np.clip(rel_pos + span, 0, 2 * span - 1)
        score = score + att[:, :, rows, idx] / scale
    if pos_q is not None:  # p2c: k_j . q^r[d(j,i)], gathered per key row then transposed
        att = jnp.einsum("bknd,rnd->bnkr", k, pos_q, preferred_element_type=jnp.float32)
        idx = np.clip(-rel_pos + span, 0, 2 * span - 1)
        score = score + jnp.swapaxes(att[:, :, rows, idx], -1, -2) / scale
    return score


class _Common(nn.Module):
    config: DebertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _kw(self) -> dict[str, Any]:
        return dict(init_std=self.config.initializer_range, dtype=self.dtype,
                    param_dtype=self.param_dtype)

    def _norm(self, name: str) -> nn.LayerNorm:
        return layers.layer_norm(name, eps=self.config.layer_norm_eps, param_dtype=self.param_dtype)


class Embeddings(_Common):
    @nn.compact
    def __call__(self, input_ids, token_type_ids, mask, *, train: bool,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        c = self.config
        kw = self._kw()
        x = layers.lookup(layers.embed(c.vocab_size, c.embedding_size, "word_embeddings", **kw),
                          input_ids, c.pad_token_id)
        if c.position_biased_input:
            table = layers.embed(c.max_position_embeddings, c.embedding_size,
                                 "position_embeddings", **kw)
            if segment_ids is None:
                x = x + table(jnp.arange(input_ids.shape[1]))[None]
            else:  # packed: positions restart at each segment
                x = x + table(layers.segment_positions(segment_ids))
        if c.type_vocab_size > 0:
            x = x + layers.embed(c.type_vocab_size, c.embedding_size, "token_type_embeddings",
                                 **kw)(token_type_ids)
        if c.embedding_size != c.hidden_size:
            x = layers.dense(c.hidden_size, "embed_proj", use_bias=False, **kw)(x)
        x = self._norm("LayerNorm")(x) * mask[..., None].astype(jnp.float32)
        return layers.Dropout(c.hidden_dropout_prob)(x, deterministic=not train).astype(self.dtype)


class DisentangledSelfAttention(_Common):
    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, rel_emb: jax.Array | None, *,
                 train: bool) -> jax.Array:
        c = self.config
        kw = self._kw()
        heads, length = c.num_attention_heads, x.shape[1]

        def split(y: jax.Array) -> jax.Array:
            return y.reshape(*y.shape[:-1], heads, c.head_dim)

        query_proj = layers.dense(c.hidden_size, "query_proj", **kw)
        key_proj = layers.dense(c.hidden_size, "key_proj", **kw)
        q, k = split(query_proj(x)), split(key_proj(x))
        v = split(layers.dense(c.hidden_size, "value_proj", **kw)(x))
        # torch computes sqrt in fp32 and divides k (not q) by it; same rounding here.
        scale = np.sqrt(np.float32(c.head_dim * c.scale_factor))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k / jnp.asarray(scale, k.dtype),
                            preferred_element_type=jnp.float32)
        if c.relative_attention:
            rel = layers.Dropout(c.hidden_dropout_prob)(rel_emb, deterministic=not train)
            rel = rel.astype(self.dtype)
            c2p, p2c = "c2p" in c.pos_att_type, "p2c" in c.pos_att_type
            if c.share_att_key:
                pos_key_proj, pos_query_proj = key_proj, query_proj
            else:
                pos_key_proj = layers.dense(c.hidden_size, "pos_key_proj", **kw) if c2p else None
                pos_query_proj = (layers.dense(c.hidden_size, "pos_query_proj", **kw)
                                  if p2c else None)
            rel_pos = relative_positions(length, length, c.position_buckets,
                                         c.max_relative_positions)
            scores = scores + disentangled_bias(
                q, k, split(pos_query_proj(rel)) if p2c else None,
                split(pos_key_proj(rel)) if c2p else None, rel_pos, c.att_span, scale)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = layers.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=not train)
        ctx = jnp.einsum("bnqk,bknd->bqnd", probs.astype(v.dtype), v)
        return ctx.reshape(*ctx.shape[:-2], c.hidden_size)



class Attention(_Common):
    @nn.compact
    def __call__(self, x, mask, rel_emb, *, train: bool) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        ctx = DisentangledSelfAttention(*args, name="self")(x, mask, rel_emb, train=train)
        return layers.AddNorm(*args, name="output")(ctx, x, train=train)



class Layer(_Common):
    # ``train`` is positional so that nn.remat can mark it static.
    @nn.compact
    def __call__(self, x, mask, rel_emb, train: bool) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        x = Attention(*args, name="attention")(x, mask, rel_emb, train=train)
        y = layers.Intermediate(*args, name="intermediate")(x)
        return layers.AddNorm(*args, name="output")(y, x, train=train)


class ConvLayer(_Common):
    """v2-xlarge's convolution over the embeddings, added to the first layer's output.

    The embeddings are zero on padding, so a padding neighbour (and the zero padding at the row's
    ends) adds nothing to a token's convolution. Packed (``segment_ids``): each token's window is
    gathered with the taps outside its segment zeroed, the same as padding there, and convolved
    with the same kernel without padding ("VALID" over windows of exactly kernel_size taps).
    """

    @nn.compact
    def __call__(self, x, residual, input_mask, *, train: bool,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        c = self.config
        k = c.conv_kernel_size
        pad = (k - 1) // 2

        def conv(padding):
            return nn.Conv(c.hidden_size, (k,), padding=padding,
                           feature_group_count=c.conv_groups, dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           kernel_init=nn.initializers.normal(c.initializer_range), name="conv")

        if segment_ids is None:
            out = conv([(pad, pad)])(x)
        else:
            batch, length, width = x.shape
            src = np.arange(length)[:, None] + np.arange(k)[None, :] - pad  # (L, K) taps
            inside = (src >= 0) & (src < length)
            src = np.clip(src, 0, length - 1)
            same = (segment_ids[:, src] == segment_ids[:, :, None]) & inside  # (B, L, K)
            windows = jnp.where(same[..., None], x[:, src], jnp.zeros((), x.dtype))
            out = conv("VALID")(windows.reshape(batch * length, k, width))
            out = out.reshape(batch, length, -1)
        keep = (input_mask > 0)[..., None]
        out = jnp.where(keep, out, 0)
        out = layers.Dropout(c.hidden_dropout_prob)(out, deterministic=not train)
        out = layers.activation(c.conv_act)(out)
        y = self._norm("LayerNorm")(residual.astype(jnp.float32) + out.astype(jnp.float32))
        return (y * keep).astype(self.dtype)


class Encoder(_Common):
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, input_mask: jax.Array, *, train: bool,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        c = self.config
        if segment_ids is None:
            m = input_mask > 0
            mask = m[:, None, :, None] & m[:, None, None, :]  # (B, 1, Lq, Lk): query AND key real
        else:
            mask = layers.segment_mask(segment_ids)  # (B, 1, Lq, Lk): same segment
        rel_emb = None
        if c.relative_attention:
            rel_emb = layers.embed(2 * c.att_span, c.hidden_size, "rel_embeddings",
                                   **self._kw()).embedding
            if c.norm_rel_ebd:
                rel_emb = self._norm("LayerNorm")(rel_emb)
        # static_argnums counts self as 0: (self, x, mask, rel_emb, train).
        block = nn.remat(Layer, static_argnums=(4,)) if self.remat else Layer
        args = (c, self.dtype, self.param_dtype)
        embedded = x
        for i in range(c.num_hidden_layers):
            x = block(*args, name=f"layer_{i}")(x, mask, rel_emb, train)
            if i == 0 and c.conv_kernel_size > 0:
                x = ConvLayer(*args, name="conv")(embedded, x, input_mask, train=train,
                                                  segment_ids=segment_ids)
        return x


class DebertaModel(_Common):
    """The base model (transformers' ``DebertaV2Model``; ``z_steps`` is always 0 there).

    ``segment_ids`` (B, L) packs several sentences per row (0 = padding, 1, 2, ... = the row's
    sentences, contiguous; ``attention_mask`` is then ``segment_ids > 0``): each sentence is
    encoded as in a row of its own (see the module docstring). None: one sentence per row.
    """

    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, *, train: bool,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        x = Embeddings(*args, name="embeddings")(input_ids, token_type_ids, attention_mask,
                                                 train=train, segment_ids=segment_ids)
        return Encoder(*args, remat=self.remat, name="encoder")(x, attention_mask, train=train,
                                                                segment_ids=segment_ids)


class Transform(_Common):
    """``dense -> act -> LayerNorm`` (the legacy head's ``transform``)."""

    width: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.dense(self.width, "dense", **self._kw())(x)
        return self._norm("LayerNorm")(layers.activation(self.config.hidden_act)(y))


class LMHead(_Common):
    """Legacy ``predictions.{transform.*, bias}`` or v3's ``lm_head.{dense, LayerNorm, bias}``;
    both decode with the word-embedding table (the legacy decoder is tied to it)."""

    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        c = self.config
        if c.legacy:
            y = Transform(c, self.dtype, self.param_dtype, width=c.embedding_size,
                          name="transform")(hidden)
        else:
            y = layers.dense(c.hidden_size, "dense", **self._kw())(hidden)
            y = self._norm("LayerNorm")(layers.activation(c.hidden_act)(y))
        bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), self.param_dtype)
        logits = jnp.einsum("ble,ve->blv", y.astype(self.dtype),
                            word_embeddings.astype(self.dtype), preferred_element_type=jnp.float32)
        return logits + bias.astype(jnp.float32)


class OnlyMLMHead(_Common):
    """The naming level ``cls`` -> ``predictions`` (legacy) / ``lm_predictions`` -> ``lm_head``."""

    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        name = "predictions" if self.config.legacy else "lm_head"
        return LMHead(self.config, self.dtype, self.param_dtype, name=name)(hidden,
                                                                            word_embeddings)


class DebertaV2MaskedLM(_Common):
    """``deberta`` base model plus ``cls`` (legacy) or ``lm_predictions`` MLM head.

    Parameters are exactly ``DebertaV2ForMaskedLM``'s state dict minus the tied decoder.
    Packed rows: ``segment_ids`` as in :class:`DebertaModel`; ``mlm_positions`` index the packed
    row, and with ``mlm_rows`` (S,) they are (S, M): sentence s's positions in row
    ``mlm_rows[s]`` (:func:`layers.at_positions`).
    ``encoder_output`` (the base model's ``last_hidden_state``, computed elsewhere: gradient
    caching runs the encoder chunk by chunk) runs only the MLM head on it.
    """

    remat: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None, *, train: bool = False,
                 mlm: bool = True, mlm_positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, mlm_rows: jax.Array | None = None,
                 encoder_output: jax.Array | None = None) -> dict[str, jax.Array]:
        c = self.config
        if (encoder_output is None and c.position_biased_input
                and input_ids.shape[1] > c.max_position_embeddings):
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={c.max_position_embeddings}")
        if token_type_ids is None and input_ids is not None:
            token_type_ids = jnp.zeros_like(input_ids)
        args = (c, self.dtype, self.param_dtype)
        base = DebertaModel(*args, remat=self.remat, name="deberta")
        if encoder_output is None:
            hidden = base(input_ids, attention_mask, token_type_ids, train=train,
                          segment_ids=segment_ids)
        else:  # the encoder ran elsewhere (chunk by chunk): only the MLM head runs
            hidden = encoder_output
        out = {"last_hidden_state": hidden}
        if mlm:
            table = base.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
            out["logits"] = OnlyMLMHead(*args, name="cls" if c.legacy else "lm_predictions")(
                layers.at_positions(hidden, mlm_positions, mlm_rows), table)
        return out
