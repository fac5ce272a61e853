"""The registry of loss terms: what each term needs, and its loss over the step's encoder passes.

A term is two functions of its knobs (``config.objective.<name>``):

* ``needs(name, knobs, config) -> Needs``: the encoder passes it reads (and those its loss is
  differentiated through), the heads (name and kind), the batch arrays, the queue it keeps, and
  what the data must provide. It raises ``ValueError`` naming the ``config.`` field for knobs it
  cannot use. ``objective.plan`` unions these over the active terms; nothing else decides what a
  run builds.
* ``loss(ctx, knobs) -> TermOut``: the unweighted value, extra metrics, the ``(keys, values,
  valid)`` to write into its queue after the update (None without a queue), and the batch rows
  the value read (``rows``, logged as ``rows/<term>``; a queue's ``valid`` keys come from those
  rows only). ``ctx`` is ``objective.Context``: the step's passes, each run once however many
  terms read it.

A new term is a loss in ``losses.py`` plus one ``TERMS`` entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from softmcl_jax import losses
from softmcl_jax.data.sources import AFFECT_DIMS
from softmcl_jax.models.heads import gather_words

sg = jax.lax.stop_gradient

# Head kinds: a contrastive projection (Dense(H) -> GELU -> Dense(head.dim)), a linear classifier
# over data.num_labels, LCL's weighting network (an MLP over data.num_labels) and a linear
# regressor (Dense(1): one rating per sentence, the regression term's).
HEAD_KINDS = ("projection", "classifier", "weighting", "regressor")


@dataclasses.dataclass(frozen=True)
class QueueNeed:
    """A ring buffer of ``size`` past keys with a value of ``value_shape`` each."""

    size: int
    per_step: int  # keys written per step: the size must be a multiple of it
    head: str  # the keys' head ("" = pooled encoder output: the encoder's width)
    value_shape: tuple[int, ...]
    value_dtype: str


@dataclasses.dataclass(frozen=True)
class Needs:
    passes: tuple[str, ...] = ()  # pass references, "<copy>/<input>[/<view>]"
    # The passes the loss is differentiated through (a subset of ``passes``): those not given
    # to stop_gradient by the loss. Only an online pass among them trains anything (the
    # Context gives the EMA and frozen copies, heads included, to stop_gradient), so
    # config_check.validate refuses a term with none: it would train nothing. A new term must
    # list them; empty means no gradient at all.
    grads: tuple[str, ...] = ()
    heads: tuple[tuple[str, str], ...] = ()  # (head name, kind)
    batch: tuple[str, ...] = ()  # batch arrays read besides input_ids/attention_mask/valid
    queue: QueueNeed | None = None
    # What the data must provide, checked against the prepared folders' manifests before
    # anything is read (objective.check_sources): "labels", "mlm", "sentence:<dim>" (a
    # sentence-level rating) or "token:<dim>" (lexicon words in the text).
    data: tuple[str, ...] = ()
    mlm_logits: bool = False  # the online/masked pass computes MLM logits


class TermOut(NamedTuple):
    """What a term computed in one step."""

    value: jax.Array  # the unweighted loss
    metrics: dict[str, jax.Array]  # extra metrics, by their full name
    enqueue: tuple[jax.Array, jax.Array, jax.Array] | None  # (keys, values, valid) or None
    # (B,) bool: the batch rows the loss read. Every valid row for the unsupervised terms; the
    # valid rows with the supervision the term reads (every rating dimension it reads, a word it
    # used, a class) for the others. objective.loss logs their count as rows/<term>.
    rows: jax.Array


@dataclasses.dataclass(frozen=True)
class Term:
    needs: Callable[[str, ml_collections.ConfigDict, ml_collections.ConfigDict], Needs]
    loss: Callable[[Any, ml_collections.ConfigDict], TermOut]
    doc: str  # one line for the README's table and the start-up log


def _field(name: str, knob: str) -> str:
    return f"config.objective.{name}.{knob}"


def _positive(name: str, knobs: ml_collections.ConfigDict, *keys: str) -> None:
    for k in keys:
        if not knobs[k] > 0:
            raise ValueError(f"{_field(name, k)}={knobs[k]!r} must be > 0")


def _head(name: str, knobs: ml_collections.ConfigDict, key: str = "head"
          ) -> tuple[tuple[str, str], ...]:
    return ((knobs[key], "projection"),) if knobs[key] else ()


def _labels(name: str, knobs: ml_collections.ConfigDict) -> tuple[str, ...]:
    dims, weights = tuple(knobs.labels), tuple(knobs.label_weights)
    if not dims or len(set(dims)) != len(dims) or not set(dims) <= set(AFFECT_DIMS):
        raise ValueError(f"{_field(name, 'labels')}={dims!r}: give distinct dimensions among "
                         f"{AFFECT_DIMS}")
    if len(weights) != len(dims) or any(w < 0 for w in weights) or not any(weights):
        raise ValueError(f"{_field(name, 'label_weights')}={weights!r}: one weight >= 0 per "
                         f"label dimension {dims!r}, not all 0")
    return dims


def _queue(name: str, knobs: ml_collections.ConfigDict, per_step: int, value_shape, dtype
           ) -> QueueNeed | None:
    size = knobs.queue_size
    if size < 0 or size % per_step:
        raise ValueError(f"{_field(name, 'queue_size')}={size} must be 0 or a positive multiple "
                         f"of the keys written per step ({per_step}), so that the ring buffer "
                         "wraps exactly")
    return QueueNeed(size, per_step, knobs.get("head", ""), value_shape, dtype) if size else None


def _queue_args(ctx: Any, name: str, values_key: str | None = None) -> dict[str, Any]:
    """The term's queue as loss keyword arguments; {} without one."""
    q = ctx.queues.get(name)
    if q is None:
        return {}
    args = {"queue_keys": q.keys, "queue_valid": q.valid}
    if values_key:
        args[values_key] = q.values
    return args


