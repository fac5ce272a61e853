"""The train state, the one jitted train step, and the loop that drives it.

State (one pytree, sharded once, donated every step)::

    TrainState(step, params={"encoder", "heads"}, opt_state, ema_params, frozen_params,
               queues={name: Queue(keys (K, D), values (K,), valid (K,), ptr)}, rng)

``train_step(state, batch) -> (state, metrics)`` differentiates the configured method
(methods.py), applies optax, moves the EMA (``optax.incremental_update``) and writes the new
momentum keys into the queues in place (``lax.dynamic_update_slice`` at ``ptr``).
"""

from __future__ import annotations

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

from softmcl_jax import methods, sharding

log = logging.getLogger(__name__)


@flax.struct.dataclass
class Queue:
    """A ring buffer of K past keys with their labels/valences; ``valid`` marks filled slots."""

    keys: jax.Array  # (K, D) float32
    values: jax.Array  # (K,)
    valid: jax.Array  # (K,) bool
    ptr: jax.Array  # () int32, next slot to write


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any  # None unless the method uses a momentum encoder
    frozen_params: Any  # None unless the method regularises towards a frozen copy
    queues: dict[str, Queue]
    rng: jax.Array  # uint32[2]; per-step keys are folded in from the step


def enqueue(q: Queue, keys: jax.Array, values: jax.Array, valid: jax.Array) -> Queue:
    """Overwrite the n slots at ``ptr`` (n divides K, checked at start-up) and advance it."""
    n = keys.shape[0]
    size = q.keys.shape[0]
    return Queue(
        keys=jax.lax.dynamic_update_slice(q.keys, keys.astype(q.keys.dtype), (q.ptr, 0)),
        values=jax.lax.dynamic_update_slice(q.values, values.astype(q.values.dtype), (q.ptr,)),
        valid=jax.lax.dynamic_update_slice(q.valid, valid, (q.ptr,)),
        ptr=(q.ptr + n) % size,
    )


def queue_sizes(config: ml_collections.ConfigDict, global_batch: int) -> dict[str, tuple[int, int]]:
    """Queue name -> (K, entries written per step); K must be a multiple of the latter."""
    if config.method != "softmcl":
        return {}
    per_step = {"sentence": global_batch,
                "word": global_batch * config.word_level.max_words_per_sentence}
    sizes = {"sentence": config.queue.sentence_size, "word": config.queue.word_size}
    for name, k in sizes.items():
        if k <= 0 or k % per_step[name]:
            raise ValueError(
                f"config.queue.{name}_size={k} must be a positive multiple of the keys written "
                f"per step ({per_step[name]} = global batch {global_batch}"
                + (f" x word_level.max_words_per_sentence "
                   f"{config.word_level.max_words_per_sentence}" if name == "word" else "")
                + "), so that the ring buffer wraps exactly")
    return {n: (sizes[n], per_step[n]) for n in sizes}


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
    """AdamW with linear warm-up then cosine decay, global-norm clipping, optional accumulation.

    Weight decay skips biases and LayerNorm scales (1-D leaves), as BERT-style training does.
    """
    o = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
        decay_steps=max(config.total_steps, o.warmup_steps + 1), end_value=o.end_learning_rate)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=decay_mask),
    )
    if o.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum_steps)
    return tx, schedule


