"""A method = which encoder outputs feed which losses with which weights.

Each method is ``fn(model, config, params, state, batch, rng) -> (loss, (metrics, enqueue))``:
``params`` are the trainable parameters being differentiated, ``state`` gives read-only access to
the momentum (EMA) and frozen copies and the queues, ``enqueue`` maps a queue name to the
``(keys, values, valid)`` to write after the update. The train step (train.py) is the same for
all; it differentiates the method, applies the optimizer, the EMA and the queue writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from softmcl_jax import losses
from softmcl_jax.models import Pretrained
from softmcl_jax.models.heads import MLPHead, gather_words, pool, scored_positions

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Model:
    """The encoder plus named heads; params are ``{"encoder": ..., "heads": {name: ...}}``."""

    pretrained: Pretrained
    heads: dict[str, MLPHead]
    pooling: str

    def init_heads(self, rng: jax.Array) -> dict[str, Any]:
        width = self.pretrained.config.hidden_size
        x = jnp.zeros((1, width), jnp.float32)
        keys = jax.random.split(rng, max(len(self.heads), 1))
        return {name: head.init(k, x)["params"]
                for (name, head), k in zip(sorted(self.heads.items()), keys, strict=False)}

    def forward(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                train: bool, rng: jax.Array | None, mlm: bool = False,
                mlm_positions: jax.Array | None = None) -> dict[str, jax.Array]:
        rngs = {"dropout": rng} if train else None
        kw = {} if mlm_positions is None else {"mlm_positions": mlm_positions}
        return self.pretrained.module.apply(
            {"params": params["encoder"]}, input_ids, attention_mask, train=train, mlm=mlm,
            rngs=rngs, **kw)

    def head(self, params: Any, name: str, x: jax.Array) -> jax.Array:
        return self.heads[name].apply({"params": params["heads"][name]}, x)

    def embed(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
              train: bool, rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """(token vectors (B, L, H), pooled sentence vectors (B, H) in fp32)."""
        hidden = self.forward(params, input_ids, attention_mask, train=train,
                              rng=rng)["last_hidden_state"]
        return hidden, pool(hidden, attention_mask, self.pooling)


def make_heads(config: ml_collections.ConfigDict, hidden_size: int) -> dict[str, MLPHead]:
    """The heads each method needs, sized from the config."""
    h = config.head
    method = config.method
    if method == "softmcl":
        return {n: MLPHead(out=h.dim, hidden=hidden_size) for n in ("sentence", "word")}
    if method in ("simcse", "softcse", "retrofit"):
        return {"projection": MLPHead(out=h.dim, hidden=hidden_size)}
    if method == "lcl":
        n = config.data.num_labels
        return {"classifier": MLPHead(out=n), "weighting": MLPHead(out=n, hidden=hidden_size)}
    raise ValueError(f"method={method!r} is not one of {sorted(METHODS)}")


def softmcl(model: Model, config, params, state, batch, rng):
    """SoftMCL: MLM + word-level and sentence-level soft-label contrast against momentum keys.

    Queries come from the online encoder on the MLM-corrupted input (one forward serves both
    MLM and contrast, and the corruption is a free augmentation); keys from the momentum encoder
    (EMA of the online parameters, no gradient) on the clean input. Candidates for each query are
    the batch's keys and the queue of past keys, with their valences.
    """
    w, lc = config.loss, config.loss
    mask, valid = batch["attention_mask"], batch["valid"]
    mlm_labels, mlm_positions, metrics = batch["mlm_labels"], None, {}
    if w.mlm > 0 and config.data.mlm_max_predictions > 0:
        # Logits at the (at most M) masked positions per row, not at all L.
        mlm_positions, mlm_labels, left_out = scored_positions(
            mlm_labels, config.data.mlm_max_predictions)
        metrics["mlm_left_out"] = left_out.sum()  # 0 unless the data were not capped at M
    out = model.forward(params, batch["mlm_input_ids"], mask, train=True, rng=rng,
                        mlm=w.mlm > 0, mlm_positions=mlm_positions)
    hidden = out["last_hidden_state"]
    ema = sg(state.ema_params)
    k_hidden = sg(model.forward(ema, batch["input_ids"], mask, train=False,
                                rng=None)["last_hidden_state"])

    # Sentence level: one valence per sentence.
    q_s = model.head(params, "sentence", pool(hidden, mask, model.pooling))
    k_s = sg(model.head(ema, "sentence", pool(k_hidden, mask, model.pooling)))
    s_valid = valid & batch["sentence_valence_mask"]
    s_val = batch["sentence_valence"]
    q = state.queues["sentence"]
    sent = losses.soft_label_contrastive(
        q_s, k_s, s_val, temperature=lc.temperature, label_temperature=lc.label_temperature,
        queue_keys=q.keys, queue_valence=q.values, valid=s_valid, queue_valid=q.valid)

    # Word level: the first W lexicon-rated tokens of each sentence.
    t_mask = batch["token_valence_mask"] & valid[:, None]
    per = config.word_level.max_words_per_sentence
    q_vec, pos, w_valid = gather_words(hidden, t_mask, per)
    k_vec = jnp.take_along_axis(k_hidden, pos[..., None], axis=1).reshape(q_vec.shape)
    w_val = jnp.take_along_axis(batch["token_valence"], pos, axis=1).reshape(-1)
    q_w = model.head(params, "word", q_vec.astype(jnp.float32))
    k_w = sg(model.head(ema, "word", k_vec.astype(jnp.float32)))
    qw = state.queues["word"]
    word = losses.soft_label_contrastive(
        q_w, k_w, w_val, temperature=lc.temperature, label_temperature=lc.label_temperature,
        queue_keys=qw.keys, queue_valence=qw.values, valid=w_valid, queue_valid=qw.valid)

    loss = w.sentence * sent + w.word * word
    metrics.update(sentence_loss=sent, word_loss=word,
                   words_per_sentence=w_valid.sum() / jnp.maximum(valid.sum(), 1))
    if w.mlm > 0:
        mlm = losses.masked_lm_loss(out["logits"], mlm_labels)
        loss = loss + w.mlm * mlm
        metrics["mlm_loss"] = mlm
    enqueue = {"sentence": (k_s, s_val, s_valid), "word": (k_w, w_val, w_valid)}
    return loss, (metrics, enqueue)


def _two_views(model: Model, config, params, batch, rng):
    """SimCSE's positives: the same sentences encoded twice with independent dropout.

    One forward over the batch stacked twice, so the two views differ only in dropout masks.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    both = jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask])
    _, pooled = model.embed(params, *both, train=True, rng=rng)
    z = model.head(params, "projection", pooled)
    return jnp.split(z, 2)


