"""Input pipeline: batches of stored rows from one or several sources, built by Grain.

    src = rows.MemorySource(rows.rows_from_encoded(encoded.arrays), max_len=128, pad_id=0)
    # or PreparedSource("prepared/vader"); several sources with weights make a mixture
    pipe = Pipeline([src], global_batch_size=64, seed=0, max_len=128, pad_id=0,
                    masking=MaskingConfig.from_tokenizer(tokenizer))
    with pipe.iterate(start_step=restored_step) as batches:
        for step, batch in zip(range(restored_step, num_steps), batches):
            state = train_step(state, batch)

**Sources.** A row source is anything with ``len(src)``, ``src.read(indices) -> list[bytes]``
(``rows.encode_row`` bytes) and ``src.manifest`` (``max_len``, ``pad_id``,
``length_histogram``, ...): ``rows.MemorySource`` for small data, a prepared folder's
``PreparedSource`` for large. Nothing else is assumed, except that packing and bucketing use
``src.lengths(indices)`` (the rows' token counts, without reading them) where a source has it;
see *Packing* below.

**A pure function of (seed, step).** The global batch at step ``s`` is
``Mixture.global_indices(s)`` (:mod:`softmcl_jax.data.mixture`): per-source epochs whose order
is drawn from ``(seed, epoch)``, per-step counts in closed form. Its MLM masks are drawn for
the whole (B, max_len) batch from ``(seed, s)``. Nothing is carried from step to step, so
``pipe.batch(s)`` is the same whether a run started at 0 or resumed at ``s``, a resumed run is
exact, and the global batch (masks included) does not depend on the number of processes. One
source gives exactly the examples each step always had (``drop_remainder``: an epoch has
``N // B`` steps and leaves out ``N % B`` rows, different ones each epoch).

**Each process reads only its rows.** Process ``p`` of ``P`` takes the contiguous block
``[p * b, (p + 1) * b)`` (``b = B / P``) of the global batch's slots: disjoint, equal, together
the global batch, the layout ``jax.make_array_from_process_local_data`` expects. It computes
the global indices (cheap arithmetic), reads its own block's rows from the sources
(``read``, ``rows.decode_row``, ``rows.pad_rows`` to ``max_len``: exactly
``encode_sentences``' arrays) and masks them with its rows of the global draws
(``masking.mask_token_rows``), so no process reads another's rows, yet every process holds
exactly its rows of what a single process would compute.

**Batches** hold the arrays of ``rows.pad_rows`` (``keys`` limits which; ``multi_labels`` with
``num_labels``), ``valid`` (b,) bool, all True (every row is a real row; the queue needs full
batches), and, with masking, ``mlm_input_ids`` (the corrupted ids) and ``mlm_labels`` (-100
where not predicted); ``input_ids`` stays uncorrupted for the contrastive views.
``rating_scales`` ``{key: spread}`` divides those ratings where present (absent markers kept),
as ``rating_units.in_spread_units`` does on whole arrays.

**Packing** (``packing_rows``, see :mod:`softmcl_jax.data.packing`). The batch is first made
exactly as without packing (same examples, same masks, every key unchanged), then its encoder
inputs are packed several sentences per row: ``packed_input_ids`` (and ``packed_mlm_input_ids``,
``packed_mlm_labels``), ``segment_ids`` (r, L) and ``sentence_row``, ``sentence_start`` (b,),
with ``r = R / P`` rows on each process, ``R`` the smallest of ``packing_rows`` (a few static
row counts, each its own compiled program) that holds the global batch. ``sentence_row``
numbers the rows of the *global* packed array (process p's rows are ``[p * r, (p + 1) * r)``).
Each process packs its own block in ``packing_shards`` sub-blocks (the devices the batch axis
is split over within the process), so a sentence's row lies on the device of its
sentence-level arrays. If not even the largest count holds the batch, the step is an overflow:
every process puts one sentence per row, in order (r = b, ``packing.pack_one_per_row``), a
further static shape; ``overflow_steps`` counts such steps as their batches are taken (not as
Grain makes them ahead) and a warning names each (the first ten, then the 16th, 32nd, 64th, ...),
numbered as the training metrics number steps: the batch of step ``s`` makes the update logged
as step ``s + 1``. At construction a warning says so when the largest count cannot hold the
batches: surely (the sources' shortest sentences, from their length histograms, do not fit:
``packing.min_rows_needed``), or for 5% or more of batches sampled from those histograms
(``packing.sampled_needs``). No sentence is ever dropped. Bucketing (``bucket_lengths``)
likewise cuts the token arrays to the smallest bucket that holds the global batch's longest
sentence.

*How the processes agree on R without reading each other's rows.* ``R`` must be decided on the
global batch (every process must feed the same shape, and the choice must not depend on the
process count), which needs every row's length. Three ways were weighed:

- every process reads the whole global batch (B reads a step instead of b): simple, but each
  process then reads every row, which is what a large corpus on many hosts cannot afford;
- each process packs its block and the count is agreed by a per-step allgather of the local
  needs (``multihost_utils``): a host collective every step in the consumer thread, packing
  moved out of Grain's workers into that thread, and simulated processes (tests) cannot agree;
- the sources keep every row's token count beside the rows (``src.lengths(indices)``;
  ``MemorySource`` holds them in memory, a prepared folder can keep a memory-mapped array of
  them): every process looks up the B lengths of the global batch, decides ``R`` exactly as a
  single process would, and packs its own block. No communication, no extra row read; the
  cost is the lengths array (2-4 bytes a row) and one lookup of B ints a step.

The last is what this does. A source without ``lengths`` still works: its rows' lengths are
read from the rows' headers (each process then reads the global batch's rows of that source:
correct, but the cost the first option has), and a warning at start-up names the source.

**Grain.** :meth:`iterate` is ``grain.MapDataset.range(start, stop).map(batch)`` turned into
an ``IterDataset`` with ``grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=
prefetch)`` (batches made ahead on threads; 0: on the caller's thread), or, with
``workers > 0``, made in that many worker processes (``mp_prefetch``); the consumer thread puts
each batch on ``sharding`` with ``jax.make_array_from_process_local_data``. Elements carry
their step, checked on arrival, so the order is exact. Kept from before, because Grain lacks
them: the index arithmetic (a mixture whose per-step counts are exact and closed-form, so any
step is computed alone; ``MapDataset.mix`` draws by weight per element and Grain's shuffles
per index, neither reproducing today's epochs), the masks' global draws, and the packer
(:mod:`~softmcl_jax.data.packing`): Grain's ``FirstFitPackIterDataset`` packs a *stream*
into a fixed number of rows, carrying sentences over to the next batch, so a batch's sentences
would depend on the history (no exact resume by step, no process-count independence), it
cannot keep each sentence on the device of its sentence-level arrays, cannot choose among
static row counts per batch, and does not emit the (sentence_row, sentence_start) gather
indices the sentence-level terms need.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from softmcl_jax.data import rows as rows_lib
from softmcl_jax.data.masking import MaskingConfig, mask_token_rows
from softmcl_jax.data.mixture import SHUFFLE_STREAM, Mixture, epoch_permutation
from softmcl_jax.data.packing import (
    PACKED_KEYS,
    PACKED_PREFIX,
    assign_rows,
    min_rows_needed,
    pack,
    pack_one_per_row,
    sampled_needs,
    shortest_length,
)
from softmcl_jax.data.rating_units import _present as rating_present

__all__ = ["SHUFFLE_STREAM", "TOKEN_KEYS", "Batches", "Pipeline", "RowSource",
           "epoch_permutation"]

log = logging.getLogger(__name__)

# Arrays with one entry per token, (b, L): what bucketing cuts to the batch's bucket length.
TOKEN_KEYS = frozenset({
    "input_ids", "attention_mask", "special_tokens_mask", "mlm_input_ids", "mlm_labels",
    "token_valence", "token_valence_mask", "token_arousal", "token_dominance", "token_type_ids"})
MLM_KEYS = ("mlm_input_ids", "mlm_labels")
PACKING_OUTPUTS = (*(PACKED_PREFIX + k for k in PACKED_KEYS), "segment_ids", "sentence_row",
                   "sentence_start")
# An endless run's stop: Grain's range needs one; no run gets near it.
_ENDLESS = sys.maxsize
# Arrays below this size leave Grain's worker processes pickled, not in shared memory.
_MIN_SHM_BYTES = 1 << 20
# The config field the row counts come from, named in the packing's errors and warnings.
PACKING_ROWS_FIELD = "config.data.packing_rows"
# Batches sampled from the length histograms at start-up to estimate how many steps will not
# fit the largest row count; fewer for large batches, to keep the start-up under ~0.5 s.
_CAPACITY_SAMPLES, _CAPACITY_WORK = 200, 1 << 16
# Warn up front when at least this share of the sampled batches does not fit: an overflow
# step runs one sentence per row (B rows, a further compiled program), so a few in a hundred
# already cost time, while the automatic counts overflow about one step in a thousand.
_CAPACITY_WARN_SHARE = 0.05
# Every overflow step is warned up to this many; after that only the 2^k-th, so a run whose
# rows never hold a batch does not log a line per step (overflow_steps counts them all).
_OVERFLOW_WARNINGS = 10


@runtime_checkable
class RowSource(Protocol):
    """What the pipeline reads: ``rows.MemorySource``, ``prepared.PreparedSource``."""

    manifest: Mapping[str, Any]

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> list[bytes]: ...


def _name(source: Any, k: int) -> str:
    return f"source {k} ({getattr(source, 'path', type(source).__name__)})"


def _row_lengths_from_headers(blobs: Sequence[bytes]) -> np.ndarray:
    # rows.encode_row's header is "<BBHHHi" (version, flags, n, ...): n, the token count, is
    # the little-endian uint16 at byte 2; no need to decode the row.
    return np.array([int.from_bytes(b[2:4], "little") for b in blobs], np.int64)


class _BatchMaker:
    """Everything ``batch(step)`` needs and nothing more (no sharding, no counters): what
    Grain's threads share and its worker processes receive (pickled)."""

    def __init__(self, sources: Sequence[Any], mixture: Mixture, *, global_batch_size: int,
                 seed: int, max_len: int, pad_id: int, emit: frozenset[str] | None,
                 masking: MaskingConfig | None, process_index: int, process_count: int,
                 packing_rows: tuple[int, ...] | None, packing_shards: int,
                 bucket_lengths: tuple[int, ...], rating_scales: dict[str, float],
                 num_labels: int | None, num_steps: int | None):
        self.sources, self.mixture = list(sources), mixture
        self.global_batch_size, self.seed = global_batch_size, seed
        self.max_len, self.pad_id, self.emit = max_len, pad_id, emit
        self.masking = masking
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.packing_rows, self.packing_shards = packing_rows, packing_shards
        self.bucket_lengths, self.rating_scales = bucket_lengths, rating_scales
        self.num_labels, self.num_steps = num_labels, num_steps
        # Text pairs' token_type_ids are made only when asked for (keys): single-text runs'
        # batches keep exactly the arrays they always had.
        self.token_types = emit is not None and "token_type_ids" in emit

    # -- what every process computes about the whole global batch ----------------------------

    def global_lengths(self, source: np.ndarray, row: np.ndarray) -> np.ndarray:
        """(B,) the token counts of the global batch's rows, from the sources' ``lengths``
        (no row read), or their rows' headers for a source without it."""
        out = np.empty(len(row), np.int64)
        for k in np.unique(source).tolist():
            at = source == k
            src = self.sources[k]
            if hasattr(src, "lengths"):
                out[at] = np.asarray(src.lengths(row[at]), np.int64)
            else:
                out[at] = _row_lengths_from_headers(src.read(row[at]))
        return out

    def packed_rows(self, lens: np.ndarray) -> int | None:
        """The global packed row count of a batch of ``lens``: the smallest of
        ``packing_rows`` whose process-and-shard blocks all hold their sentences; None: an
        overflow. Decided on the global batch, so every process gets the same answer."""
        assert self.packing_rows is not None
        return next(
            (r for r in self.packing_rows
             if assign_rows(lens, max_len=self.max_len, rows=r,
                            shards=self.process_count * self.packing_shards) is not None), None)

    def bucket_length(self, lens: np.ndarray) -> int:
        """The smallest bucket holding the global batch's longest sentence (else max_len)."""
        longest = int(lens.max())
        return next((b for b in self.bucket_lengths if longest <= b <= self.max_len),
                    self.max_len)

    # -- this process's rows -----------------------------------------------------------------

    def read_rows(self, source: np.ndarray, row: np.ndarray,
                  lens: np.ndarray | None) -> list[rows_lib.Row]:
        """The decoded rows of one block of slots (one ``read`` per source present)."""
        decoded: list[rows_lib.Row | None] = [None] * len(row)
        for k in np.unique(source).tolist():
            at = np.flatnonzero(source == k)
            src = self.sources[k]
            # A prepared folder decodes (and checks) each row once; other sources give bytes.
            got = (src.read_rows(row[at]) if hasattr(src, "read_rows")
                   else [rows_lib.decode_row(b) for b in src.read(row[at])])
            for i, r in zip(at.tolist(), got, strict=True):
                decoded[i] = r
        if lens is not None:  # the lengths the batch was packed by must be the rows' own
            for i, r in enumerate(decoded):
                if len(r.input_ids) != lens[i]:
                    k = int(source[i])
                    raise ValueError(
                        f"{_name(self.sources[k], k)}: row {int(row[i])} has "
                        f"{len(r.input_ids)} tokens, its lengths() says {int(lens[i])}")
        return decoded

    def make(self, step: int) -> tuple[dict[str, np.ndarray], bool]:
        """(this process's batch at ``step``, whether it overflowed the packing)."""
        step = int(step)
        if step < 0 or (self.num_steps is not None and step >= self.num_steps):
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        source, row = self.mixture.global_indices(step)
        b = self.local_batch_size
        mine = slice(self.process_index * b, (self.process_index + 1) * b)
        lens = None
        if self.packing_rows is not None or self.bucket_lengths:
            lens = self.global_lengths(source, row)
        rows = self.read_rows(source[mine], row[mine], None if lens is None else lens[mine])
        out = rows_lib.pad_rows(rows, max_len=self.max_len, pad_id=self.pad_id,
                                num_labels=self.num_labels, token_types=self.token_types)
        out["valid"] = np.ones(b, bool)
        for key, spread in self.rating_scales.items():
            x = out[key]
            out[key] = np.where(rating_present(out, key), x / spread, x).astype(x.dtype)
        if self.masking is not None:
            # This process's rows of the global batch's masks, drawn from (seed, step) for the
            # whole (B, max_len) batch (process 0's stream whatever this process is): the
            # corruption of an example does not depend on how many processes share the batch.
            m = self.masking
            out["mlm_input_ids"], out["mlm_labels"] = mask_token_rows(
                out["input_ids"], out["special_tokens_mask"], row_start=mine.start,
                global_batch_size=self.global_batch_size, mask_token_id=m.mask_token_id,
                vocab_size=m.vocab_size, special_ids=m.special_ids, rate=m.rate,
                mask_fraction=m.mask_fraction, random_fraction=m.random_fraction,
                max_predictions=m.max_predictions, seed=self.seed, step=step, process_index=0)
        overflowed = False
        if self.bucket_lengths:
            assert lens is not None
            length = self.bucket_length(lens)
            out = {k: v[:, :length] if k in TOKEN_KEYS and v.shape[1] == self.max_len else v
                   for k, v in out.items()}
        elif self.packing_rows is not None:
            assert lens is not None
            out, overflowed = self._pack(out, lens)
        if self.emit is not None:
            out = {k: v for k, v in out.items() if k in self.emit}
        return out, overflowed

    def _pack(self, out: dict[str, np.ndarray], lens: np.ndarray
              ) -> tuple[dict[str, np.ndarray], bool]:
        global_rows = self.packed_rows(lens)
        if global_rows is not None:
            rows = global_rows // self.process_count
            packed = pack(out, rows=rows, shards=self.packing_shards, pad_id=self.pad_id)
            assert packed is not None  # the global batch fits, so every process block does
        else:
            rows = self.local_batch_size
            packed = pack_one_per_row(out, pad_id=self.pad_id)
        if self.process_index:  # number rows in the global packed array
            packed["sentence_row"] += self.process_index * rows
        return packed, global_rows is None

    def element(self, step: int) -> tuple[int, dict[str, np.ndarray], bool]:
        """What Grain makes for ``step``: the step (checked by the consumer), the batch, and
        whether it overflowed (counted by the consumer: workers share no counters)."""
        batch, overflowed = self.make(step)
        return int(step), batch, overflowed


