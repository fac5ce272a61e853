"""``validate(config)``: every check that needs only the config, the manifests of the prepared
folders it names and the model folder's config.json (``model.max_len`` against the position
table), before anything is loaded or written. Each message names the ``config.`` field. The
objective is refused where a term's gradient reaches no online pass (``Plan.untrained``). A
term's data are checked here against the manifests of ``data.mixture`` or of
``data.source="prepared"`` (``objective.check_sources``); a source that is prepared on first use
(``data.source``, or a source entry of ``data.mixture``: :func:`mixture_entries`) is checked
once prepared, and labels against ``data.num_labels`` when the rows are read
(``data.sources.check_labels``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from numbers import Real
from typing import Any

import ml_collections

from softmcl_jax import grad_cache, objective
from softmcl_jax.cli_config import check_finite
from softmcl_jax.data import prepare as prepare_fields
from softmcl_jax.data import prepared
from softmcl_jax.data.rating_units import RATING_UNITS
from softmcl_jax.data.sources import SOURCES
from softmcl_jax.models import DTYPES, hf
from softmcl_jax.models.heads import POOLINGS


def _require(ok: bool, field: str, value: object, what: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r} {what}")


MIXTURE_EXAMPLE = ("--config.data.mixture=\"(('DIR_A', 0.5), ((('source', 'vader'),), 0.5))\" "
                   "(a prepared folder, or a source as (field, value) pairs of config.data; one "
                   "entry: \"(('DIR', 1.0),)\", with the trailing comma)")

# The config.data fields a mixture entry may set for itself: what decides one source's rows
# (prepare.DATA_FIELDS) less what every entry must share.
ENTRY_FIELDS = ("source", "path", "vader_sets", "split", "text_column", "label_column",
                "valence_column", "scale_low", "scale_high", "single_label_only", "on_bad_row",
                "max_examples")
# Data fields that stay run-wide, and why (the reason ends the refusal's message).
_RUN_WIDE = {
    **dict.fromkeys(("lexicon", "lexicon_words", "assign", "neutral_band"),
                    "every entry of a mixture is prepared with the run's own (a folder prepared "
                    "with another is refused as incompatible: prepared.check_compatible)"),
    "num_labels": "the run's classes (the width of the ce and lcl heads; every entry's labels "
                  "are checked against it)",
}


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One ``config.data.mixture`` entry: a prepared ``folder``, or the ``fields`` of
    ``config.data`` that describe a source prepared into the cache on first use."""

    folder: str | None
    fields: tuple[tuple[str, Any], ...]
    weight: float


def _entry_fields(value: Any, field: str, data: ml_collections.ConfigDict
                  ) -> tuple[tuple[str, Any], ...]:
    """A source entry's (field, value) pairs, checked; ``ValueError`` naming ``field``."""
    if isinstance(value, Mapping):
        raise ValueError(
            f"{field}: the source {dict(value)!r} is a dict; write it as (field, value) pairs, "
            f"{tuple(dict(value).items())!r}: ml_collections cannot freeze a dict held in a "
            "tuple (FrozenConfigDict), and one form keeps the run's config.json comparable on "
            "resume")
    pairs = []
    for pair in value:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"{field}: {pair!r} is not a (field, value) pair of config.data: "
                             f"{MIXTURE_EXAMPLE}")
        pairs.append((pair[0], tuple(pair[1]) if isinstance(pair[1], list) else pair[1]))
    names = [k for k, _ in pairs]
    for k in names:
        where = f"{field} sets config.data.{k}"
        if names.count(k) > 1:
            raise ValueError(f"{where} twice")
        if k in _RUN_WIDE:
            raise ValueError(f"{where}: run-wide, not per entry: {_RUN_WIDE[k]}. Set "
                             f"config.data.{k} instead")
        if k in data and k not in ENTRY_FIELDS:
            raise ValueError(f"{where}: run-wide, not per entry (it acts on the whole run's "
                             f"batches). An entry may set {', '.join(ENTRY_FIELDS)}")
        if k not in data:
            raise ValueError(f"{where}: no such field of config.data; an entry may set "
                             f"{', '.join(ENTRY_FIELDS)}")
    fields = dict(pairs)
    if "source" not in fields:
        raise ValueError(f"{field}={tuple(pairs)!r} names no source: start with ('source', "
                         f"NAME), NAME one of {SOURCES}")
    if fields["source"] == "prepared":
        raise ValueError(f"{field} sets config.data.source='prepared': give the prepared folder "
                         "itself as the entry, ('DIR', weight)")
    if fields["source"] not in SOURCES:
        raise ValueError(f"{field} sets config.data.source={fields['source']!r}: not one of "
                         f"{SOURCES}")
    for k, v in pairs:
        try:
            prepare_fields.source_data(data, ((k, v),))
        except TypeError as e:  # ConfigDict refuses a value of another type than the field's
            raise ValueError(f"{field} sets config.data.{k}={v!r}, not of the field's type "
                             f"({e})") from None
    entry = prepare_fields.source_data(data, pairs)
    low, high = entry.scale_low, entry.scale_high
    if (low is None) != (high is None) or (low is not None and not low < high):
        raise ValueError(f"{field}: config.data.scale_low={low!r} and scale_high={high!r}: set "
                         "both (low < high, the file's valence scale) or neither")
    if entry.max_examples < 0:
        raise ValueError(f"{field} sets config.data.max_examples={entry.max_examples}: must be "
                         ">= 0 (0 = all)")
    return tuple(pairs)


