"""The objective as data: ``config.objective`` -> a :class:`Plan` -> one loss in the train step.

``plan(config)`` reads the terms with ``weight > 0`` and derives, from them alone, everything a
run builds: the encoder passes (parameter copy x input x train flag, with the number of dropout
views), the heads, whether a momentum (EMA) copy and a frozen copy exist, the queues and their
sizes, and the batch arrays the pipeline must produce. The state, the pipeline, the loop and the
checkpoint read only the plan.

In the step, :func:`loss` runs each planned pass once (:class:`Context`), evaluates every term
on them (``terms.TERMS``) and returns ``sum_t weight_t * loss_t`` with the metrics ``loss/<t>``
(unweighted) and ``rows/<t>`` (the batch rows the term read), and the keys to enqueue.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from softmcl_jax import grad_cache, losses, sharding
from softmcl_jax.model import Model
from softmcl_jax.models import Pretrained, layers
from softmcl_jax.models.heads import MLPHead, scored_positions
from softmcl_jax.terms import TERMS, QueueNeed

sg = jax.lax.stop_gradient

COPIES = ("online", "ema", "frozen")  # trained; EMA of the online params; the base encoder
INPUTS = ("clean", "masked")  # input_ids; the MLM-corrupted mlm_input_ids
ALWAYS = ("input_ids", "attention_mask", "valid")
# With data.packing the encoder reads packed rows instead of input_ids / mlm_input_ids, and the
# sentence-level layout (B, L) is rebuilt from each sentence's row and start.
PACKED = {"input_ids": "packed_input_ids", "mlm_input_ids": "packed_mlm_input_ids",
          "token_type_ids": "packed_token_type_ids"}
# Text pairs (config.data.pair_column): every pass also reads the tokens' segments.
PAIR_KEY = "token_type_ids"
PACKING_KEYS = ("segment_ids", "sentence_row", "sentence_start")


@dataclasses.dataclass(frozen=True)
class Pass:
    """One encoder forward per step: a parameter copy on an input, ``views`` dropout views stacked
    along the batch (SimCSE's positives), with MLM logits if a term asks for them."""

    copy: str
    input: str
    views: int = 1
    mlm_logits: bool = False

    @property
    def name(self) -> str:
        return f"{self.copy}/{self.input}"

    @property
    def train(self) -> bool:
        return self.copy == "online"  # dropout on; the other copies give no gradient


def parse_pass(ref: str, field: str) -> tuple[str, str, int]:
    """``"<copy>/<input>[/<view>]"`` -> (copy, input, view); errors name the config field."""
    parts = str(ref).split("/")
    ok = len(parts) in (2, 3) and parts[0] in COPIES and parts[1] in INPUTS
    view = parts[2] if len(parts) == 3 else "1"
    if not ok or view not in ("1", "2"):
        raise ValueError(f"{field}={ref!r} is not a pass '<copy>/<input>[/<view>]' with copy in "
                         f"{COPIES}, input in {INPUTS} and view 1 or 2")
    if view == "2" and parts[0] != "online":
        raise ValueError(f"{field}={ref!r}: only the online copy has dropout, so a second view "
                         "of another copy would equal the first")
    return parts[0], parts[1], int(view)


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    name: str  # the term that keeps it
    size: int
    per_step: int
    head: str
    value_shape: tuple[int, ...]
    value_dtype: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the active terms need; see the module docstring."""

    weights: tuple[tuple[str, float], ...]  # (term, weight at step 0), in registry order
    weight_ends: tuple[tuple[str, float], ...]  # (term, weight at total_steps), scheduled only
    passes: tuple[Pass, ...]
    heads: tuple[tuple[str, str], ...]  # (name, kind), sorted by name
    ema: bool
    frozen: bool
    queues: tuple[QueueSpec, ...]
    batch_keys: tuple[str, ...]  # the arrays of a step's batch
    data: tuple[tuple[str, str], ...]  # (term, requirement): check_sources, check_data
    # (term, ((config field, pass), ...)): the passes each term's loss is differentiated
    # through (terms.Needs.grads), with the field that names each.
    grads: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.weights)

    def untrained(self) -> tuple[str, ...]:
        """The terms whose loss reaches no trained parameter: none of the passes it is
        differentiated through is an online one (the EMA and frozen copies, heads included,
        are constants of the step), so the term adds a constant to the loss."""
        return tuple(t for t, refs in self.grads
                     if not any(ref.split("/")[0] == "online" for _, ref in refs))

    def describe(self) -> str:
        """The one start-up log line."""
        passes = ", ".join(f"{p.name}" + (f" x{p.views} views" if p.views > 1 else "")
                           + (" +MLM logits" if p.mlm_logits else "") for p in self.passes)
        heads = ", ".join(f"{n} ({k})" for n, k in self.heads) or "none"
        queues = ", ".join(f"{q.name} {q.size}" for q in self.queues) or "none"
        ends = dict(self.weight_ends)
        terms = " + ".join(f"{w:g}{f'->{ends[t]:g}' if t in ends else ''}*{t}"
                           for t, w in self.weights)
        return (f"objective: loss = {terms}; passes: {passes}; heads: {heads}; momentum (EMA) "
                f"copy: {'yes' if self.ema else 'no'}; frozen copy: "
                f"{'yes' if self.frozen else 'no'}; queues: {queues}; batch arrays: "
                f"{', '.join(self.batch_keys)}")


def is_on(weight: float, weight_end: float | None) -> bool:
    """Whether a term is on: it has weight at some step (``weight > 0``, or ramps in from 0 to a
    ``weight_end > 0``). The plan and the model card both ask this."""
    return weight > 0 or (weight_end is not None and weight_end > 0)


def plan(config: ml_collections.ConfigDict) -> Plan:
    """The plan of ``config.objective``; raises ``ValueError`` naming the ``config.`` field."""
    objective = config.objective
    unknown = sorted(set(objective) - set(TERMS))
    if unknown:
        raise ValueError(f"config.objective.{unknown[0]} is not a loss term; the terms are "
                         f"{sorted(TERMS)}")
    weights, weight_ends = [], []
    for name in TERMS:
        w, end = objective[name].weight, objective[name].get("weight_end")
        for field, value in (("weight", w), ("weight_end", end)):
            if value is not None and (not np.isfinite(value) or value < 0):
                raise ValueError(f"config.objective.{name}.{field}={value!r} must be >= 0 "
                                 "(0 = off)")
        if is_on(w, end):
            weights.append((name, float(w)))
            if end is not None and end != w:
                weight_ends.append((name, float(end)))
    if not weights:
        raise ValueError(f"no loss term is on: set config.objective.<term>.weight > 0 for one "
                         f"of {sorted(TERMS)}")

    views: dict[tuple[str, str], int] = {}
    heads: dict[str, str] = {}
    head_owner: dict[str, str] = {}
    batch = set(ALWAYS)
    queues, data, grads, mlm_logits = [], [], [], False
    for name, _ in weights:
        knobs = objective[name]
        needs = TERMS[name].needs(name, knobs, config)
        grads.append((name, tuple((_pass_field(name, knobs, ref), ref) for ref in needs.grads)))
        for ref in needs.passes:
            field = _pass_field(name, knobs, ref)
            copy, inp, view = parse_pass(ref, field)
            if copy == "frozen" and needs.heads:
                raise ValueError(f"{field}={ref!r}: the frozen copy has no heads; read it "
                                 "without one")
            views[(copy, inp)] = max(views.get((copy, inp), 1), view)
            if inp == "masked":
                batch.add("mlm_input_ids")
        for head, kind in needs.heads:
            if heads.setdefault(head, kind) != kind:
                raise ValueError(
                    f"config.objective.{name} uses head {head!r} as a {kind} head, but "
                    f"config.objective.{head_owner[head]} uses it as a {heads[head]} head: "
                    "give one of them another head name")
            head_owner.setdefault(head, name)
        batch.update(needs.batch)
        if needs.queue is not None:
            queues.append(_queue_spec(name, needs.queue))
        data.extend((name, d) for d in needs.data)
        mlm_logits |= needs.mlm_logits

    passes = tuple(
        Pass(copy, inp, views[(copy, inp)], mlm_logits and (copy, inp) == ("online", "masked"))
        for copy in COPIES for inp in INPUTS if (copy, inp) in views)
    if config.data.get("pair_column"):
        batch.add(PAIR_KEY)
    if config.data.packing:
        batch = {PACKED.get(k, k) for k in batch} | set(PACKING_KEYS)
    return Plan(weights=tuple(weights), weight_ends=tuple(weight_ends), passes=passes,
                heads=tuple(sorted(heads.items())),
                ema=any(p.copy == "ema" for p in passes),
                frozen=any(p.copy == "frozen" for p in passes), queues=tuple(queues),
                batch_keys=tuple(sorted(batch)), data=tuple(data), grads=tuple(grads))


PASS_KNOBS = ("query", "key", "of", "to")  # the knobs of a term that name encoder passes


def _pass_field(name: str, knobs: ml_collections.ConfigDict, ref: str) -> str:
    """The config field that names the pass ``ref`` of term ``name``."""
    return next((f"config.objective.{name}.{k}" for k in PASS_KNOBS if knobs.get(k) == ref),
                f"config.objective.{name}")


def _queue_spec(name: str, q: QueueNeed) -> QueueSpec:
    return QueueSpec(name, q.size, q.per_step, q.head, q.value_shape, q.value_dtype)


def build_model(pretrained: Pretrained, the_plan: Plan, config: ml_collections.ConfigDict
                ) -> Model:
    """The encoder with the plan's heads, sized from the config and the encoder's width."""
    width = pretrained.config.hidden_size
    sizes = {"projection": (config.head.dim, width), "classifier": (config.data.num_labels, 0),
             "weighting": (config.data.num_labels, width), "regressor": (1, 0)}
    heads = {name: MLPHead(out=sizes[kind][0], hidden=sizes[kind][1])
             for name, kind in the_plan.heads}
    return Model(pretrained, heads, config.model.pooling)


def queue_width(q: QueueSpec, config: ml_collections.ConfigDict, hidden_size: int) -> int:
    """The width of a queue's keys: its head's output, or the encoder's for pooled vectors."""
    return config.head.dim if q.head else hidden_size


# ----------------------------------------------------------------------------- in the step


def unpack(hidden: jax.Array, sentence_row: jax.Array, sentence_start: jax.Array,
           views: int = 1) -> jax.Array:
    """Packed token vectors (views * R, L, H) -> one row per sentence (views * B, L, H).

    Sentence ``b`` of view ``v`` is the run of row ``v * R + sentence_row[b]`` starting at
    ``sentence_start[b]``; positions past its end (its padding, unpacked) take whatever the row
    holds there, which every consumer masks with the unpacked ``attention_mask``, exactly as it
    masks padding vectors without packing.
    """
    rows_per_view, length = hidden.shape[0] // views, hidden.shape[1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    offsets = jnp.arange(views)[:, None] * rows_per_view + sentence_row[None, :]  # (V, B)
    index = (offsets[..., None] * length + sentence_start[None, :, None]
             + jnp.arange(length)[None, None, :])  # (V, B, L)
    index = jnp.minimum(index, flat.shape[0] - 1).reshape(-1, length)
    return flat[index]


class Context:
    """The encoder passes of one step, each run once, and cached views of them for the terms."""

    def __init__(self, model: Model, the_plan: Plan, config: ml_collections.ConfigDict,
                 params: Any, ema: Any, frozen: Any, batch: dict[str, jax.Array],
                 queues: dict[str, Any], rng: jax.Array, mesh: Mesh | None = None):
        self.model, self.config, self.batch, self.queues = model, config, batch, queues
        self.valid = batch["valid"]
        # Gradient caching: the batch's devices (each chunks its own rows) and chunks per pass.
        shards = 1 if mesh is None else sharding.batch_size_per_axis(mesh)
        chunks = grad_cache.num_chunks(config, shards)
        self.mlm_token_loss = None
        self._params = {"online": params, "ema": None if ema is None else sg(ema),
                        "frozen": None if frozen is None else sg(frozen)}
        self._outputs: dict[str, dict[str, jax.Array]] = {}
        self._views: dict[str, int] = {}
        # Per pass: whether its outputs are stacked (views, B, ...) (chunked) rather than
        # concatenated (views * B, ...).
        self._stacked: dict[str, bool] = {}
        self._cache: dict[Any, jax.Array] = {}
        self.mlm_labels = self.mlm_left_out = None
        self.packed = "segment_ids" in batch
        # Text pairs' segments (absent: single texts, all 0), packed as the ids are.
        types = batch.get(PACKED[PAIR_KEY] if self.packed else PAIR_KEY)
        n_train = 0
        for p in the_plan.passes:
            key = "input_ids" if p.input == "clean" else "mlm_input_ids"
            ids = batch[PACKED[key]] if self.packed else batch[key]
            # With packing the encoder sees rows of several sentences, masked to each segment.
            segments = batch["segment_ids"] if self.packed else None
            mask = (segments > 0).astype(jnp.int32) if self.packed else batch["attention_mask"]
            pass_types = types
            if p.views > 1 and not chunks:
                # One forward over the stacked views: they differ only in dropout (chunked: each
                # chunk stacks its rows' views, grad_cache.to_chunks).
                ids, mask = jnp.concatenate([ids] * p.views), jnp.concatenate([mask] * p.views)
                if pass_types is not None:
                    pass_types = jnp.concatenate([pass_types] * p.views)
                if self.packed:
                    segments = jnp.concatenate([segments] * p.views)
            # The first training pass draws dropout from the step's key itself (so a preset with
            # one training pass keeps its random stream); further ones from keys folded from it.
            pass_rng = None
            if p.train:
                pass_rng = rng if n_train == 0 else jax.random.fold_in(rng, n_train)
                n_train += 1
            positions = rows = None
            if p.mlm_logits:
                self.mlm_labels = batch["mlm_labels"]
                if config.data.mlm_max_predictions > 0:
                    # Logits at the (at most M) masked positions per sentence, not at all L.
                    positions, self.mlm_labels, self.mlm_left_out = scored_positions(
                        self.mlm_labels, config.data.mlm_max_predictions)
                elif self.packed:  # every position of every sentence, in its packed row
                    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), self.mlm_labels.shape)
                if self.packed:
                    positions = positions + batch["sentence_start"][:, None]
                    rows = batch["sentence_row"]
            self._stacked[p.name] = bool(chunks)
            if chunks:  # (views, rows, L, H): the views stay apart (grad_cache.from_chunks)
                hidden = self._chunked(p, ids, mask, segments, pass_rng, shards, chunks, mesh,
                                       pass_types)
                if p.mlm_logits:
                    at = layers.at_positions(hidden[0], positions, rows)
                    head = functools.partial(model.mlm_head, self._params[p.copy])
                    self.mlm_token_loss = grad_cache.mlm_token_losses(
                        head, at, self.mlm_labels, shards=shards, chunks=chunks, mesh=mesh)
                if self.packed:
                    hidden = jax.vmap(unpack, in_axes=(0, None, None))(
                        hidden, batch["sentence_row"], batch["sentence_start"])
                self._outputs[p.name] = {"last_hidden_state": hidden,
                                         "attention_mask": batch["attention_mask"]}
                self._views[p.name] = p.views
                continue
            kw = {"segment_ids": segments, "mlm_rows": rows} if self.packed else {}
            if pass_types is not None:
                kw["token_type_ids"] = pass_types
            out = model.forward(self._params[p.copy], ids, mask, train=p.train, rng=pass_rng,
                                mlm=p.mlm_logits, mlm_positions=positions, **kw)
            if not p.train:
                out = sg(out)
            if p.mlm_logits:
                self.mlm_token_loss = losses.masked_lm_loss(out["logits"], self.mlm_labels,
                                                            reduction="none")
            hidden = out["last_hidden_state"]
            if self.packed:
                hidden = unpack(hidden, batch["sentence_row"], batch["sentence_start"], p.views)
            self._outputs[p.name] = {
                "last_hidden_state": hidden,
                "attention_mask": jnp.concatenate([batch["attention_mask"]] * p.views)}
            self._views[p.name] = p.views

    def _chunked(self, p: Pass, ids: jax.Array, mask: jax.Array, segments: jax.Array | None,
                 rng: jax.Array | None, shards: int, chunks: int, mesh: Mesh | None,
                 types: jax.Array | None = None) -> jax.Array:
        """The token vectors of pass ``p`` (views, rows, L, H), chunk by chunk (grad_cache)."""
        params = self._params[p.copy]
        inputs = {"ids": ids, "mask": mask}
        if segments is not None:
            inputs["segments"] = segments
        if types is not None:
            inputs["types"] = types

        def forward(x, key):
            kw = {"segment_ids": x["segments"]} if "segments" in x else {}
            if "types" in x:
                kw["token_type_ids"] = x["types"]
            return self.model.forward(params, x["ids"], x["mask"], train=p.train, rng=key,
                                      **kw)["last_hidden_state"]

        hidden = grad_cache.encode(forward, inputs, views=p.views, shards=shards,
                                   chunks=chunks, rng=rng, remat=p.train, mesh=mesh)
        return hidden if p.train else sg(hidden)

    def _split(self, ref: str) -> tuple[str, str, int]:
        copy, inp, view = parse_pass(ref, "pass")
        return copy, f"{copy}/{inp}", view

    def _view(self, name: str, x: jax.Array, view: int) -> jax.Array:
        if self._stacked[name]:
            return x[view - 1]
        b = x.shape[0] // self._views[name]
        return x[(view - 1) * b: view * b] if self._views[name] > 1 else x

    def trains(self, ref: str) -> bool:
        """Whether gradients flow through the pass ``ref``."""
        return self._split(ref)[0] == "online"

    def hidden(self, ref: str) -> jax.Array:
        """Token vectors (B, L, H) of the pass ``ref``."""
        _, name, view = self._split(ref)
        return self._view(name, self._outputs[name]["last_hidden_state"], view)

    def _pooled_all(self, name: str) -> jax.Array:
        key = ("pooled", name)
        if key not in self._cache:
            out = self._outputs[name]
            pool = (jax.vmap(self.model.pool, in_axes=(0, None)) if self._stacked[name]
                    else self.model.pool)
            self._cache[key] = pool(out["last_hidden_state"], out["attention_mask"])
        return self._cache[key]

    def pooled(self, ref: str) -> jax.Array:
        """Sentence vectors (B, H), fp32, of the pass ``ref``."""
        _, name, view = self._split(ref)
        return self._view(name, self._pooled_all(name), view)

    def head(self, ref: str, head: str, x: jax.Array) -> jax.Array:
        """``head`` with the parameters of ``ref``'s copy applied to ``x`` ("" = identity)."""
        copy = self._split(ref)[0]
        return self.model.head(self._params[copy], head, x) if head else x

    def projected(self, ref: str, head: str) -> jax.Array:
        """``head`` of the pooled vectors of ``ref``, computed once for all views of the pass."""
        copy, name, view = self._split(ref)
        key = ("head", name, head)
        if key not in self._cache:
            self._cache[key] = self.head(ref, head, self._pooled_all(name))
        return self._view(name, self._cache[key], view)


