"""Gradient caching (Gao et al. 2021): encoder passes over a batch larger than memory, chunk by
chunk, with the gradients of the whole batch.

With ``config.grad_cache.chunk = c > 0`` each encoder pass of the step (``objective.Context``)
runs as a ``lax.scan`` over chunks of about ``c`` sentences per device, each chunk's forward
under ``jax.checkpoint`` with the nothing-saveable policy. The forward keeps only each chunk's
inputs and its output, the *cache*: the token vectors ``last_hidden_state`` (rows, L, H) that
every term reads (pooled vectors, lexicon words' token vectors, the MLM head's input). The
backward that JAX derives for the scan is the two-pass algorithm: the terms' gradient with
respect to the cache first, then, chunk by chunk in reverse, the chunk's forward again and its
VJP with its slice of that cotangent, the parameter gradients summed over chunks. No chunk's
activations outlive its own backward. The masked-LM head runs the same way over chunks of
sentences (:func:`mlm_token_losses`), so (S, M, V) logits exist one chunk at a time.

Why the scan and not a hand-written two-pass ``custom_vjp``: the loss stays one function under
one ``value_and_grad`` (heads, queues, the EMA, scheduled weights, packing all unchanged), the
EMA and frozen passes (no gradient) are the same scan with nothing to recompute, and the
recomputation is XLA's, not ours. The cost is one more forward of each chunk of the online
passes: about 4/3 of a step's encoder FLOPs.

Dropout: chunk ``i`` of a pass draws its masks from ``fold_in(pass_key, i)``, a function of
(seed, step, pass, chunk), so the recomputation sees the masks of the first forward.

Layout: rows of a pass are split over ``shards`` devices in contiguous blocks (the batch
sharding); each device chunks its own block, so chunk ``i`` holds rows ``i*k .. (i+1)*k - 1``
of every device's block (and of every dropout view), and every device works in every
iteration. A device block whose rows are not a multiple of the chunk count (packed rows) is
padded with empty rows, which no sentence reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from softmcl_jax import losses, sharding

FIELD = "config.grad_cache.chunk"


def num_chunks(config: ml_collections.ConfigDict, shards: int) -> int:
    """Chunks per pass: the per-device batch over ``grad_cache.chunk``; 0 when caching is off."""
    chunk = config.grad_cache.chunk
    if not chunk:
        return 0
    return max(config.batch_size // shards // chunk, 1)


def check(chunk: int, batch_size: int, shards: int) -> None:
    """Refuse a chunk size that does not split the per-device batch into whole chunks
    (``ValueError`` naming the field and the numbers)."""
    if chunk < 0:
        raise ValueError(f"{FIELD}={chunk} must be >= 0 (0 = off)")
    if chunk == 0:
        return
    per_device = batch_size // shards
    if batch_size % shards == 0 and per_device % chunk == 0:
        return
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    raise ValueError(
        f"{FIELD}={chunk} does not divide the per-device batch: config.batch_size={batch_size} "
        f"over {shards} device{'s' if shards != 1 else ''} is {per_device} sentences per device"
        f"; use one of {divisors[:12]}{' ...' if len(divisors) > 12 else ''}")


def to_chunks(x: jax.Array, *, shards: int, chunks: int, views: int = 1) -> jax.Array:
    """(N, ...) -> (chunks, shards * views * k, ...), ``k = ceil(N / shards / chunks)``.

    Chunk ``i`` holds rows ``i*k .. i*k + k - 1`` of each device's block of ``N / shards`` rows
    (zero rows past a block's end), repeated for each of ``views`` dropout views, in the order
    (device, view, row), so that the chunk's axis 1 splits over the devices in blocks.
    """
    per_shard = x.shape[0] // shards
    k = math.ceil(per_shard / chunks)
    y = x.reshape(shards, per_shard, *x.shape[1:])
    if k * chunks != per_shard:
        pad = [(0, 0), (0, k * chunks - per_shard)] + [(0, 0)] * (x.ndim - 1)
        y = jnp.pad(y, pad)
    y = y.reshape(shards, chunks, 1, k, *x.shape[1:])
    y = jnp.broadcast_to(y, (shards, chunks, views, k, *x.shape[1:]))
    y = jnp.moveaxis(y, 1, 0)  # (chunks, shards, views, k, ...)
    return y.reshape(chunks, shards * views * k, *x.shape[1:])


def from_chunks(y: jax.Array, *, shards: int, views: int, rows: int) -> jax.Array:
    """The inverse of :func:`to_chunks` for a per-row output: (chunks, shards * views * k, ...)
    -> (views, rows, ...), the padding rows dropped.

    The views stay a separate axis: merged into one (views * rows) axis split over the devices,
    a device's rows of view 2 would have to move to another device; the consumers reduce each
    row first (pooling), so the views are merged, if at all, at the size of a vector per row.
    """
    chunks, tail = y.shape[0], y.shape[2:]
    k = y.shape[1] // (shards * views)
    y = y.reshape(chunks, shards, views, k, *tail)
    y = jnp.transpose(y, (2, 1, 0, 3, *range(4, y.ndim)))  # (views, shards, chunks, k, ...)
    y = y.reshape(views, shards, chunks * k, *tail)[:, :, : rows // shards]
    return y.reshape(views, rows, *tail)


def _constrain(tree: Any, mesh: Mesh | None) -> Any:
    """Chunked arrays: axis 1 split over the batch axes (each device keeps its own rows)."""
    if mesh is None:
        return tree
    spec = lambda x: NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec(x)), tree)


def scan_chunks(fn: Callable[[Any, jax.Array], Any], xs: Any, *, remat: bool) -> Any:
    """``fn(x_i, i)`` for each chunk ``i`` of ``xs`` (leading axis), stacked; under
    ``jax.checkpoint`` (nothing saved but the inputs) when ``remat``."""
    body = jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable,
                          prevent_cse=False) if remat else fn
    chunks = jax.tree.leaves(xs)[0].shape[0]
    _, out = jax.lax.scan(lambda carry, x: (carry, body(*x)), None,
                          (xs, jnp.arange(chunks, dtype=jnp.int32)))
    return out


def encode(forward: Callable[..., jax.Array], inputs: dict[str, jax.Array], *, views: int,
           shards: int, chunks: int, rng: jax.Array | None, remat: bool,
           mesh: Mesh | None = None) -> jax.Array:
    """The encoder's ``last_hidden_state`` (views, N, L, H) of ``inputs`` (each (N, L): ids,
    mask and, packed, segment ids), computed chunk by chunk.

    ``forward(inputs_chunk, rng_chunk) -> (rows, L, H)``; ``rng`` None: no dropout. ``remat``
    (a pass that is differentiated): keep nothing of a chunk's forward for its backward.
    """
    rows = jax.tree.leaves(inputs)[0].shape[0]
    xs = _constrain({k: to_chunks(v, shards=shards, chunks=chunks, views=views)
                     for k, v in inputs.items()}, mesh)

    def one(x, i):
        return forward(x, None if rng is None else jax.random.fold_in(rng, i))

    out = _constrain(scan_chunks(one, xs, remat=remat), mesh)
    return _constrain(from_chunks(out, shards=shards, views=views, rows=rows), mesh)


def mlm_token_losses(head: Callable[[jax.Array], jax.Array], at: jax.Array, labels: jax.Array,
                     *, shards: int, chunks: int, mesh: Mesh | None = None) -> jax.Array:
    """Per-token masked-LM cross-entropy (S, M), float32, 0 where ``labels == -100``, of the
    head's logits at the scored tokens' vectors ``at`` (S, M, H), chunk by chunk over the
    sentences: the (S, M, V) logits are never all held at once."""

    def one(x, _):
        return losses.masked_lm_loss(head(x["at"]), x["labels"], reduction="none")

    xs = _constrain({"at": to_chunks(at, shards=shards, chunks=chunks),
                     "labels": to_chunks(labels, shards=shards, chunks=chunks)}, mesh)
    out = _constrain(scan_chunks(one, xs, remat=True), mesh)
    return from_chunks(out, shards=shards, views=1, rows=at.shape[0])[0]