def mixture_entries(mixture: Any, data: ml_collections.ConfigDict) -> tuple[MixtureEntry, ...]:
    """``config.data.mixture`` as :class:`MixtureEntry` s; ``ValueError`` naming the entry.

    An entry is ``(what, weight)``: ``what`` is a prepared folder (``"DIR"``) or a source given
    as (field, value) pairs of ``config.data`` (``data``, the run's, which they override for that
    entry alone), e.g. ``(("source", "goemotions"), ("path", "train.tsv"))``."""
    if not isinstance(mixture, (tuple, list)):
        raise ValueError(f"config.data.mixture={mixture!r} is not a tuple of (folder or source, "
                         f"weight) pairs: {MIXTURE_EXAMPLE}")
    entries = []
    for i, entry in enumerate(mixture):
        field = f"config.data.mixture[{i}]"
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2
                and ((isinstance(entry[0], str) and entry[0])
                     or isinstance(entry[0], (tuple, list, Mapping)))
                and isinstance(entry[1], Real) and not isinstance(entry[1], bool)):
            raise ValueError(f"{field}={entry!r} is not a ('DIR', weight) pair of a prepared "
                             "folder and a number, nor a (((field, value), ...), weight) pair of "
                             f"a source and a number: {MIXTURE_EXAMPLE}")
        what, weight = entry
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{field}={entry!r}: the weight {weight!r} must be finite and > 0 "
                             "(leave an entry out rather than weigh it 0)")
        if isinstance(what, str):
            entries.append(MixtureEntry(what, (), float(weight)))
        else:
            fields = _entry_fields(what, field, data)
            entries.append(MixtureEntry(None, fields, float(weight)))
    return tuple(entries)


def _manifest(path: str, field: str) -> Mapping[str, Any]:
    """The manifest of the prepared folder ``path``; a missing or unreadable one is a
    ``ValueError`` naming the config field that gave the folder."""
    try:
        return prepared.read_manifest(path)
    except prepared.PreparedError as e:
        raise ValueError(f"{field}: {e}") from e


def _check_max_len(name_or_path: str, max_len: int) -> None:
    """Refuse a ``model.max_len`` beyond the encoder's position table (``hf.max_positions``),
    read from the model folder's config.json: past it the positions index outside the table and
    the first loss is NaN. A hub id is checked when the model is built (``Pretrained``)."""
    try:
        folder = hf.local_folder(hf.resolve_name(name_or_path))
        if folder is None:
            return
        hf_config = hf.load_config(folder)
    except hf.CheckpointError as e:  # no such folder, no or a bad config.json: before any write
        raise hf.CheckpointError(f"config.model.name_or_path={name_or_path!r}: {e}") from e
    limit = hf.max_positions(hf_config)
    if limit is not None and max_len > limit:
        raise ValueError(
            f"config.model.max_len={max_len} is above the {limit} positions of the encoder's "
            f"position table ({hf.positions_note(hf_config)} in "
            f"{os.path.join(folder, hf.CONFIG_FILE)}): set config.model.max_len <= {limit}")