class Batches(Iterator[dict[str, Any]]):
    """The batches of :meth:`Pipeline.iterate`, in step order; ``close()`` (or leaving a
    ``with`` block) stops Grain's threads and worker processes."""

    def __init__(self, iterator: Iterator[tuple[int, dict[str, np.ndarray], bool]],
                 pipeline: Pipeline, start_step: int):
        self._it, self._pipeline, self.step = iterator, pipeline, start_step

    def __next__(self) -> dict[str, Any]:
        step, batch, overflowed = next(self._it)
        if step != self.step:  # Grain keeps the order; this is the proof, cheaply
            raise RuntimeError(f"the pipeline produced step {step} where {self.step} was due")
        self.step += 1
        if overflowed:
            self._pipeline._note_overflow(step)
        return batch if self._pipeline.sharding is None else self._pipeline._to_device(batch)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pipeline:
    """Batches of stored rows for one process; see the module docstring.

    Args:
      sources: row sources (or one source): ``len``, ``read``, ``manifest``.
      weights: one per source (> 0, any scale); None: equal. Each source must get at least one
        row a step (``w B >= 1``).
      global_batch_size: ``B``, rows per step over all processes; a multiple of
        ``process_count``.
      seed: shuffling, interleaving and masking seed.
      max_len, pad_id: the padded length and the pad id; every source's manifest must agree.
      keys: the arrays of ``rows.pad_rows`` to emit (None: all); ``valid``, the MLM keys and the
        packed keys are emitted whenever their feature is on.
      masking: MLM corruption to add (``mlm_input_ids``, ``mlm_labels``); None for none.
      process_index, process_count: this host's place; ``jax.process_index()`` /
        ``jax.process_count()`` when None.
      prefetch: batches made ahead on Grain's threads (0: on the caller's thread); with
        ``workers``, the buffer of each worker process.
      workers: Grain worker processes (``mp_prefetch``) making batches; 0: none.
      sharding: if given, batches are global ``jax.Array``s laid out by this sharding
        (assembled from each process's rows with ``jax.make_array_from_process_local_data``);
        if None, numpy arrays.
      packing_rows: pack the encoder inputs into this many rows per global step, or into the
        smallest of several such counts that holds the batch (each a multiple of
        ``process_count * packing_shards``, at most ``global_batch_size``; see
        ``packing.choose_rows_from_histograms``); None (default) packs nothing.
      packing_shards: the devices the batch axis is split over within one process; each gets
        its sentences packed into its own rows.
      bucket_lengths: cut the token arrays to the smallest of these lengths that holds the
        global batch's longest sentence (an alternative to packing).
      rating_scales: ``{rating key: spread}`` to divide the present ratings by.
      num_labels: adds ``multi_labels`` (b, num_labels).
      num_steps: the pipeline ends after this many steps; None: never.
    """

    def __init__(
        self,
        sources: Sequence[Any] | Any,
        *,
        weights: Sequence[float] | None = None,
        global_batch_size: int,
        seed: int,
        max_len: int,
        pad_id: int,
        keys: Sequence[str] | set[str] | frozenset[str] | None = None,
        masking: MaskingConfig | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        workers: int = 0,
        sharding: Any = None,
        packing_rows: int | Sequence[int] | None = None,
        packing_shards: int = 1,
        bucket_lengths: Sequence[int] = (),
        rating_scales: Mapping[str, float] | None = None,
        num_labels: int | None = None,
        num_steps: int | None = None,
    ):
        if isinstance(sources, RowSource):
            sources = [sources]
        sources = list(sources)
        if not sources:
            raise ValueError("no sources")
        for k, src in enumerate(sources):
            if not isinstance(src, RowSource):
                raise TypeError(f"source {k} ({type(src).__name__}) is not a row source: it "
                                "needs len(), read(indices) and manifest")
            man = src.manifest
            if int(man["max_len"]) != max_len:
                raise ValueError(f"{_name(src, k)} was prepared for max_len {man['max_len']}, "
                                 f"the pipeline pads to max_len {max_len}")
            if int(man["pad_id"]) != pad_id:
                raise ValueError(f"{_name(src, k)} pads with id {man['pad_id']}, the pipeline "
                                 f"with {pad_id}: another tokenizer")
        if process_index is None or process_count is None:
            import jax  # noqa: PLC0415 - only needed when the caller does not say

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if sharding is not None:
            import jax  # noqa: PLC0415

            if process_count != jax.process_count():
                # make_array_from_process_local_data assembles the real processes' shards.
                raise ValueError(f"process_count {process_count} is simulated (JAX has "
                                 f"{jax.process_count()}); sharding needs the real one")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple "
                             f"of process_count {process_count}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if prefetch < 0 or workers < 0:
            raise ValueError(f"prefetch {prefetch} and workers {workers} must be >= 0")
        if num_steps is not None and num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        self.sources = sources
        sizes = [len(s) for s in sources]
        self.num_examples = sum(sizes)
        if len(sources) == 1 and sizes[0] and sizes[0] < global_batch_size:
            # One source is read in epochs of whole batches, as it always was.
            raise ValueError(f"{sizes[0]} examples make no full global batch of "
                             f"{global_batch_size}")
        self.mixture = Mixture(sizes, weights, global_batch_size=global_batch_size, seed=seed)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.seed, self.masking, self.max_len, self.pad_id = seed, masking, max_len, pad_id
        self.prefetch, self.workers, self.sharding = prefetch, workers, sharding
        self.num_steps, self.num_labels = num_steps, num_labels
        if len(sources) == 1:
            self.steps_per_epoch: int | None = sizes[0] // global_batch_size
            self.dropped_per_epoch: int | None = sizes[0] % global_batch_size
            if self.dropped_per_epoch:
                log.info("each epoch leaves out %d of %d examples (drop_remainder; a different "
                         "%d each epoch)", self.dropped_per_epoch, sizes[0],
                         self.dropped_per_epoch)
        else:  # epochs are per source; a step is no fraction of any one epoch
            self.steps_per_epoch = self.dropped_per_epoch = None

        # The row counts a step may have, ascending; None: no packing.
        self.packing_rows: tuple[int, ...] | None = None
        self.packing_shards = packing_shards
        self._overflowed: set[int] = set()
        if packing_rows is not None:
            counts = ((packing_rows,) if isinstance(packing_rows, int | np.integer)
                      else tuple(packing_rows))
            if packing_shards < 1 or self.local_batch_size % packing_shards:
                raise ValueError(f"packing_shards {packing_shards} must divide the local batch "
                                 f"size {self.local_batch_size}")
            if not counts:
                raise ValueError(f"{PACKING_ROWS_FIELD} is empty: give at least one row count")
            blocks = process_count * packing_shards
            for rows in counts:
                if rows <= 0 or rows % blocks:
                    # Each device packs its own sentences into its own rows (module docstring).
                    raise ValueError(
                        f"{PACKING_ROWS_FIELD}={rows} must be a positive multiple of the "
                        f"{blocks} devices the batch is split over ({process_count} "
                        f"process(es) x {packing_shards} device(s) each: each device packs its "
                        f"sentences into its own rows), e.g. {max(rows // blocks, 1) * blocks}")
                if rows > global_batch_size:
                    raise ValueError(f"{PACKING_ROWS_FIELD}={rows} is more than the global batch "
                                     f"of {global_batch_size} sentences (config.batch_size): "
                                     "at most one row per sentence")
            self.packing_rows = tuple(sorted({int(r) for r in counts}))
        self.bucket_lengths = tuple(sorted(int(b) for b in bucket_lengths))
        if self.bucket_lengths:
            if packing_rows is not None:
                raise ValueError("bucket_lengths and packing_rows are alternatives: give one")
            if self.bucket_lengths[0] < 1:
                raise ValueError(f"bucket_lengths {self.bucket_lengths} must be positive")
        # The share of steps the sampled batches say will overflow (None: not estimated).
        self.overflow_estimate: float | None = None
        if self.packing_rows is not None:
            self.overflow_estimate = self._check_capacity()
        if self.packing_rows is not None or self.bucket_lengths:
            for k, src in enumerate(sources):
                if not hasattr(src, "lengths"):
                    log.warning("%s has no lengths(): every process reads the global batch's "
                                "rows of it to size the packing (correct, but B reads a step "
                                "instead of B / processes)", _name(src, k))

        scales = dict(rating_scales or {})
        for key, spread in scales.items():
            if key not in rows_lib.RATING_KEYS:
                raise ValueError(f"rating_scales: {key!r} is not a rating key "
                                 f"{rows_lib.RATING_KEYS}")
            if not spread > 0:
                raise ValueError(f"rating_scales[{key!r}] = {spread}: a spread must be > 0")
        self.rating_scales = scales

        available = set(rows_lib.pad_rows([], max_len=max_len, pad_id=pad_id,
                                          num_labels=num_labels, token_types=True))
        generated = {"valid"}
        if masking is not None:
            generated |= set(MLM_KEYS)
        if self.packing_rows is not None:
            generated |= set(PACKING_OUTPUTS)
        emit = None
        if keys is not None:
            keys = set(keys)
            if "multi_labels" in keys and not num_labels:
                raise ValueError("keys: multi_labels needs num_labels")
            unknown = keys - available - generated
            if unknown:
                raise ValueError(f"keys {sorted(unknown)} are not arrays the pipeline makes: "
                                 f"{sorted(available | generated)}")
            emit = frozenset((keys & available) | generated)
        self.keys = emit

        self._maker = _BatchMaker(
            sources, self.mixture, global_batch_size=global_batch_size, seed=seed,
            max_len=max_len, pad_id=pad_id, emit=emit, masking=masking,
            process_index=process_index, process_count=process_count,
            packing_rows=self.packing_rows, packing_shards=packing_shards,
            bucket_lengths=self.bucket_lengths, rating_scales=scales, num_labels=num_labels,
            num_steps=num_steps)

    def global_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source (B,), row (B,))`` of the whole global batch at ``step``."""
        return self.mixture.global_indices(step)

    @property
    def overflow_steps(self) -> int:
        """Steps (distinct values) whose batch did not fit into the largest of ``packing_rows``
        so far, counted as batches are taken (``next`` on :meth:`iterate`'s batches,
        :meth:`batch`), never the ones Grain made ahead."""
        return len(self._overflowed)

    def _rows_setting(self) -> str:
        assert self.packing_rows is not None
        rows = self.packing_rows
        return f"{PACKING_ROWS_FIELD}={rows[0] if len(rows) == 1 else rows}"

    def _check_capacity(self) -> float | None:
        """Warn once, at start, when the largest row count cannot hold the batches: surely
        (even the shortest sentences the sources have do not fit), or for at least
        ``_CAPACITY_WARN_SHARE`` of the batches sampled from the sources' length histograms.
        Returns the sampled share of overflowing steps (None: a source has no histogram)."""
        assert self.packing_rows is not None
        hists = [s.manifest.get("length_histogram") for s in self.sources]
        if any(h is None or not sum(h) for h in hists):
            return None
        rows, b = self.packing_rows[-1], self.global_batch_size
        shards = self.process_count * self.packing_shards
        instead = (f"packed one sentence per row ({b} rows, a program of its own) instead; "
                   f"{PACKING_ROWS_FIELD}=0 chooses the counts from the data's lengths")
        least = min_rows_needed(hists, batch_size=b, max_len=self.max_len, shards=shards)
        if least > rows:
            where = f" ({shards} blocks, one a device)" if shards > 1 else ""
            log.warning("%s cannot hold a batch: %d sentences of at least %d tokens (the "
                        "shortest the data has) need at least %d rows of %d tokens%s; every "
                        "step will be %s", self._rows_setting(), b, shortest_length(hists),
                        least, self.max_len, where, instead)
            return 1.0
        samples = max(10, min(_CAPACITY_SAMPLES, _CAPACITY_WORK // b))
        # Another stream than the automatic counts' (the config seed): an independent look.
        need = sampled_needs(hists, self.mixture.weights, batch_size=b, max_len=self.max_len,
                             shards=shards, seed=self.seed + 1, samples=samples)
        over = int((need > rows).sum())
        if over >= _CAPACITY_WARN_SHARE * samples:
            log.warning("%s holds too few batches: %d of %d batches sampled from the sources' "
                        "length histograms need more rows (up to %d), so about %.0f%% of the "
                        "steps will be %s", self._rows_setting(), over, samples,
                        int(need.max()), 100 * over / samples, instead)
        return over / samples

    def _note_overflow(self, step: int) -> None:
        """Count (once per step value) and warn about an overflow step, when its batch is
        taken (never when a Grain thread or worker made it ahead), numbered as the training
        metrics are: the batch of step ``s`` makes the update logged as step ``s + 1``."""
        if step in self._overflowed:
            return
        self._overflowed.add(step)
        n = len(self._overflowed)
        if n > _OVERFLOW_WARNINGS and n & (n - 1):
            return
        assert self.packing_rows is not None
        nxt = 1 << n.bit_length()
        later = (f"; further ones are counted, and warned when the count reaches {nxt}, "
                 f"{2 * nxt}, {4 * nxt}, ..." if n == _OVERFLOW_WARNINGS else "")
        log.warning("step %d: the batch does not fit into %d packed rows (%s); packed one "
                    "sentence per row (%d rows) instead (%d overflow step(s) in this run so "
                    "far)%s", step + 1, self.packing_rows[-1], self._rows_setting(),
                    self.global_batch_size, n, later)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch at global ``step`` (numpy), made on the caller's thread."""
        batch, overflowed = self._maker.make(step)
        if overflowed:
            self._note_overflow(int(step))
        return batch

    def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import jax  # noqa: PLC0415

        def put(x: np.ndarray) -> Any:
            global_shape = (x.shape[0] * self.process_count, *x.shape[1:])
            return jax.make_array_from_process_local_data(self.sharding, x, global_shape)

        return {k: put(v) for k, v in batch.items()}

    def iterate(self, start_step: int = 0) -> Batches:
        """Batches for steps ``start_step, start_step + 1, ...`` until ``num_steps`` (or forever),
        made by Grain (module docstring); close the result (or use ``with``) when done."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        import grain  # noqa: PLC0415 - a 2 s import that only iterating needs

        stop = _ENDLESS if self.num_steps is None else max(self.num_steps, start_step)
        ds = grain.MapDataset.range(start_step, stop).map(self._maker.element)
        if self.workers > 0:
            from absl import flags  # noqa: PLC0415

            if not flags.FLAGS.is_parsed():
                # Grain's worker start-up reads its absl flags; a program without absl.app
                # (a notebook, pytest) has parsed none: take their defaults, as absl.app would.
                flags.FLAGS.mark_as_parsed()
            # Each worker makes every workers-th step on its own thread; their outputs are
            # interleaved back into step order.
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            # A batch is a few dozen small arrays: pickled through the workers' queue they cost
            # less than a shared-memory block each (open, map, unlink); large ones still go
            # through shared memory.
            it = grain.experimental.WithOptionsIterDataset(
                it, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES))
            it = it.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)))
        else:
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.prefetch,
                                                      prefetch_buffer_size=self.prefetch))
        return Batches(iter(it), self, start_step)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iterate(0)

    def _mean_length(self) -> float:
        """The mean row length of the mixture, from the sources' length histograms."""
        means = []
        for src in self.sources:
            h = np.asarray(src.manifest["length_histogram"], np.float64)
            means.append(float((h * np.arange(len(h))).sum() / max(h.sum(), 1.0)))
        return float(sum(float(w) * m for w, m in zip(self.mixture.weights, means, strict=True)))

    def describe(self) -> str:
        """One line on the epoch arithmetic, the mixture and packing, for logs."""
        b, p = self.global_batch_size, self.process_count
        where = f"global batch {b} ({self.local_batch_size} on each of {p} processes)"
        if len(self.sources) == 1:
            text = (f"{self.num_examples} examples, {where}, {self.steps_per_epoch} steps per "
                    f"epoch, {self.dropped_per_epoch} examples left out per epoch")
        else:
            parts = ", ".join(
                f"{getattr(s, 'path', k)}: {len(s)} rows x {float(w):.3g} "
                f"({float(w) * b:.3g} a step)"
                for k, (s, w) in enumerate(zip(self.sources, self.mixture.weights, strict=True)))
            text = (f"{self.num_examples} rows in {len(self.sources)} sources ({parts}), "
                    f"{where}; each source's epochs cut to a multiple of {b} rows")
        if self.packing_rows is not None:
            mean = self._mean_length()
            tokens = mean * b
            full = self.max_len
            text += (f"; packed into {' or '.join(map(str, self.packing_rows))} rows per step "
                     f"(the smallest that holds the batch; split over {p} processes x "
                     f"{self.packing_shards} shards; overflow: {b} rows), real tokens "
                     f"{mean / full:.1%} unpacked -> "
                     f"{tokens / (self.packing_rows[-1] * full):.1%} "
                     f"({self.packing_rows[-1]} rows) to "
                     f"{tokens / (self.packing_rows[0] * full):.1%} "
                     f"({self.packing_rows[0]} rows) packed, for an average batch")
            if self.overflow_estimate:
                # Above 100% the "packed" fractions are what the rows would need to hold.
                text += (f"; {self.overflow_estimate:.0%} of the batches sampled at start do "
                         f"not fit {self.packing_rows[-1]} rows (overflow)")
        if self.bucket_lengths:
            text += f"; token arrays cut to buckets {self.bucket_lengths}"
        return text

