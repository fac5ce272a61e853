"""Input pipeline: shuffled, sharded, fixed-shape, masked batches, prefetched on a thread.

    encoded = encode_sentences(sentences, tokenizer, lexicon, max_len=128)
    pipe = Pipeline(encoded.arrays, global_batch_size=64, seed=0,
                    masking=MaskingConfig.from_tokenizer(tokenizer))
    with pipe.iterate(start_step=restored_step) as batches:
        for step, batch in zip(range(restored_step, num_steps), batches):
            state = train_step(state, batch)

Everything about the batch at global step ``s`` is a pure function of ``(seed, s)`` and the
process's index: the epoch is ``s // steps_per_epoch``, its order a permutation drawn from
``(seed, epoch)``, the MLM masks of the whole global batch are drawn from ``(seed, s)`` and each
process keeps its rows. So ``pipe.batch(s)`` is the same whether the run started at 0 or resumed
at ``s``, a resumed run is exact, and the global batch (masks included) does not depend on the
number of processes sharing it.

**Sharding.** Every process holds the whole encoded data (encoding is deterministic) and takes,
from each global batch of ``global_batch_size`` rows, the contiguous block
``[p * b, (p + 1) * b)`` with ``b = global_batch_size / process_count``: disjoint, equal, and
together the global batch. That is the layout ``jax.make_array_from_process_local_data`` expects
for a batch axis sharded over a mesh whose devices are ordered by process.

**Fixed shapes.** Rows are already padded to ``max_len``. With ``drop_remainder=True`` (the
default; the momentum queue needs its size K to be a multiple of the global batch, so every
batch must be full) an epoch has ``N // global_batch_size`` steps and leaves out
``N % global_batch_size`` examples (``dropped_per_epoch``); the order is redrawn every epoch, so
different examples are left out each time, none for good. With ``drop_remainder=False`` the last
batch is filled up with rows from the start of the epoch's order that are marked
``valid=False`` and carry no supervision (labels -1, no valences, no MLM targets).

**Batches** hold every key of the encoded arrays, sliced, plus ``valid`` (b,) bool and, with
masking, ``mlm_input_ids`` (the corrupted ids) and ``mlm_labels`` (-100 where not predicted);
``input_ids`` stays uncorrupted for the contrastive views.

**Packing** (``packing_rows``, see :mod:`softmcl_jax.data.packing`). The batch is first made
exactly as without packing (same examples, same masks, every key unchanged), then its encoder
inputs are packed several sentences per row: ``packed_input_ids`` (and ``packed_mlm_input_ids``,
``packed_mlm_labels``), ``segment_ids`` (r, L) and ``sentence_row``, ``sentence_start`` (b,),
with ``r = R / process_count`` rows on each process, ``R`` the smallest of ``packing_rows`` (a
few static row counts, each its own compiled program) that holds the global batch.
``sentence_row`` numbers the rows
of the *global* packed array (process p's rows are ``[p * r, (p + 1) * r)``), so it indexes the
``jax.Array`` that the processes' rows assemble into. Each process packs its own block of the
global batch, in ``packing_shards`` sub-blocks (the devices the batch axis is split over within
the process), so a sentence's row lies on the device of its sentence-level arrays. The count is
decided on the global batch, so every process agrees and all run the same program. If not even
the largest holds it, the step is an overflow: every process puts one sentence per row, in
order (r = b, ``packing.pack_one_per_row``), a further static shape; ``overflow_steps`` counts
such steps and a warning names each. No sentence is ever dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from softmcl_jax.data.masking import MaskingConfig, mask_tokens
from softmcl_jax.data.packing import assign_rows, pack, pack_one_per_row, pad_id_of
from softmcl_jax.data.packing import lengths as sentence_lengths

log = logging.getLogger(__name__)

# Distinguishes the shuffling stream from the masking stream (masking.py) for equal numbers.
SHUFFLE_STREAM = 0x5348  # "SH"
# Arrays with one entry per token, (b, L): what bucketing cuts to the batch's bucket length.
TOKEN_KEYS = frozenset({
    "input_ids", "attention_mask", "special_tokens_mask", "mlm_input_ids", "mlm_labels",
    "token_valence", "token_valence_mask", "token_arousal", "token_dominance"})
# What a padding row (drop_remainder=False) carries instead of supervision.
_NO_SUPERVISION = {
    "labels": -1, "multi_labels": 0, "sentence_valence": -1.0, "sentence_valence_mask": False,
    "token_valence": 0.0, "token_valence_mask": False, "sentence_arousal": -1.0,
    "sentence_dominance": -1.0, "token_arousal": -1.0, "token_dominance": -1.0,
}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in ``epoch``: a function of (seed, epoch) only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(SHUFFLE_STREAM,)))
    return rng.permutation(num_examples)


class _End:
    pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Iterator[Any]):
    """Runs an iterable on a background thread, ``size`` items ahead, behind a bounded queue.

    An exception in the producer is re-raised in the consumer at the item where it happened
    (after the items produced before it). ``close()`` (or leaving the ``with`` block, or dropping
    the last reference) stops the thread; it never blocks interpreter exit (daemon thread).
    """

    def __init__(self, source: Iterable[Any], size: int = 2, *, name: str = "prefetch"):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        # The thread must not hold a reference to self, or self could never be collected (and
        # the finaliser that stops the thread would never run).
        self._thread = threading.Thread(
            target=Prefetcher._produce, args=(iter(source), self._queue, self._stop),
            name=name, daemon=True)
        self._finalizer = weakref.finalize(self, Prefetcher._shutdown, self._stop, self._queue,
                                           self._thread)
        self._thread.start()

    @staticmethod
    def _produce(it: Iterator[Any], q: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in it:
                if not put(item):
                    return
            put(_End())
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(e))

    @staticmethod
    def _shutdown(stop: threading.Event, q: queue.Queue[Any], thread: threading.Thread) -> None:
        stop.set()
        while True:  # free a producer blocked on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                break
        if thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self._done = True
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer thread and drop what it had queued; idempotent."""
        self._done = True
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pipeline:
    """Batches of encoded examples for one process; see the module docstring.

    Args:
      arrays: equal-length numpy arrays (``Encoded.arrays``); needs ``input_ids`` and, with
        masking, ``special_tokens_mask`` (or ``attention_mask``, then special ids come from
        ``masking.special_ids``).
      global_batch_size: rows per step over all processes; a multiple of ``process_count``.
      seed: shuffling and masking seed.
      shuffle: False keeps the data order (every epoch the same).
      drop_remainder: drop the last short batch of each epoch (default) or fill it with
        ``valid=False`` rows.
      num_epochs: stop after this many epochs; None repeats forever.
      masking: MLM corruption to add (``mlm_input_ids``, ``mlm_labels``); None for none.
      process_index, process_count: this host's place; ``jax.process_index()`` /
        ``jax.process_count()`` when None.
      prefetch: batches made ahead on a background thread; 0 makes them on the caller's thread.
      sharding: if given, batches are global ``jax.Array``s laid out by this sharding (assembled
        from each process's rows with ``jax.make_array_from_process_local_data``); if None,
        numpy arrays.
      packing_rows: pack the encoder inputs into this many rows per global step, or into the
        smallest of several such counts that holds the batch (each a multiple of
        ``process_count * packing_shards``, at most ``global_batch_size``; see
        :func:`~softmcl_jax.data.packing.choose_rows`); None (default) packs nothing. Needs
        ``attention_mask``.
      packing_shards: the devices the batch axis is split over within one process; each gets
        its sentences packed into its own rows.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        num_epochs: int | None = None,
        masking: MaskingConfig | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        sharding: Any = None,
        packing_rows: int | Sequence[int] | None = None,
        packing_shards: int = 1,
        bucket_lengths: Sequence[int] = (),
    ):
        if "input_ids" not in arrays:
            raise ValueError("arrays must contain input_ids")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: len(v) for k, v in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays have different lengths: {lengths}")
        self.num_examples = lengths["input_ids"]
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
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        self.num_epochs, self.masking = num_epochs, masking
        self.prefetch, self.sharding = prefetch, sharding

        if drop_remainder:
            self.steps_per_epoch = self.num_examples // global_batch_size
            self.dropped_per_epoch = self.num_examples % global_batch_size
        else:
            self.steps_per_epoch = -(-self.num_examples // global_batch_size)
            self.dropped_per_epoch = 0
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_examples} examples make no full global batch of "
                             f"{global_batch_size}")
        if self.dropped_per_epoch:
            log.info("each epoch leaves out %d of %d examples (drop_remainder; a different %d "
                     "each epoch)", self.dropped_per_epoch, self.num_examples,
                     self.dropped_per_epoch)
        if masking is not None and "special_tokens_mask" not in self.arrays:
            if "attention_mask" not in self.arrays:
                raise ValueError("masking needs special_tokens_mask or attention_mask")
            self.arrays["special_tokens_mask"] = (
                np.isin(self.arrays["input_ids"], masking.special_ids)
                | (self.arrays["attention_mask"] == 0))
        self._perm_cache: tuple[int, np.ndarray] | None = None

        # The row counts a step may have, ascending; None: no packing.
        self.packing_rows: tuple[int, ...] | None = None
        self.packing_shards = packing_shards
        self._overflowed: set[int] = set()
        if packing_rows is not None:
            counts = ((packing_rows,) if isinstance(packing_rows, int | np.integer)
                      else tuple(packing_rows))
            if "attention_mask" not in self.arrays:
                raise ValueError("packing_rows needs attention_mask in the arrays")
            if packing_shards < 1 or self.local_batch_size % packing_shards:
                raise ValueError(f"packing_shards {packing_shards} must divide the local batch "
                                 f"size {self.local_batch_size}")
            if not counts:
                raise ValueError("packing_rows is empty: give at least one row count")
            for rows in counts:
                if rows <= 0 or rows % (process_count * packing_shards):
                    raise ValueError(f"packing_rows {rows} must be a positive multiple of "
                                     f"process_count * packing_shards = "
                                     f"{process_count} * {packing_shards}")
                if rows > global_batch_size:
                    raise ValueError(f"packing_rows {rows} is more than global_batch_size "
                                     f"{global_batch_size} (one sentence per row)")
            self.packing_rows = tuple(sorted({int(r) for r in counts}))
            self.lengths = sentence_lengths(self.arrays["attention_mask"])
            pos = np.arange(self.arrays["input_ids"].shape[1])
            if not np.array_equal(pos[None] < self.lengths[:, None],
                                  self.arrays["attention_mask"].astype(bool)):
                raise ValueError("packing needs right padding: attention_mask ones then zeros")
            self.pad_id = pad_id_of(self.arrays["input_ids"], self.arrays["attention_mask"])
        self.bucket_lengths = tuple(sorted(int(b) for b in bucket_lengths))
        if self.bucket_lengths:
            if packing_rows is not None:
                raise ValueError("bucket_lengths and packing_rows are alternatives: give one")
            if "attention_mask" not in self.arrays:
                raise ValueError("bucket_lengths needs attention_mask in the arrays")
            if self.bucket_lengths[0] < 1:
                raise ValueError(f"bucket_lengths {self.bucket_lengths} must be positive")
            self.lengths = sentence_lengths(self.arrays["attention_mask"])

    @property
    def num_steps(self) -> int | None:
        """Steps until the pipeline ends (None: never)."""
        return None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        cached = self._perm_cache  # read once: the producer thread may replace it
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            perm = epoch_permutation(self.num_examples, self.seed, epoch)
        else:
            perm = np.arange(self.num_examples)
        self._perm_cache = (epoch, perm)
        return perm

    def global_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(example indices, valid) of the whole global batch at ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        g = self.global_batch_size
        idx = perm[i * g:(i + 1) * g]
        valid = np.ones(g, bool)
        if len(idx) < g:  # drop_remainder=False, last batch: top up from the start, invalid
            valid[len(idx):] = False
            idx = np.concatenate([idx, perm[:g - len(idx)]])
        return idx, valid

    @property
    def overflow_steps(self) -> int:
        """Steps (distinct values) whose batch did not fit into the largest of ``packing_rows``
        so far."""
        return len(self._overflowed)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch at global ``step`` (numpy), without prefetching or device_put."""
        out, idx = self._unpacked(step)
        if self.bucket_lengths:
            return self._bucket(out, idx)
        if self.packing_rows is None:
            return out
        return self._pack(out, idx, step)

    def bucket_length(self, idx: np.ndarray) -> int:
        """The smallest bucket that holds the longest of the global batch's sentences ``idx``
        (the full length if none does): decided globally, so every process feeds one shape."""
        longest = int(self.lengths[idx].max())
        full = self.arrays["input_ids"].shape[1]
        return next((b for b in self.bucket_lengths if longest <= b <= full), full)

    def _bucket(self, out: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Token arrays cut to the batch's bucket; what is cut is padding only."""
        length = self.bucket_length(idx)
        full = self.arrays["input_ids"].shape[1]
        return {k: v[:, :length] if k in TOKEN_KEYS and v.shape[1] == full else v
                for k, v in out.items()}

    def _pack(self, out: dict[str, np.ndarray], idx: np.ndarray, step: int
              ) -> dict[str, np.ndarray]:
        assert self.packing_rows is not None
        # Decided on the global batch, process blocks as shards: every process gets the same
        # answer, so all of them feed the same static shape.
        global_rows = next(
            (r for r in self.packing_rows
             if assign_rows(self.lengths[idx], max_len=self.arrays["input_ids"].shape[1], rows=r,
                            shards=self.process_count * self.packing_shards) is not None), None)
        if global_rows is not None:
            rows = global_rows // self.process_count
            packed = pack(out, rows=rows, shards=self.packing_shards, pad_id=self.pad_id)
            assert packed is not None  # the global batch fits, so every process block does
        else:
            rows = self.local_batch_size
            packed = pack_one_per_row(out, pad_id=self.pad_id)
            if step not in self._overflowed:
                self._overflowed.add(step)
                log.warning("step %d: the batch does not fit into %d packed rows; packed one "
                            "sentence per row (%d rows) instead (%d overflow steps so far)",
                            step, self.packing_rows[-1], self.global_batch_size,
                            len(self._overflowed))
        if self.process_index:  # number rows in the global packed array
            packed["sentence_row"] += self.process_index * rows
        return packed

    def _unpacked(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if step < 0 or (self.num_steps is not None and step >= self.num_steps):
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        idx, valid = self.global_indices(step)
        b = self.local_batch_size
        mine = slice(self.process_index * b, (self.process_index + 1) * b)
        out = {k: v[idx[mine]] for k, v in self.arrays.items()}
        out["valid"] = valid[mine]
        if not out["valid"].all():
            for k, fill in _NO_SUPERVISION.items():
                if k in out:
                    out[k][~out["valid"]] = fill
        if self.masking is not None:
            # Every process draws the masks of the whole global batch from (seed, step) and keeps
            # its rows: the corruption of an example then does not depend on how many processes
            # share the batch, so a 2-process run computes what a 1-process run does.
            m = self.masking
            ids, labels = mask_tokens(
                self.arrays["input_ids"][idx], self.arrays["special_tokens_mask"][idx],
                mask_token_id=m.mask_token_id, vocab_size=m.vocab_size,
                special_ids=m.special_ids, rate=m.rate, mask_fraction=m.mask_fraction,
                random_fraction=m.random_fraction, max_predictions=m.max_predictions,
                seed=self.seed, step=step, process_index=0)
            ids, labels = ids[mine], labels[mine]
            labels[~out["valid"]] = -100
            out["mlm_input_ids"], out["mlm_labels"] = ids, labels
        return out, idx

    def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import jax  # noqa: PLC0415

        def put(x: np.ndarray) -> Any:
            global_shape = (x.shape[0] * self.process_count, *x.shape[1:])
            return jax.make_array_from_process_local_data(self.sharding, x, global_shape)

        return {k: put(v) for k, v in batch.items()}

    def _generate(self, start_step: int, stop_step: int | None) -> Iterator[dict[str, Any]]:
        step = start_step
        while stop_step is None or step < stop_step:
            batch = self.batch(step)
            yield batch if self.sharding is None else self._to_device(batch)
            step += 1

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, Any]]:
        """Batches for steps ``start_step, start_step + 1, ...`` until ``num_steps`` (or forever).

        With ``prefetch > 0`` this is a :class:`Prefetcher`: close it (or use ``with``) when done.
        """
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        gen = self._generate(start_step, self.num_steps)
        if self.prefetch <= 0:
            return gen
        return Prefetcher(gen, self.prefetch, name=f"pipeline-p{self.process_index}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iterate(0)

    def describe(self) -> str:
        """One line on the epoch arithmetic (and packing), for logs."""
        text = (f"{self.num_examples} examples, global batch {self.global_batch_size} "
                f"({self.local_batch_size} on each of {self.process_count} processes), "
                f"{self.steps_per_epoch} steps per epoch, {self.dropped_per_epoch} examples "
                f"left out per epoch")
        if self.packing_rows is not None:
            max_len = self.arrays["input_ids"].shape[1]
            mean = float(self.lengths.mean())
            tokens = mean * self.global_batch_size
            text += (f"; packed into {' or '.join(map(str, self.packing_rows))} rows per step "
                     f"(the smallest that holds the batch; split over {self.process_count} "
                     f"processes x {self.packing_shards} shards; overflow: "
                     f"{self.global_batch_size} rows), real tokens {mean / max_len:.1%} "
                     f"unpacked -> {tokens / (self.packing_rows[-1] * max_len):.1%} "
                     f"({self.packing_rows[-1]} rows) to "
                     f"{tokens / (self.packing_rows[0] * max_len):.1%} "
                     f"({self.packing_rows[0]} rows) packed, for an average batch")
        return text