def _check_gradients(the_plan: objective.Plan, config: ml_collections.ConfigDict) -> None:
    """Refuse the terms from which no gradient reaches the online parameters
    (``Plan.untrained``), naming each with its passes: such a term only adds a constant, and an
    objective of such terms trains nothing while every step reports grad_norm 0."""
    dead = the_plan.untrained()
    if not dead:
        return
    grads = dict(the_plan.grads)
    parts = []
    for term in dead:
        knobs = config.objective[term]
        named = [k for k in objective.PASS_KNOBS if k in knobs]
        through = {f.rsplit(".", 1)[1] for f, _ in grads[term]}
        fixed = [k for k in named if k not in through]
        note = (f" ({' and '.join(fixed)}: a fixed target, no gradient flows through it)"
                if fixed else "")
        passes = ", ".join(f"{k}={knobs[k]!r}" for k in named)
        parts.append(f"config.objective.{term}" + (f": {passes}{note}" if named else ""))
    raise ValueError(
        f"{'; '.join(parts)}: no gradient reaches the online encoder (only online/* passes "
        "train; the ema and frozen copies, heads included, are constants of the step). Read an "
        f"online pass there (e.g. 'online/clean'), or set the weight of "
        f"{' and '.join(f'config.objective.{t}' for t in dead)} to 0")


def batch_shards(config: ml_collections.ConfigDict) -> int:
    """The devices the batch is split over (``sharding.make_mesh``: ``mesh.data`` x
    ``mesh.fsdp``, -1 taking every device of the job)."""
    if config.mesh.data == -1:
        import jax

        return jax.device_count()
    return config.mesh.data * config.mesh.fsdp