# ----------------------------------------------------------------------------------- MLM


def _mlm_needs(name, knobs, config) -> Needs:
    return Needs(passes=("online/masked",), grads=("online/masked",),
                 batch=("mlm_input_ids", "mlm_labels"), data=("mlm",), mlm_logits=True)


def _mlm_loss(ctx, knobs) -> TermOut:
    metrics = {}
    if ctx.mlm_left_out is not None:
        metrics["mlm_left_out"] = ctx.mlm_left_out.sum()  # 0 unless the data were not capped
    # The mean over scored tokens of the per-token cross-entropy (0 where not scored), which
    # the context computes at once or, with gradient caching, chunk by chunk.
    scored = ctx.mlm_labels != -100
    value = jnp.sum(ctx.mlm_token_loss) / jnp.maximum(jnp.sum(scored), 1)
    return TermOut(value, metrics, None, ctx.valid)


# ------------------------------------------------------------------- SoftMCL soft labels


def _soft_needs(name, knobs, config, *, word: bool) -> Needs:
    _positive(name, knobs, "temperature", "label_temperature")
    dims = _labels(name, knobs)
    per_step = config.batch_size
    if word:
        if knobs.max_words_per_sentence < 1:
            raise ValueError(f"{_field(name, 'max_words_per_sentence')} must be >= 1")
        per_step *= knobs.max_words_per_sentence
        batch = ("token_valence_mask", *(f"token_{d}" for d in dims))
    else:
        batch = tuple(f"sentence_{d}" for d in dims)
    level = "token" if word else "sentence"
    # The keys are targets (stop_gradient in the loss), whatever copy they come from.
    return Needs(passes=(knobs.query, knobs.key), grads=(knobs.query,),
                 heads=_head(name, knobs), batch=batch,
                 queue=_queue(name, knobs, per_step, (len(dims),), "float32"),
                 data=tuple(f"{level}:{d}" for d in dims))


def _label_matrix(ctx, level: str, dims) -> tuple[jax.Array, jax.Array]:
    """(labels (..., D) float32, present (...)): a dimension is absent where it is < 0."""
    v = jnp.stack([ctx.batch[f"{level}_{d}"].astype(jnp.float32) for d in dims], axis=-1)
    return v, jnp.all(v >= 0, axis=-1)


def _soft_sentence_loss(ctx, knobs) -> TermOut:
    dims = tuple(knobs.labels)
    labels, present = _label_matrix(ctx, "sentence", dims)
    valid = ctx.valid & present
    q = ctx.projected(knobs.query, knobs.head)
    k = sg(ctx.projected(knobs.key, knobs.head))
    value = losses.soft_label_contrastive(
        q, k, labels, temperature=knobs.temperature, label_temperature=knobs.label_temperature,
        label_weights=tuple(knobs.label_weights), valid=valid,
        **_queue_args(ctx, "soft_sentence", "queue_valence"))
    return TermOut(value, {}, (k, labels, valid), valid)