def term_weight(the_plan: Plan, name: str, step: jax.Array | int, total_steps: int
                ) -> jax.Array | float:
    """The weight of term ``name`` at ``step``: constant, or linear from ``weight`` at step 0 to
    ``weight_end`` at ``total_steps`` (held there after)."""
    start = dict(the_plan.weights)[name]
    end = dict(the_plan.weight_ends).get(name)
    if end is None:
        return start
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return start + (end - start) * frac


def loss(model: Model, the_plan: Plan, config: ml_collections.ConfigDict, params: Any,
         ema: Any, frozen: Any, batch: dict[str, jax.Array], queues: dict[str, Any],
         rng: jax.Array, step: jax.Array | int = 0, mesh: Mesh | None = None
         ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """``sum_t weight_t(step) * loss_t`` and (metrics, {queue name: (keys, values, valid)});
    a scheduled term's weight is in the metrics as ``weight/<t>``, the number of batch rows it
    read (``TermOut.rows``; under ``jit`` over a sharded batch, the global count) as
    ``rows/<t>`` (int32).

    Differentiable in ``params`` only: the EMA and frozen copies pass through ``stop_gradient``.
    ``mesh``: the devices the batch is split over; with ``config.grad_cache.chunk`` each chunks
    its own rows (grad_cache.py).
    """
    ctx = Context(model, the_plan, config, params, ema, frozen, batch, queues, rng, mesh)
    total, metrics, enqueue = 0.0, {}, {}
    scheduled = dict(the_plan.weight_ends)
    for name, _ in the_plan.weights:
        out = TERMS[name].loss(ctx, config.objective[name])
        weight = term_weight(the_plan, name, step, config.total_steps)
        total = total + weight * out.value
        if name in scheduled:
            metrics[f"weight/{name}"] = weight
        metrics[f"loss/{name}"] = out.value
        metrics[f"rows/{name}"] = out.rows.sum(dtype=jnp.int32)
        metrics.update(out.metrics)
        if name in queues:
            enqueue[name] = out.enqueue
    return total, (metrics, enqueue)


# ------------------------------------------------------------------ data the terms need


_WHAT = {"labels": "class labels (batch array 'labels')",
         "sentence": "sentence-level {dim} ratings (batch array 'sentence_{dim}')",
         "token": "lexicon words with a {dim} rating in the text (batch array 'token_{dim}')"}
_HINT = {"labels": "set config.data.source to a labelled source (goemotions, sst, or csv/jsonl "
                   "with config.data.label_column)",
         "sentence": "use a source with ratings (vader for valence, emobank for valence, arousal "
                     "and dominance, csv/jsonl with config.data.valence_column)",
         "token": "set config.data.lexicon (vader for valence; a Warriner-format CSV for "
                  "valence, arousal and dominance)"}


def _where(config: ml_collections.ConfigDict) -> str:
    """The config fields that say where the training data come from."""
    d = config.data
    return f"config.data.source={d.source!r}" + (f", config.data.path={d.path!r}"
                                                 if d.path else "")


def check_data(the_plan: Plan, arrays: dict[str, np.ndarray],
               config: ml_collections.ConfigDict) -> None:
    """Refuse a term whose data is missing from the encoded training data (``ValueError`` naming
    the term and the missing field), before anything is trained or written."""
    for term, need in the_plan.data:
        level, _, dim = need.partition(":")
        if level == "mlm":
            continue  # a config field (data.mlm_rate), checked by config_check.validate
        if level == "labels":
            present = arrays["labels"] >= 0
        elif level == "sentence":
            present = arrays[f"sentence_{dim}"] >= 0
        else:
            present = arrays["token_valence_mask"]
            if dim != "valence":
                present = present & (arrays[f"token_{dim}"] >= 0)
        if not present.any():
            raise ValueError(f"config.objective.{term} needs {_WHAT[level].format(dim=dim)}, but "
                             f"the training data ({_where(config)}) have none: {_HINT[level]}")


def _present(need: str, manifest: Mapping[str, Any]) -> int:
    """How much of what ``need`` asks for a prepared folder's manifest records: rows with a
    class ("labels"), present ratings ("sentence:<dim>", "token:<dim>" but valence), rows with
    a lexicon word ("token:valence", whose words all have a valence)."""
    level, _, dim = need.partition(":")
    flags, values = manifest.get("flags", {}), manifest.get("values", {})
    if level == "labels":
        return int(flags.get("class", 0))
    if level == "token" and dim == "valence":
        return int(flags.get("words", 0))
    return sum(int(n) for v, n in values.get(f"{level}_{dim}", ()) if v >= 0)


def check_sources(the_plan: Plan, sources: Sequence[tuple[str, Mapping[str, Any]]],
                  config: ml_collections.ConfigDict) -> None:
    """Refuse an active term whose data none of the training sources has (``ValueError`` naming
    the term, what it needs and every source searched with its row count), from the sources'
    manifests alone: before anything is read, trained or written.

    ``sources``: (folder or name, manifest) of each prepared folder the run reads, those of
    ``config.data.mixture`` or the one of ``config.data.source``. The manifest's ``flags`` count
    the rows with a class and with lexicon words, its ``values`` hold every present rating.
    A term needs its data in one source at least: a mixture may mix rated and unrated folders
    (each term reads the rows that have its data; ``rows/<term>`` counts them per step).
    """
    mixture = bool(config.data.mixture) or len(sources) != 1
    for term, need in the_plan.data:
        level, _, dim = need.partition(":")
        if level == "mlm":
            continue  # a config field (data.mlm_rate), checked by config_check.validate
        if any(_present(need, manifest) > 0 for _, manifest in sources):
            continue
        what = f"config.objective.{term} needs {_WHAT[level].format(dim=dim)}"
        counts = [(name, manifest.get("rows", "?")) for name, manifest in sources]
        if mixture:
            listing = ", ".join(f"{name} (0 of {rows} rows)" for name, rows in counts)
            raise ValueError(f"{what}, but none of the mixture's sources has any: {listing}. Add "
                             "to config.data.mixture a folder prepared from data that have them "
                             f"(python -m softmcl_jax.data.prepare): {_HINT[level]}")
        (name, rows), = counts
        folder = "" if name == config.data.path else f" in {name}"
        raise ValueError(f"{what}, but the training data ({_where(config)}) have none (0 of "
                         f"{rows} rows{folder}): {_HINT[level]}")