def init_state(model: methods.Model, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation, global_batch: int) -> TrainState:
    """The initial state on the host (to be placed with ``state_shardings``)."""
    rng = jax.random.PRNGKey(config.seed)
    params = {"encoder": model.pretrained.params,
              "heads": model.init_heads(jax.random.fold_in(rng, 1))}
    queues = {}
    for name, (k, _) in queue_sizes(config, global_batch).items():
        queues[name] = Queue(keys=jnp.zeros((k, config.head.dim), jnp.float32),
                             values=jnp.zeros((k,), jnp.float32),
                             valid=jnp.zeros((k,), bool), ptr=jnp.zeros((), jnp.int32))
    uses_ema = config.method == "softmcl"
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if uses_ema else None,
        frozen_params=({"encoder": jax.tree.map(jnp.copy, params["encoder"])}
                       if config.method == "retrofit" else None),
        queues=queues,
        rng=rng,
    )


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
    """Parameter-shaped leaves per ``sharding.param_shardings``; queues split along K."""
    rep = sharding.replicated(mesh)
    queues = {n: Queue(keys=sharding.queue_sharding(mesh, 2),
                       values=sharding.queue_sharding(mesh, 1),
                       valid=sharding.queue_sharding(mesh, 1), ptr=rep)
              for n in abstract.queues}
    return TrainState(
        step=rep,
        params=sharding.param_shardings(abstract.params, mesh),
        opt_state=sharding.param_shardings(abstract.opt_state, mesh),
        ema_params=sharding.param_shardings(abstract.ema_params, mesh),
        frozen_params=sharding.param_shardings(abstract.frozen_params, mesh),
        queues=queues,
        rng=rep,
    )


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: methods.Model,
               config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step of ``config.method``; pure, to be jitted with shardings."""
    method = methods.METHODS[config.method]
    # Dropout and any other randomness: a function of (seed, step) only, so resume is exact.
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        return method(model, config, params, state, batch, rng)

    (loss, (metrics, to_enqueue)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
        # ema <- mu * ema + (1 - mu) * params
        ema = optax.incremental_update(params, ema, step_size=1.0 - config.momentum.decay)
    queues = {n: enqueue(q, *to_enqueue[n]) for n, q in state.queues.items()}
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema, queues=queues)
    return new_state, metrics


def jit_train_step(model: methods.Model, config: ml_collections.ConfigDict,
                   tx: optax.GradientTransformation, schedule: optax.Schedule,
                   state_sharding: TrainState, mesh: Mesh):
    """``train_step`` jitted with explicit in/out shardings and the state donated."""
    step = functools.partial(train_step, model=model, config=config, tx=tx, schedule=schedule)
    return jax.jit(step, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, sharding.replicated(mesh)),
                   donate_argnums=0)


class StepSetup(NamedTuple):
    """What a caller of the train step needs; see :func:`setup_step`."""

    host_state: TrainState  # the initial state, not yet on the devices
    abstract: TrainState  # its shapes and dtypes (ShapeDtypeStructs)
    shardings: TrainState  # where each leaf goes on the mesh
    step_fn: Any  # jit_train_step(...): (state, batch) -> (state, metrics), state donated


def setup_step(model: methods.Model, config: ml_collections.ConfigDict, mesh: Mesh) -> StepSetup:
    """Optimizer, initial host state, its shardings over ``mesh`` and the jitted step, as the
    trainer builds them (benchmarks and tests use the same path). Nothing is placed or compiled."""
    tx, schedule = make_optimizer(config)
    host_state = init_state(model, config, tx, config.batch_size)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_state)
    shardings = state_shardings(abstract, mesh)
    return StepSetup(host_state, abstract, shardings,
                     jit_train_step(model, config, tx, schedule, shardings, mesh))


def place_state(state: TrainState, shardings: TrainState) -> TrainState:
    return jax.device_put(state, shardings)


def abstract_with_shardings(abstract: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying their target sharding (what a sharded restore needs)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def host_scalars(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def describe_sharding(state: TrainState) -> str:
    """Bytes per device of each part of the state (for the log and the scaling notes)."""
    def per_device(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
                shard = x.sharding.shard_shape(x.shape)
                total += int(np.prod(shard)) * x.dtype.itemsize
        return total

    parts = {"params": state.params, "opt_state": state.opt_state, "ema": state.ema_params,
             "frozen": state.frozen_params, "queues": state.queues}
    return ", ".join(f"{k} {per_device(v) / 2**20:.1f} MiB" for k, v in parts.items() if v)
