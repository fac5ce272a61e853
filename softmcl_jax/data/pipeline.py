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
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from softmcl_jax.data.masking import MaskingConfig, mask_tokens

log = logging.getLogger(__name__)

# Distinguishes the shuffling stream from the masking stream (masking.py) for equal numbers.
SHUFFLE_STREAM = 0x5348  # "SH"
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

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch at global ``step`` (numpy), without prefetching or device_put."""
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
        return out

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
        """One line on the epoch arithmetic, for logs."""
        return (f"{self.num_examples} examples, global batch {self.global_batch_size} "
                f"({self.local_batch_size} on each of {self.process_count} processes), "
                f"{self.steps_per_epoch} steps per epoch, {self.dropped_per_epoch} examples "
                f"left out per epoch")