def _rows_with_words(w_valid: jax.Array, rows: int) -> jax.Array:
    """(B,) bool: the rows with at least one of the (B * W,) gathered words valid."""
    return w_valid.reshape(rows, -1).any(axis=-1)


def _word_vectors(ctx, token_mask: jax.Array, of: str, to: str, per: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The first ``per`` flagged tokens' vectors of pass ``of`` (B * W, H), those of pass ``to``
    at the same positions (stop_gradient), the positions (B, W) and validity (B * W,)."""
    vec, pos, valid = gather_words(ctx.hidden(of), token_mask, per)
    ref = jnp.take_along_axis(sg(ctx.hidden(to)), pos[..., None], axis=1).reshape(vec.shape)
    return vec, ref, pos, valid


def _soft_word_loss(ctx, knobs) -> TermOut:
    """The first W lexicon-rated tokens of each sentence; key vectors at the same positions."""
    dims = tuple(knobs.labels)
    # Words are found through the valence lexicon (token_valence_mask); token_valence is 0, not
    # < 0, where absent, while the other dimensions are -1 where the word has no rating.
    token_mask = ctx.batch["token_valence_mask"] & ctx.valid[:, None]
    columns = []
    for d in dims:
        columns.append(ctx.batch[f"token_{d}"].astype(jnp.float32))
        if d != "valence":
            token_mask = token_mask & (columns[-1] >= 0)
    labels = jnp.stack(columns, axis=-1)  # (B, L, D)
    q_vec, k_vec, pos, w_valid = _word_vectors(ctx, token_mask, knobs.query, knobs.key,
                                               knobs.max_words_per_sentence)
    w_labels = jnp.take_along_axis(labels, pos[..., None], axis=1).reshape(-1, len(dims))
    q = ctx.head(knobs.query, knobs.head, q_vec.astype(jnp.float32))
    k = sg(ctx.head(knobs.key, knobs.head, k_vec.astype(jnp.float32)))
    value = losses.soft_label_contrastive(
        q, k, w_labels, temperature=knobs.temperature, label_temperature=knobs.label_temperature,
        label_weights=tuple(knobs.label_weights), valid=w_valid,
        **_queue_args(ctx, "soft_word", "queue_valence"))
    words = w_valid.sum() / jnp.maximum(ctx.valid.sum(), 1)
    return TermOut(value, {"words_per_sentence": words}, (k, w_labels, w_valid),
                   _rows_with_words(w_valid, ctx.valid.shape[0]))


# ------------------------------------------------------------------ InfoNCE and SoftCSE


def _contrast_needs(name, knobs, config) -> Needs:
    _positive(name, knobs, "temperature")
    if knobs.query == knobs.key:
        raise ValueError(f"{_field(name, 'key')}={knobs.key!r} is the query itself: use a second "
                         "dropout view (\"online/clean/2\") or another copy (\"ema/clean\")")
    if name == "softcse":
        if knobs.mode not in ("weight", "temperature"):
            raise ValueError(f"{_field(name, 'mode')}={knobs.mode!r} is not 'weight' or "
                             "'temperature'")
        if knobs.strength < 0:
            raise ValueError(f"{_field(name, 'strength')}={knobs.strength} must be >= 0")
    # An online key is differentiated through too (_pair), like SimCSE's second view.
    return Needs(passes=(knobs.query, knobs.key), grads=(knobs.query, knobs.key),
                 heads=_head(name, knobs),
                 queue=_queue(name, knobs, config.batch_size, (), "float32"))


def _pair(ctx, knobs) -> tuple[jax.Array, jax.Array]:
    """Queries and keys; keys from a copy other than the online one carry no gradient."""
    k = ctx.projected(knobs.key, knobs.head)
    return ctx.projected(knobs.query, knobs.head), k if ctx.trains(knobs.key) else sg(k)


def _enqueue_keys(ctx, k) -> tuple[jax.Array, jax.Array, jax.Array]:
    return sg(k), jnp.zeros(k.shape[:1], jnp.float32), ctx.valid


def _infonce_loss(ctx, knobs) -> TermOut:
    q, k = _pair(ctx, knobs)
    value = losses.info_nce(q, k, temperature=knobs.temperature, valid=ctx.valid,
                            **_queue_args(ctx, "infonce"))
    return TermOut(value, {}, _enqueue_keys(ctx, k), ctx.valid)


def _softcse_loss(ctx, knobs) -> TermOut:
    q, k = _pair(ctx, knobs)
    value = losses.soft_cse(q, k, temperature=knobs.temperature, mode=knobs.mode,
                            strength=knobs.strength, valid=ctx.valid,
                            **_queue_args(ctx, "softcse"))
    return TermOut(value, {}, _enqueue_keys(ctx, k), ctx.valid)


# ------------------------------------------------------------- labelled: SupCon, LCL, CE


def _labelled(ctx) -> tuple[jax.Array, jax.Array]:
    """(labels clipped to >= 0, valid rows that have a label)."""
    labels = ctx.batch["labels"]
    return jnp.maximum(labels, 0), ctx.valid & (labels >= 0)


def _supcon_needs(name, knobs, config) -> Needs:
    _positive(name, knobs, "temperature")
    return Needs(passes=(knobs.of,), grads=(knobs.of,), heads=_head(name, knobs),
                 batch=("labels",), data=("labels",))


def _supcon_loss(ctx, knobs) -> TermOut:
    labels, valid = _labelled(ctx)
    value = losses.supervised_contrastive(ctx.projected(knobs.of, knobs.head), labels,
                                          temperature=knobs.temperature, valid=valid)
    return TermOut(value, {}, None, valid)


def _vsp_needs(name, knobs, config) -> Needs:
    if knobs.mode not in ("pairwise", "pointwise"):
        raise ValueError(f"{_field(name, 'mode')}={knobs.mode!r} is not 'pairwise' or "
                         "'pointwise'")
    if knobs.of == knobs.to:
        raise ValueError(f"{_field(name, 'to')}={knobs.to!r} is the same pass as "
                         f"{_field(name, 'of')}: nothing to preserve against")
    # `to` is the fixed reference (stop_gradient in the loss), even an online one.
    return Needs(passes=(knobs.of, knobs.to), grads=(knobs.of,))


def _vsp_loss(ctx, knobs) -> TermOut:
    value = losses.vector_space_preservation(ctx.pooled(knobs.of), sg(ctx.pooled(knobs.to)),
                                             valid=ctx.valid, mode=knobs.mode)
    return TermOut(value, {}, None, ctx.valid)


def _vsp_word_needs(name, knobs, config) -> Needs:
    if knobs.max_words_per_sentence < 1:
        raise ValueError(f"{_field(name, 'max_words_per_sentence')} must be >= 1")
    return dataclasses.replace(_vsp_needs(name, knobs, config), batch=("token_valence_mask",),
                               data=("token:valence",))


def _vsp_word_loss(ctx, knobs) -> TermOut:
    """VSP over the token vectors of the words soft_word contrasts (the first W lexicon words of
    each sentence), the reference vectors taken at the same positions of the ``to`` pass: the
    word level is where SoftMCL's word term moves the space, so that is where it is held."""
    token_mask = ctx.batch["token_valence_mask"] & ctx.valid[:, None]
    vec, ref, _, w_valid = _word_vectors(ctx, token_mask, knobs.of, knobs.to,
                                         knobs.max_words_per_sentence)
    value = losses.vector_space_preservation(vec.astype(jnp.float32), ref.astype(jnp.float32),
                                             valid=w_valid, mode=knobs.mode)
    return TermOut(value, {}, None, _rows_with_words(w_valid, ctx.valid.shape[0]))


def _classes(name: str, config) -> None:
    if config.data.num_labels < 2:
        raise ValueError(f"config.objective.{name} needs classes: config.data.num_labels="
                         f"{config.data.num_labels} must be >= 2")


def _lcl_needs(name, knobs, config) -> Needs:
    _positive(name, knobs, "temperature")
    _classes(name, config)
    if not knobs.weighting_head:
        raise ValueError(f"{_field(name, 'weighting_head')} is empty: LCL weighs negatives by "
                         "a head's class probabilities")
    if knobs.head == knobs.weighting_head:
        raise ValueError(f"{_field(name, 'head')}={knobs.head!r} is the weighting head: give the "
                         "contrasted vectors a projection head of another name, or '' (the "
                         "pooled vectors)")
    return Needs(passes=(knobs.of,), grads=(knobs.of,),
                 heads=(*_head(name, knobs), (knobs.weighting_head, "weighting")),
                 batch=("labels",), data=("labels",))


def _lcl_loss(ctx, knobs) -> TermOut:
    labels, valid = _labelled(ctx)
    emb = ctx.pooled(knobs.of)
    class_weights = losses.class_probabilities(
        ctx.head(knobs.of, knobs.weighting_head, emb), valid)
    if knobs.detach_class_weights:
        class_weights = sg(class_weights)
    # The contrasted vectors: the pooled ones (the paper's), or a projection head's of them.
    features = ctx.projected(knobs.of, knobs.head) if knobs.head else emb
    value = losses.label_aware_contrastive(features, labels, class_weights,
                                           temperature=knobs.temperature, valid=valid)
    return TermOut(value, {}, None, valid)


def _ce_needs(kind: str):
    def needs(name, knobs, config) -> Needs:
        _classes(name, config)
        if not knobs.head:
            raise ValueError(f"{_field(name, 'head')} is empty: a cross-entropy needs a head")
        return Needs(passes=(knobs.of,), grads=(knobs.of,), heads=((knobs.head, kind),),
                     batch=("labels",), data=("labels",))
    return needs


def _ce_loss(ctx, knobs) -> TermOut:
    labels, valid = _labelled(ctx)
    logits = ctx.projected(knobs.of, knobs.head)
    value = losses.classifier_cross_entropy(logits, labels, valid=valid)
    hits = (logits.argmax(-1) == labels) & valid
    return TermOut(value, {f"accuracy/{knobs.head}": hits.sum() / jnp.maximum(valid.sum(), 1)},
                   None, valid)


# -------------------------------------------------------------- regression (fine-tuning)


def _regression_needs(name, knobs, config) -> Needs:
    if knobs.target not in AFFECT_DIMS:
        raise ValueError(f"{_field(name, 'target')}={knobs.target!r} is not one of {AFFECT_DIMS}: "
                         "the sentence rating the head regresses on")
    if not knobs.head:
        raise ValueError(f"{_field(name, 'head')} is empty: a regression needs a head")
    return Needs(passes=(knobs.of,), grads=(knobs.of,), heads=((knobs.head, "regressor"),),
                 batch=(f"sentence_{knobs.target}",), data=(f"sentence:{knobs.target}",))


def _regression_loss(ctx, knobs) -> TermOut:
    """Squared error of the regressor head on the pooled vector against the sentence rating,
    over the valid rows that have one (an absent rating is < 0)."""
    target = ctx.batch[f"sentence_{knobs.target}"].astype(jnp.float32)
    valid = ctx.valid & (target >= 0)
    prediction = ctx.projected(knobs.of, knobs.head)[:, 0]
    value = losses.regression_squared_error(prediction, target, valid=valid)
    return TermOut(value, {}, None, valid)


# Registry order is summation order: loss = ((w1 * l1) + w2 * l2) + ...
TERMS: dict[str, Term] = {
    "soft_sentence": Term(
        lambda n, k, c: _soft_needs(n, k, c, word=False), _soft_sentence_loss,
        "SoftMCL sentence level: soft targets from affect-label distances over batch + queue"),
    "soft_word": Term(
        lambda n, k, c: _soft_needs(n, k, c, word=True), _soft_word_loss,
        "SoftMCL word level: the same over lexicon words' token vectors"),
    "mlm": Term(_mlm_needs, _mlm_loss, "masked-LM cross-entropy on the MLM-corrupted input"),
    "infonce": Term(_contrast_needs, _infonce_loss,
                    "SimCSE InfoNCE: the key of the same sentence is the positive"),
    "softcse": Term(_contrast_needs, _softcse_loss,
                    "SoftCSE: InfoNCE, negatives weighted by their similarity to the anchor"),
    "supcon": Term(_supcon_needs, _supcon_loss, "SupCon over class labels"),
    "vsp": Term(_vsp_needs, _vsp_loss,
                "vector-space preservation: pairwise cosines (or vectors) of `of` kept to `to`"),
    "vsp_word": Term(_vsp_word_needs, _vsp_word_loss,
                     "the same over lexicon words' token vectors (the words soft_word reads)"),
    "lcl": Term(_lcl_needs, _lcl_loss,
                "LCL: label-aware contrast, negatives weighted by the weighting head"),
    "ce": Term(_ce_needs("classifier"), _ce_loss, "classifier cross-entropy"),
    "weighting_ce": Term(_ce_needs("weighting"), _ce_loss,
                         "cross-entropy of LCL's weighting network"),
    "regression": Term(_regression_needs, _regression_loss,
                       "squared error of a linear regressor head against a sentence rating"),
}
