"""The device mesh and how the train state and batches are laid out on it.

Mesh axes: ``data`` (pure data parallelism) and ``fsdp`` (data parallelism whose members also
split parameters and optimizer state). A batch is split over both axes; a parameter leaf is split
over ``fsdp`` along its largest dimension that divides evenly (small leaves stay replicated, where
the all-gather would cost more than the memory saved). Queues of past keys are split over the batch
axes along K, so each device holds K / n_devices keys.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[Any] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (all by default); ``-1`` takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {n} devices")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh.data={data} x mesh.fsdp={fsdp} != {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_size_per_axis(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**14) -> PartitionSpec:
    """Split the largest dimension divisible by ``fsdp`` over the fsdp axis, if big enough."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(abstract_params: Any, mesh: Mesh) -> Any:
    """NamedShardings for a parameter-shaped pytree (params, EMA, optimizer moments)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(getattr(x, "shape", ())), fsdp)),
        abstract_params)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def queue_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """A queue of K entries split along K; trailing dims (the feature axis) whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))