def simcse(model: Model, config, params, state, batch, rng):
    q, k = _two_views(model, config, params, batch, rng)
    loss = losses.info_nce(q, k, temperature=config.loss.temperature, valid=batch["valid"])
    return loss, ({"info_nce": loss}, {})


def softcse(model: Model, config, params, state, batch, rng):
    q, k = _two_views(model, config, params, batch, rng)
    c = config.loss
    loss = losses.soft_cse(q, k, temperature=c.temperature, mode=c.softcse_mode,
                           strength=c.softcse_strength, valid=batch["valid"])
    return loss, ({"soft_cse": loss}, {})


def retrofit(model: Model, config, params, state, batch, rng):
    """Emotion retrofitting: SupCon on a projection head + lambda * VSP against a frozen copy."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    _, emb = model.embed(params, ids, mask, train=True, rng=rng)
    _, frozen = model.embed(sg(state.frozen_params), ids, mask, train=False, rng=None)
    proj = model.head(params, "projection", emb)
    valid = batch["valid"] & (labels >= 0)
    c = config.loss
    supcon = losses.supervised_contrastive(proj, labels, temperature=c.temperature, valid=valid)
    vsp = losses.vector_space_preservation(emb, sg(frozen), valid=valid)
    loss = supcon + c.vsp_weight * vsp
    return loss, ({"supcon_loss": supcon, "vsp_loss": vsp}, {})


def lcl(model: Model, config, params, state, batch, rng):
    """LCL: classifier CE + weighting-network CE + label-aware contrast, mixed by alpha.

    The weighting network is an MLP head on the shared pooled vector (Suresh & Ong use a second
    encoder; a head keeps one backbone in memory and is what the config names).
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    _, emb = model.embed(params, ids, mask, train=True, rng=rng)
    logits = model.head(params, "classifier", emb)
    w_logits = model.head(params, "weighting", emb)
    valid = batch["valid"] & (labels >= 0)
    c = config.loss
    safe = jnp.maximum(labels, 0)
    loss = losses.lcl_objective(logits, w_logits, safe, emb, temperature=c.temperature,
                                alpha=c.alpha, valid=valid)
    acc = ((logits.argmax(-1) == labels) & valid).sum() / jnp.maximum(valid.sum(), 1)
    return loss, ({"accuracy": acc}, {})


METHODS: dict[str, Callable[..., Any]] = {
    "softmcl": softmcl, "simcse": simcse, "softcse": softcse, "retrofit": retrofit, "lcl": lcl,
}

# What each method reads from a batch (the rest of the pipeline's arrays stay on the host).
BATCH_KEYS = {
    "softmcl": ("input_ids", "attention_mask", "valid", "mlm_input_ids", "mlm_labels",
                "sentence_valence", "sentence_valence_mask", "token_valence",
                "token_valence_mask"),
    "simcse": ("input_ids", "attention_mask", "valid"),
    "softcse": ("input_ids", "attention_mask", "valid"),
    "retrofit": ("input_ids", "attention_mask", "valid", "labels"),
    "lcl": ("input_ids", "attention_mask", "valid", "labels"),
}

