"""Subprocess side of tests/test_checkpoint.py (needs its own process for 8 simulated devices).

    python tests/checkpoint_worker.py roundtrip DIR   # save on an 8-device mesh, restore, compare
    python tests/checkpoint_worker.py preempt DIR     # fake train loop until SIGTERM, then save
    python tests/checkpoint_worker.py crash DIR       # die while an async save is in flight

XLA_FLAGS must be set by the caller: it is read when jax initialises its backends.
"""

from __future__ import annotations

import json
import os
import sys
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from softmcl_jax.checkpoint import Checkpointer, PreemptionGuard, abstract_like, with_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: tuple
    ema_params: dict
    queue: jax.Array
    queue_valence: jax.Array
    rng: jax.Array
    lr_scale: float = flax.struct.field(pytree_node=False, default=1.0)


def make_state(mesh: Mesh, seed: int = 0) -> TrainState:
    rep = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    k = jax.random.split(jax.random.key(seed), 6)
    w = jax.random.normal(k[0], (8, 4))
    params = {"dense": {"kernel": w, "bias": jax.random.normal(k[1], (4,))},
              "emb": jax.random.normal(k[2], (16, 8)).astype(jnp.bfloat16)}
    state = TrainState(
        step=jnp.array(0, jnp.int32),
        params=params,
        opt_state=(jax.tree.map(jnp.zeros_like, params), jnp.array(3, jnp.int32)),
        ema_params=jax.tree.map(lambda x: x * 0.5, params),
        queue=jax.random.normal(k[3], (64, 4)),
        queue_valence=jax.random.uniform(k[4], (64,)),
        rng=k[5],
    )

    def place(path, x):
        # Queues are sharded over the batch axis, everything else replicated, as in the trainer.
        name = jax.tree_util.keystr(path)
        return jax.device_put(x, data if "queue" in name else rep)

    return jax.tree_util.tree_map_with_path(place, state)


def same_bits(a: jax.Array, b: jax.Array) -> bool:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def roundtrip(directory: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = make_state(mesh)
    ckpt = Checkpointer(directory, every_steps=10, keep=3, async_save=True)
    assert ckpt.save(10, state, meta={"data_position": np.int64(1234), "config": {"lr": 1e-5}})
    ckpt.wait()

    # 1) Same mesh, abstract state taken from a fresh (differently seeded) state.
    restored = ckpt.restore(10, abstract_like(make_state(mesh, seed=1)))
    assert type(restored) is TrainState and restored.lr_scale == 1.0
    flat_a = jax.tree_util.tree_leaves_with_path(state)
    flat_b = jax.tree_util.tree_leaves_with_path(restored)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b, strict=True):
        assert same_bits(a, b), jax.tree_util.keystr(path)
        assert b.sharding == a.sharding, (jax.tree_util.keystr(path), b.sharding, a.sharding)
    assert restored.queue.sharding.spec == P("data")
    assert len(restored.queue.addressable_shards) == 8

    # 2) eval_shape + shardings, onto a 2x4 mesh sharding the queue 4 ways: orbax reshards.
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("replica", "data"))
    shapes = jax.eval_shape(lambda: make_state(mesh, seed=2))
    assert getattr(shapes.queue, "sharding", None) is None  # why with_shardings exists
    rep2, data2 = NamedSharding(mesh2, P()), NamedSharding(mesh2, P("data"))
    shardings = jax.tree_util.tree_map_with_path(
        lambda p, _: data2 if "queue" in jax.tree_util.keystr(p) else rep2, shapes)
    restored2 = ckpt.restore(None, with_shardings(shapes, shardings))
    for (path, a), (_, b) in zip(flat_a, jax.tree_util.tree_leaves_with_path(restored2),
                                 strict=True):
        assert same_bits(a, b), jax.tree_util.keystr(path)
    assert restored2.queue.sharding == data2
    assert restored2.queue.addressable_shards[0].data.shape == (16, 4)

    meta = ckpt.restore_meta(10)
    assert meta == {"data_position": 1234, "config": {"lr": 1e-5}}, meta
    ckpt.close()
    print(json.dumps({"ok": True, "leaves": len(flat_a)}))


def preempt(directory: str) -> None:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = make_state(mesh)
    ckpt = Checkpointer(directory, every_steps=4, keep=2, async_save=True)

    @jax.jit
    def train_step(s: TrainState) -> TrainState:
        return s.replace(step=s.step + 1, queue=jnp.roll(s.queue, 1, axis=0) + 1.0)

    with PreemptionGuard() as guard:
        assert guard.installed
        for step in range(0, 100_000):
            state = train_step(state)
            done = step + 1
            if done == 3:
                print("READY", flush=True)  # the test sends SIGTERM once it reads this
            if guard.should_stop(done):
                ckpt.save(done, state, force=True, meta={"stopped_at": done})
                ckpt.wait()
                print(json.dumps({"stopped_at": done, "step": int(state.step),
                                  "queue_sum": float(state.queue.sum())}), flush=True)
                break
            ckpt.save(done, state, meta={"stopped_at": None})
            time.sleep(0.01)  # a "step" long enough for the signal to land mid-loop
        else:
            raise SystemExit("no SIGTERM received")
    ckpt.close()


def crash(directory: str) -> None:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = make_state(mesh)
    ckpt = Checkpointer(directory, every_steps=5, keep=2, async_save=True)
    assert ckpt.save(5, state)
    ckpt.wait()
    # A bigger state so the write is still in flight when the process dies.
    big = state.replace(queue=jnp.zeros((1 << 22, 4)))
    assert ckpt.save(10, big)
    print("SAVING", flush=True)
    os._exit(3)  # no wait(), no close(): as a kill -9 or an OOM


if __name__ == "__main__":
    {"roundtrip": roundtrip, "preempt": preempt, "crash": crash}[sys.argv[1]](sys.argv[2])
