"""The train state, the one jitted train step, and how both are set up on a mesh.

State (one pytree, born sharded, donated every step)::

    TrainState(step, params={"encoder", "heads"}, opt_state, ema_params,
               queues={term: Queue(keys (K, D), values (K, ...), valid (K,), ptr)}, rng)

What exists is the objective plan's decision (``objective.plan``): ``ema_params`` only when a term
reads an ``ema/...`` pass, a queue per term with ``queue_size > 0``. The frozen copy that VSP
reads is a constant, not state: the step takes it as a separate, undonated argument, it is built
from the base checkpoint at every start (resume included) and never checkpointed.

``train_step(state, batch, constants) -> (state, metrics)`` differentiates the objective
(objective.py; its metrics, plus ``loss``, ``grad_norm``, ``learning_rate`` and ``sentences``,
the valid rows of the step's global batch), applies optax, moves the EMA
(``optax.incremental_update``) and writes the new keys into the queues in place
(``lax.dynamic_update_slice`` at ``ptr``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from softmcl_jax import objective, sharding
from softmcl_jax.model import Model

log = logging.getLogger(__name__)


@flax.struct.dataclass
class Queue:
    """A ring buffer of K past keys with their labels/valences; ``valid`` marks filled slots."""

    keys: jax.Array  # (K, D) float32
    values: jax.Array  # (K, ...) the labels the term compares keys by
    valid: jax.Array  # (K,) bool
    ptr: jax.Array  # () int32, next slot to write


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any  # None unless a term reads the momentum copy
    queues: dict[str, Queue]
    rng: jax.Array  # uint32[2]; per-step keys are folded in from the step
    skipped: jax.Array  # () int32: steps whose update was dropped as non-finite


def enqueue(q: Queue, keys: jax.Array, values: jax.Array, valid: jax.Array) -> Queue:
    """Overwrite the n slots at ``ptr`` (n divides K, checked at start-up) and advance it."""
    n = keys.shape[0]
    size = q.keys.shape[0]
    zeros = (0,) * (q.values.ndim - 1)
    return Queue(
        keys=jax.lax.dynamic_update_slice(q.keys, keys.astype(q.keys.dtype), (q.ptr, 0)),
        values=jax.lax.dynamic_update_slice(q.values, values.astype(q.values.dtype),
                                            (q.ptr, *zeros)),
        valid=jax.lax.dynamic_update_slice(q.valid, valid, (q.ptr,)),
        ptr=(q.ptr + n) % size,
    )


def learning_rate_schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """0 -> ``learning_rate`` linearly over ``warmup_steps``, then to ``end_learning_rate`` at
    ``total_steps`` along a cosine (pre-training) or a straight line (BERT's GLUE fine-tuning)."""
    end = max(total_steps, o.warmup_steps + 1)
    if o.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
            decay_steps=end, end_value=o.end_learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps),
         optax.linear_schedule(o.learning_rate, o.end_learning_rate, end - o.warmup_steps)],
        [o.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
    """AdamW with linear warm-up then ``optimizer.decay`` (cosine or linear) to
    ``end_learning_rate`` at ``total_steps``, global-norm clipping, optional accumulation.

    Weight decay skips biases and LayerNorm scales (1-D leaves), as BERT-style training does.
    """
    o = config.optimizer
    schedule = learning_rate_schedule(o, config.total_steps)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=decay_mask),
    )
    if o.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum_steps)
    return tx, schedule


def init_state(model: Model, the_plan: objective.Plan, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, encoder_params: Any) -> TrainState:
    """The initial state; pure, so ``jit`` with ``out_shardings`` creates it where it lives."""
    rng = jax.random.PRNGKey(config.seed)
    # A copy, not the argument itself: jit would hand the input buffers back as outputs, and
    # donating the state would then delete the caller's pretrained parameters.
    params = {"encoder": jax.tree.map(jnp.copy, encoder_params),
              "heads": model.init_heads(jax.random.fold_in(rng, 1))}
    hidden = model.pretrained.config.hidden_size
    queues = {}
    for q in the_plan.queues:
        width = objective.queue_width(q, config, hidden)
        queues[q.name] = Queue(keys=jnp.zeros((q.size, width), jnp.float32),
                               values=jnp.zeros((q.size, *q.value_shape), q.value_dtype),
                               valid=jnp.zeros((q.size,), bool), ptr=jnp.zeros((), jnp.int32))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if the_plan.ema else None,
        queues=queues,
        rng=rng,
        skipped=jnp.zeros((), jnp.int32),
    )


def constants_of(pretrained_params: Any, the_plan: objective.Plan) -> dict[str, Any]:
    """What the step reads but never changes: ``{"frozen": {"encoder": base params}}`` when a
    term reads the frozen copy, else {}."""
    return {"frozen": {"encoder": pretrained_params}} if the_plan.frozen else {}


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
    """Parameter-shaped leaves per ``sharding.param_shardings``; queues split along K."""
    rep = sharding.replicated(mesh)
    queues = {n: Queue(keys=sharding.queue_sharding(mesh, 2),
                       values=sharding.queue_sharding(mesh, q.values.ndim),
                       valid=sharding.queue_sharding(mesh, 1), ptr=rep)
              for n, q in abstract.queues.items()}
    return TrainState(
        step=rep,
        params=sharding.param_shardings(abstract.params, mesh),
        opt_state=sharding.param_shardings(abstract.opt_state, mesh),
        ema_params=sharding.param_shardings(abstract.ema_params, mesh),
        queues=queues,
        rng=rep,
        skipped=rep,
    )