def validate(config: ml_collections.ConfigDict) -> objective.Plan:
    """Check ``config``; returns its objective plan. Raises ``ValueError`` naming the field."""
    c = config
    # nan passes every comparison below (nan > 0 is False, but so is nan < 0); the mixture's
    # weights are checked with its entries.
    check_finite(c, skip=("data.mixture",))
    for field in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints"):
        _require(c[field] > 0, field, c[field], "must be > 0")
    _require(c.max_skipped_steps >= 0, "max_skipped_steps", c.max_skipped_steps, "must be >= 0")
    o = c.optimizer
    _require(o.learning_rate > 0, "optimizer.learning_rate", o.learning_rate,
             "must be > 0 (a negative rate is gradient ascent)")
    _require(o.end_learning_rate >= 0, "optimizer.end_learning_rate", o.end_learning_rate,
             "must be >= 0")
    _require(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "must be >= 0")
    _require(o.decay in ("cosine", "linear"), "optimizer.decay", o.decay,
             "must be 'cosine' or 'linear'")
    _require(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "must be >= 0")
    _require(o.clip_norm > 0, "optimizer.clip_norm", o.clip_norm, "must be > 0")
    _require(o.eps > 0, "optimizer.eps", o.eps, "must be > 0")
    _require(o.grad_accum_steps >= 1, "optimizer.grad_accum_steps", o.grad_accum_steps,
             "must be >= 1")
    for b in ("b1", "b2"):
        _require(0 <= o[b] < 1, f"optimizer.{b}", o[b], "must be in [0, 1)")

    m = c.model
    _require(m.dtype in DTYPES, "model.dtype", m.dtype, f"is not one of {sorted(DTYPES)}")
    _require(m.pooling in POOLINGS, "model.pooling", m.pooling, f"is not one of {POOLINGS}")
    _require(m.max_len >= 2, "model.max_len", m.max_len, "must be >= 2 (special tokens)")
    _check_max_len(m.name_or_path, m.max_len)
    if m.dropout is not None:
        _require(0 <= m.dropout < 1, "model.dropout", m.dropout,
                 "must be in [0, 1) (None keeps the checkpoint's rates)")
    grad_cache.check(c.grad_cache.chunk, c.batch_size, batch_shards(c))
    _require(c.head.dim >= 1, "head.dim", c.head.dim, "must be >= 1")
    _require(0 <= c.momentum.decay < 1, "momentum.decay", c.momentum.decay, "must be in [0, 1)")

    d = c.data
    _require(d.source in (*SOURCES, "prepared"), "data.source", d.source,
             f"is not one of {(*SOURCES, 'prepared')}")
    mixture = mixture_entries(d.mixture, d)
    if mixture and d.source == "prepared" and d.path:
        raise ValueError(f"config.data.mixture={tuple(d.mixture)!r} and config.data.source="
                         f"'prepared' with config.data.path={d.path!r} are alternatives: give the "
                         "folder as a mixture entry, or set config.data.mixture=()")
    if not mixture and d.source == "prepared":
        _require(bool(d.path), "data.path", d.path,
                 "is empty: config.data.source='prepared' reads the prepared folder there")
    _require(0 <= d.mlm_rate < 1, "data.mlm_rate", d.mlm_rate, "must be in [0, 1)")
    _require(d.mlm_max_predictions >= 0, "data.mlm_max_predictions", d.mlm_max_predictions,
             "must be >= 0")
    _require(d.num_labels >= 0, "data.num_labels", d.num_labels, "must be >= 0 (0 = none)")
    _require(d.max_examples >= 0, "data.max_examples", d.max_examples, "must be >= 0 (0 = all)")
    _require(d.rating_unit in RATING_UNITS, "data.rating_unit", d.rating_unit,
             f"is not one of {RATING_UNITS}")
    if d.packing and d.bucket_lengths:
        raise ValueError("config.data.packing and config.data.bucket_lengths are alternatives: "
                         "set one (packing is on by default: bucket_lengths needs "
                         "--config.data.packing=False)")
    _require(d.packing_rows >= 0, "data.packing_rows", d.packing_rows, "must be >= 0 (0 = chosen)")
    if d.lexicon_words and d.lexicon in ("none", ""):
        raise ValueError(f"config.data.lexicon_words={d.lexicon_words!r} restricts a lexicon, but "
                         "config.data.lexicon='none': set the lexicon too")
    quantiles = tuple(d.packing_quantiles)
    _require(len(quantiles) > 0 and all(0 < q <= 1 for q in quantiles), "data.packing_quantiles",
             quantiles, "must be one or more values in (0, 1]")
    buckets = tuple(d.bucket_lengths)
    _require(all(0 < b <= m.max_len for b in buckets), "data.bucket_lengths", buckets,
             f"must lie in (0, config.model.max_len={m.max_len}]")
    low, high = d.scale_low, d.scale_high
    if (low is None) != (high is None):
        raise ValueError(f"config.data.scale_low={low!r} and config.data.scale_high={high!r}: "
                         "set both (the file's valence scale) or neither")
    if low is not None:
        _require(low < high, "data.scale_low", low, f"must be < config.data.scale_high={high}")

    the_plan = objective.plan(c)
    _check_gradients(the_plan, c)
    for term, need in the_plan.data:
        if need == "mlm":
            _require(d.mlm_rate > 0, "data.mlm_rate", d.mlm_rate,
                     f"must be > 0: config.objective.{term} needs MLM-corrupted input")
    # The prepared folders named here: their manifests say what data they hold, so a term
    # without its data is refused now, not after loading. A mixture with a source entry is
    # checked once its sources are prepared (loop.build_pipeline): a term may find its data in
    # that source alone.
    if mixture and all(e.folder is not None for e in mixture):
        objective.check_sources(
            the_plan, [(e.folder, _manifest(e.folder, f"config.data.mixture[{i}]"))
                       for i, e in enumerate(mixture)], c)
    elif mixture:
        for i, e in enumerate(mixture):
            if e.folder is not None:  # a folder that is not there is refused now all the same
                _manifest(e.folder, f"config.data.mixture[{i}]")
    elif d.source == "prepared":
        objective.check_sources(the_plan, [(d.path, _manifest(d.path, "config.data.path"))], c)
    return the_plan
