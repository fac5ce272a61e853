"""BERT, RoBERTa and ELECTRA (discriminator) encoders with their masked-LM heads.

The three share one post-LayerNorm transformer and differ only in details that the config carries:
RoBERTa counts positions from ``pad_token_id + 1`` and skips padding; ELECTRA may embed in a
smaller ``embedding_size`` and project up (``embeddings_project``); each has its own MLM head
(``cls.predictions``, ``lm_head``, ``generator_predictions`` + ``generator_lm_head``).
Submodule names mirror transformers' so parameter paths are state-dict keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softmcl_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BertLikeConfig:
    """The fields of a transformers BERT/RoBERTa/ELECTRA config that the computation depends on."""

    family: str  # "bert" | "roberta" | "electra"
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
    pad_token_id: int
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    initializer_range: float
    add_pooler: bool
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, hf_config: Any) -> BertLikeConfig:
        family = hf_config.model_type
        if family not in ("bert", "roberta", "electra"):
            raise ValueError(f"BertLikeConfig cannot describe model_type={family!r}")
        pet = getattr(hf_config, "position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(
                f"position_embedding_type={pet!r} is not supported (only 'absolute')"
            )
        if getattr(hf_config, "is_decoder", False):
            raise ValueError("decoder (causal) configs are not supported: these are encoders")
        return cls(
            family=family,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            embedding_size=getattr(hf_config, "embedding_size", hf_config.hidden_size),
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size,
            hidden_act=hf_config.hidden_act,
            layer_norm_eps=hf_config.layer_norm_eps,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
            hidden_dropout_prob=hf_config.hidden_dropout_prob,
            attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
            initializer_range=hf_config.initializer_range,
            # ELECTRA has no pooler; BERT and RoBERTa base models do.
            add_pooler=family != "electra",
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        )


class _Common(nn.Module):
    config: BertLikeConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _kw(self) -> dict[str, Any]:
        return dict(init_std=self.config.initializer_range, dtype=self.dtype,
                    param_dtype=self.param_dtype)


def position_ids(input_ids: jax.Array, family: str, pad_token_id: int,
                 segment_ids: jax.Array | None = None) -> jax.Array:
    """Absolute positions: 0..L-1 for BERT/ELECTRA; RoBERTa's pad+1.. over non-padding tokens.

    With ``segment_ids`` (packed rows) they restart at each segment, as if each sentence had a
    row of its own: BERT/ELECTRA count from 0 at the segment's first token; RoBERTa counts the
    segment's non-pad tokens from pad+1 and gives pad_token_id to padding (segment 0).
    """
    if segment_ids is not None:
        if family != "roberta":
            return layers.segment_positions(segment_ids)
        not_pad = ((input_ids != pad_token_id) & (segment_ids > 0)).astype(jnp.int32)
        count = jnp.cumsum(not_pad, axis=1)  # non-pad tokens up to and including t
        before = jnp.take_along_axis(count - not_pad, layers.segment_starts(segment_ids), axis=1)
        return (count - before) * not_pad + pad_token_id
    if family == "roberta":
        not_pad = (input_ids != pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


class Embeddings(_Common):
    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, *, train: bool,
                 segment_ids: jax.Array | None = None):
        c = self.config
        kw = self._kw()
        pos = position_ids(input_ids, c.family, c.pad_token_id, segment_ids)
        words = layers.embed(c.vocab_size, c.embedding_size, "word_embeddings", **kw)
        x = layers.lookup(words, input_ids, c.pad_token_id)
        x = x + layers.embed(c.type_vocab_size, c.embedding_size, "token_type_embeddings",
                             **kw)(token_type_ids)
        positions = layers.embed(c.max_position_embeddings, c.embedding_size,
                                 "position_embeddings", **kw)
        # RoBERTa's position table also has padding_idx (padding positions hold pad_token_id).
        x = x + layers.lookup(positions, pos, c.pad_token_id if c.family == "roberta" else None)
        x = layers.layer_norm("LayerNorm", eps=c.layer_norm_eps, param_dtype=self.param_dtype)(x)
        return layers.Dropout(c.hidden_dropout_prob)(x, deterministic=not train).astype(self.dtype)


class SelfAttention(_Common):
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
        c = self.config
        kw = self._kw()
        heads = c.num_attention_heads
        head_dim = c.hidden_size // heads

        def split(name: str) -> jax.Array:
            y = layers.dense(c.hidden_size, name, **kw)(x)
            return y.reshape(*y.shape[:-1], heads, head_dim)

        ctx = layers.multi_head_attention(
            split("query"), split("key"), split("value"), bias,
            dropout=layers.Dropout(c.attention_probs_dropout_prob), train=train,
        )
        return ctx.reshape(*ctx.shape[:-2], c.hidden_size)



class Attention(_Common):
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
        ctx = SelfAttention(self.config, self.dtype, self.param_dtype, name="self")(
            x, bias, train=train)
        return layers.AddNorm(self.config, self.dtype, self.param_dtype, name="output")(
            ctx, x, train=train)



class Layer(_Common):
    # ``train`` is positional so that nn.remat can mark it static.
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, train: bool) -> jax.Array:
        args = (self.config, self.dtype, self.param_dtype)
        x = Attention(*args, name="attention")(x, bias, train=train)
        y = layers.Intermediate(*args, name="intermediate")(x)
        return layers.AddNorm(*args, name="output")(y, x, train=train)


class Encoder(_Common):
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool) -> jax.Array:
        # static_argnums counts self as 0: (self, x, bias, train).
        block = nn.remat(Layer, static_argnums=(3,)) if self.remat else Layer
        for i in range(self.config.num_hidden_layers):
            x = block(self.config, self.dtype, self.param_dtype, name=f"layer_{i}")(x, bias, train)
        return x


class Pooler(_Common):
    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.tanh(layers.dense(self.config.hidden_size, "dense", **self._kw())(hidden[:, 0]))


class BertLikeModel(_Common):
    """The base model (transformers' ``BertModel`` / ``RobertaModel`` / ``ElectraModel``).

    ``segment_ids`` (B, L) packs several sentences per row (0 = padding, 1, 2, ... = the row's
    sentences, contiguous; ``attention_mask`` is then ``segment_ids > 0``): attention stays
    within a segment and positions restart at each, so every sentence is encoded as in a row of
    its own. None: the ordinary one-sentence-per-row computation.
    """

    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, *, train: bool,
                 segment_ids: jax.Array | None = None):
        c = self.config
        args = (c, self.dtype, self.param_dtype)
        x = Embeddings(*args, name="embeddings")(input_ids, token_type_ids, train=train,
                                                 segment_ids=segment_ids)
        if c.embedding_size != c.hidden_size:
            x = layers.dense(c.hidden_size, "embeddings_project", **self._kw())(x)
        if segment_ids is None:
            bias = layers.key_padding_bias(attention_mask)
        else:
            bias = layers.segment_bias(segment_ids)
        x = Encoder(*args, remat=self.remat, name="encoder")(x, bias, train=train)
        pooled = Pooler(*args, name="pooler")(x) if c.add_pooler else None
        return x, pooled


def _vocab_logits(mod: _Common, y: jax.Array, word_embeddings: jax.Array,
                  untied_kernel: str) -> jax.Array:
    """Inside ``mod``'s compact call: ``y @ W.T + bias``, W the word embeddings when tied.

    When untied, W is ``mod``'s own parameter at ``untied_kernel`` ("decoder" -> a nested Linear as
    in BERT/RoBERTa; "kernel" -> the module itself is the Linear, as ELECTRA's generator_lm_head).
    """
    c = mod.config
    bias = mod.param("bias", nn.initializers.zeros, (c.vocab_size,), mod.param_dtype)
    y = y.astype(mod.dtype)
    if c.tie_word_embeddings:
        logits = jnp.einsum("ble,ve->blv", y, word_embeddings.astype(mod.dtype))
    elif untied_kernel == "kernel":
        w = mod.param("kernel", nn.initializers.normal(c.initializer_range),
                      (y.shape[-1], c.vocab_size), mod.param_dtype)
        logits = y @ w.astype(mod.dtype)
    else:
        logits = layers.dense(c.vocab_size, untied_kernel, use_bias=False, **mod._kw())(y)
    return logits.astype(jnp.float32) + bias


class Transform(_Common):
    """``dense -> act -> LayerNorm``, the first half of every MLM head."""

    width: int = 0
    act: str = "gelu"
    norm_name: str = "LayerNorm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.dense(self.width, "dense", **self._kw())(x)
        y = layers.activation(self.act)(y)
        return layers.layer_norm(self.norm_name, eps=self.config.layer_norm_eps,
                                 param_dtype=self.param_dtype)(y)


class BertPredictions(_Common):
    """BERT's ``cls.predictions.{transform, bias}``."""

    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        c = self.config
        y = Transform(c, self.dtype, self.param_dtype, width=c.hidden_size, act=c.hidden_act,
                      name="transform")(hidden)
        return _vocab_logits(self, y, word_embeddings, "decoder")


class BertCls(_Common):
    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        return BertPredictions(self.config, self.dtype, self.param_dtype, name="predictions")(
            hidden, word_embeddings)


class RobertaLMHead(_Common):
    """RoBERTa's ``lm_head.{dense, layer_norm, bias}`` (exact GELU whatever hidden_act says)."""

    @nn.compact
    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        c = self.config
        y = layers.activation("gelu")(layers.dense(c.hidden_size, "dense", **self._kw())(hidden))
        y = layers.layer_norm("layer_norm", eps=c.layer_norm_eps, param_dtype=self.param_dtype)(y)
        return _vocab_logits(self, y, word_embeddings, "decoder")


class ElectraLMHead(_Common):
    """ELECTRA's ``generator_lm_head`` (a Linear whose weight is tied to the word embeddings)."""

    @nn.compact
    def __call__(self, y: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        return _vocab_logits(self, y, word_embeddings, "kernel")


class BertLikeMaskedLM(_Common):
    """Base model under its transformers prefix plus the family's MLM head.

    Parameters: ``{bert|roberta|electra: base, cls|lm_head|generator_*: head}``, exactly the
    state-dict layout of ``{Bert,Roberta,Electra}ForMaskedLM`` (plus the pooler of the base model).

    Packed rows: ``segment_ids`` as in :class:`BertLikeModel`; ``mlm_positions`` index the packed
    row, and with ``mlm_rows`` (S,) they are (S, M): sentence s's positions in row
    ``mlm_rows[s]`` (:func:`layers.at_positions`). The pooler reads token 0 of each row.
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
        args = (c, self.dtype, self.param_dtype)
        if token_type_ids is None and input_ids is not None:
            token_type_ids = jnp.zeros_like(input_ids)
        base = BertLikeModel(*args, remat=self.remat, name=c.family)
        if encoder_output is None:
            hidden, pooled = base(input_ids, attention_mask, token_type_ids, train=train,
                                  segment_ids=segment_ids)
        else:  # the encoder ran elsewhere (chunk by chunk): only the MLM head runs
            hidden, pooled = encoder_output, None
        out = {"last_hidden_state": hidden}
        if pooled is not None:
            out["pooler_output"] = pooled
        if mlm:
            table = base.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
            at = layers.at_positions(hidden, mlm_positions, mlm_rows)
            if c.family == "bert":
                logits = BertCls(*args, name="cls")(at, table)
            elif c.family == "roberta":
                logits = RobertaLMHead(*args, name="lm_head")(at, table)
            else:
                y = Transform(*args, width=c.embedding_size, act="gelu",
                              name="generator_predictions")(at)
                logits = ElectraLMHead(*args, name="generator_lm_head")(y, table)
            out["logits"] = logits
        return out