def train_step(state: TrainState, batch: dict[str, jax.Array], constants: dict[str, Any], *,
               model: Model, the_plan: objective.Plan, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               mesh: Mesh | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step of the planned objective; pure, to be jitted with shardings
    (``mesh``: the batch's devices, which gradient caching chunks each on its own rows)."""
    # Dropout and any other randomness: a function of (seed, step) only, so resume is exact.
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        return objective.loss(model, the_plan, config, params, state.ema_params,
                              constants.get("frozen"), batch, state.queues, rng, state.step,
                              mesh)

    (loss, (metrics, to_enqueue)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
        # ema <- mu * ema + (1 - mu) * params
        ema = optax.incremental_update(params, ema, step_size=1.0 - config.momentum.decay)
    queues = {n: enqueue(q, *to_enqueue[n]) for n, q in state.queues.items()}
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss, gradient or update is never applied: the state keeps its finite values
    # (so no checkpoint can hold a NaN), the step still advances (the next batch is the next
    # one), and the host decides from metrics["finite"] whether to stop or skip on.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(params)))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    # The sentences this step's loss read: the valid rows of the global batch (under jit over a
    # sharded batch, the global count). An optimizer update with grad_accum_steps = k averages
    # k consecutive steps, so it used the sum of their counts.
    sentences = jnp.sum(batch["valid"], dtype=jnp.int32)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   sentences=sentences, finite=finite)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state), ema_params=keep(ema, state.ema_params),
        queues=keep(queues, state.queues), skipped=state.skipped + (~finite).astype(jnp.int32))
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class Init:
    """``init()``: the initial state, created by ``jit`` on the mesh with the state's shardings
    (``lower()`` for ahead-of-time analysis of what each device holds)."""

    jitted: Any
    base_params: Any

    def __call__(self) -> TrainState:
        return self.jitted(self.base_params)

    def lower(self) -> Any:
        return self.jitted.lower(self.base_params)


@dataclasses.dataclass(frozen=True)
class Step:
    """The jitted ``train_step`` with its constants bound: ``step(state, batch)``; the state is
    donated. ``lower(abstract_state, batch)`` for ahead-of-time analysis."""

    jitted: Any
    constants: dict[str, Any]

    def __call__(self, state: TrainState, batch: dict[str, Any]
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
        return self.jitted(state, batch, self.constants)

    def lower(self, state: Any, batch: Any) -> Any:
        return self.jitted.lower(state, batch, self.constants)


class StepSetup(NamedTuple):
    """What a caller of the train step needs; see :func:`setup_step`."""

    init: Init  # () -> the initial state, born sharded on the mesh
    abstract: TrainState  # its shapes and dtypes (ShapeDtypeStructs)
    shardings: TrainState  # where each leaf goes on the mesh
    step_fn: Step  # (state, batch) -> (state, metrics), state donated


def setup_step(model: Model, config: ml_collections.ConfigDict, mesh: Mesh,
               the_plan: objective.Plan | None = None) -> StepSetup:
    """Optimizer, the state's shapes and shardings over ``mesh``, its initialiser and the jitted
    step, as the trainer builds them (benchmarks and tests use the same path).

    Nothing of the state is created here. ``init()`` runs ``init_state`` under ``jit`` with the
    target shardings as ``out_shardings`` and the encoder parameters put straight into their
    shards, so no device ever holds more than its share of params + EMA + optimizer state.
    The constants (the frozen copy) are placed here, sharded like the parameters.
    """
    the_plan = objective.plan(config) if the_plan is None else the_plan
    tx, schedule = make_optimizer(config)
    base = model.pretrained.params
    init_fn = functools.partial(init_state, model, the_plan, config, tx)
    abstract = jax.eval_shape(init_fn, base)
    shardings = state_shardings(abstract, mesh)
    base_shardings = sharding.param_shardings(base, mesh)
    jitted_init = jax.jit(init_fn, in_shardings=(base_shardings,), out_shardings=shardings)
    constants = constants_of(base, the_plan)
    const_shardings = sharding.param_shardings(constants, mesh)
    constants = jax.device_put(constants, const_shardings)
    step = functools.partial(train_step, model=model, the_plan=the_plan, config=config, tx=tx,
                             schedule=schedule, mesh=mesh)
    jitted = jax.jit(step,
                     in_shardings=(shardings, sharding.batch_sharding(mesh), const_shardings),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    return StepSetup(Init(jitted_init, base), abstract, shardings, Step(jitted, constants))


def abstract_with_shardings(abstract: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying their target sharding (what a sharded restore needs)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def host_scalars(metrics: dict[str, jax.Array]) -> dict[str, float | int]:
    """The step's metrics as Python numbers, without the ``finite`` flag (see ``train_step``):
    counts (``sentences``, ``rows/<term>``) as ints, so that they are logged as counts."""
    return {k: int(x) if x.dtype.kind in "iu" else float(x)
            for k, x in ((k, np.asarray(v)) for k, v in jax.device_get(metrics).items())
            if k != "finite"}


def describe_sharding(state: TrainState, constants: dict[str, Any] | None = None) -> str:
    """Bytes per device of each part of the state (for the log and the scaling notes)."""
    def per_device(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
                shard = x.sharding.shard_shape(x.shape)
                total += int(np.prod(shard)) * x.dtype.itemsize
        return total

    parts = {"params": state.params, "opt_state": state.opt_state, "ema": state.ema_params,
             "queues": state.queues, "frozen (constant)": (constants or {}).get("frozen")}
    return ", ".join(f"{k} {per_device(v) / 2**20:.1f} MiB" for k, v in parts.items() if v)
