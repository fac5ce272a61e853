"""Which rows of which sources make the global batch at step ``s``: pure index arithmetic.

    mix = Mixture([len(a), len(b), len(c)], [0.3, 0.3, 0.4], global_batch_size=32, seed=0)
    source, row = mix.global_indices(step)   # (32,) each: slot i is row[i] of source[i]

Everything is a closed-form function of ``(seed, step)``: no state is carried from step to step,
so a resumed run (or a Grain worker handed an arbitrary step) computes exactly the batch an
uninterrupted run does.

**Per-step counts.** Weights are normalised to sum 1 (read as the decimals they print as:
``0.3`` is 3/10, so a share that is a whole number of rows in decimal is one here) and kept as
exact fractions. With cumulative weights ``0 = c_0 < c_1 < ... < c_K = 1``, the rows of source
``k`` drawn before step ``s`` are

    A_k(s) = floor(c_k B s) - floor(c_{k-1} B s),

which sum to ``B s`` exactly (the floors telescope), and step ``s`` takes
``n_k(s) = A_k(s + 1) - A_k(s)`` rows from source ``k``: ``floor(w_k B)`` or one more, never
negative as long as ``w_k B >= 1`` (refused otherwise), and over ``S`` steps source ``k`` gives
``w_k B S`` rows to within one. Integer arithmetic throughout (a common denominator), so no
rounding can make a batch one row short or long.

**Epochs.** Each source is an endless stream of epochs. Epoch ``e`` of source ``k`` is its rows
in the order of a permutation drawn from ``(seed, e)`` for source 0 (exactly
:func:`epoch_permutation`, so a single source keeps the order it always had) and from
``(seed, e, k)`` in a stream of its own for ``k > 0``. An epoch is cut to a multiple of the
global batch when the source has at least ``B`` rows (as ``drop_remainder`` did: the rows past
the cut are left out of that epoch, different ones each epoch as the order is redrawn), and is
whole otherwise. Stream position ``m`` of source ``k`` is position ``m mod E_k`` of epoch
``m div E_k`` (``E_k`` the epoch's length). Within an epoch no row repeats.

**Slots.** With one source, slot ``i`` of the batch is the source's ``i``-th row of the step,
so step ``s`` holds exactly the examples it always did. With several, the ``B`` drawn rows
(source 0's, then source 1's, ...) are put into the slots by a permutation drawn from
``(seed, s)``, so every process's contiguous block of slots mixes the sources.

Pure numpy; no Grain, no JAX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

# Random streams, each its own spawn key so equal (seed, ...) numbers never share draws:
# source 0's epoch order (the pipeline's shuffle since the beginning), the epoch orders of the
# other sources of a mixture, and the slot interleaving of a mixture's batch. masking.py has
# the MLM stream.
SHUFFLE_STREAM = 0x5348  # "SH"
SOURCE_STREAM = 0x534B  # "SK"
INTERLEAVE_STREAM = 0x494C  # "IL"
_INT32_MAX = np.iinfo(np.int32).max


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in ``epoch``: a function of (seed, epoch) only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(SHUFFLE_STREAM,)))
    return rng.permutation(num_examples)


def source_permutation(num_rows: int, seed: int, epoch: int, source: int) -> np.ndarray:
    """(num_rows,) the order of source ``source``'s rows in ``epoch``; int32 when it fits.

    Source 0's is :func:`epoch_permutation`'s (the same values: shuffling an ``arange`` draws
    what ``permutation(n)`` draws, whatever the dtype), other sources' come from
    ``(seed, epoch, source)`` in a stream of their own."""
    if source == 0:
        seq = np.random.SeedSequence([seed, epoch], spawn_key=(SHUFFLE_STREAM,))
    else:
        seq = np.random.SeedSequence([seed, epoch, source], spawn_key=(SOURCE_STREAM,))
    # Shuffle in place in the final dtype: half the memory of permutation()'s int64 for the
    # sources that fit int32 (all but > 2^31 rows), and no int64 copy on the way.
    perm = np.arange(num_rows, dtype=np.int32 if num_rows <= _INT32_MAX else np.int64)
    np.random.default_rng(seq).shuffle(perm)
    return perm


def _as_fraction(weight: float, where: str) -> Fraction:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight {weight!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: weight {weight!r} must be a finite number > 0")
    # The decimal the weight prints as (0.3 -> 3/10, not the binary double's 5404...e-17/2^54):
    # shares the user wrote as whole numbers of rows stay whole.
    return Fraction(repr(value))


class Mixture:
    """The global batches of ``len(sizes)`` sources mixed by ``weights``; module docstring.

    Args:
      sizes: rows of each source (each > 0).
      weights: one per source, > 0, any scale (normalised to sum 1); None: one source, or equal
        weights.
      global_batch_size: ``B``, rows per step over all processes.
      seed: the shuffling seed (>= 0).
      field: the config field the sources come from, named in errors as ``field[i]``.
    Raises:
      ValueError naming ``field[i]``: a weight <= 0, a weight giving source ``i`` fewer than one
      row a step (``w_i B < 1``), a source with 0 rows.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float] | None = None, *,
                 global_batch_size: int, seed: int, field: str = "config.data.mixture"):
        sizes = [int(n) for n in sizes]
        if not sizes:
            raise ValueError(f"{field}: no sources")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if weights is None:
            weights = [1.0] * len(sizes)
        if len(weights) != len(sizes):
            raise ValueError(f"{field}: {len(weights)} weights for {len(sizes)} sources")
        fractions = [_as_fraction(w, f"{field}[{i}]") for i, w in enumerate(weights)]
        total = sum(fractions)
        self.weights = tuple(f / total for f in fractions)  # exact, sum to 1
        b = global_batch_size
        for i, (n, w, raw) in enumerate(zip(sizes, self.weights, weights, strict=True)):
            if n <= 0:
                raise ValueError(f"{field}[{i}]: the source has no rows")
            if w * b < 1:
                raise ValueError(
                    f"{field}[{i}]: weight {raw} is {float(w):.4g} of the mixture, "
                    f"{float(w * b):.3g} rows of the global batch of {b}: every source needs "
                    f"at least 1 row a step (weight x batch >= 1); raise its weight or the batch")
        self.sizes = tuple(sizes)
        self.global_batch_size, self.seed = b, seed
        # c_k = _cum[k] / _den with integers, c_0 = 0 and c_K = 1 (= _den / _den).
        self._den = math.lcm(*(w.denominator for w in self.weights))
        acc, cum = Fraction(0), [0]
        for w in self.weights:
            acc += w
            cum.append(int(acc * self._den))
        assert cum[-1] == self._den
        self._cum = tuple(cum)
        # Epoch lengths: cut to a multiple of B when the source holds a batch, whole otherwise.
        self.epoch_lengths = tuple(n - n % b if n >= b else n for n in sizes)
        # One cached (epoch, permutation) per source; replaced whole (one assignment), so
        # threads sharing the mixture never see a half-written entry.
        self._perms: list[tuple[int, np.ndarray] | None] = [None] * len(sizes)

    def __getstate__(self) -> dict:
        # Grain's worker processes receive the mixture pickled: send no cached permutation
        # (up to 4 bytes a row); each worker draws the epochs it needs.
        state = dict(self.__dict__)
        state["_perms"] = [None] * len(self.sizes)
        return state

    @property
    def num_sources(self) -> int:
        return len(self.sizes)

    def drawn_before(self, step: int) -> np.ndarray:
        """(K,) int64: ``A_k(step)``, the rows of each source drawn by steps ``0 .. step - 1``;
        they sum to ``B * step``."""
        scaled = self.global_batch_size * int(step)
        floors = [c * scaled // self._den for c in self._cum]  # Python ints: exact
        return np.diff(np.asarray(floors, np.int64))

    def counts(self, step: int) -> np.ndarray:
        """(K,) int64: ``n_k(step)``, the rows each source gives step ``step`` (sum ``B``)."""
        return self.drawn_before(int(step) + 1) - self.drawn_before(step)

    def permutation(self, source: int, epoch: int) -> np.ndarray:
        """Source ``source``'s row order in ``epoch`` (cached, one epoch per source)."""
        cached = self._perms[source]  # read once: another thread may replace it
        if cached is not None and cached[0] == epoch:
            return cached[1]
        perm = source_permutation(self.sizes[source], self.seed, epoch, source)
        self._perms[source] = (epoch, perm)
        return perm

    def stream(self, source: int, start: int, count: int) -> np.ndarray:
        """(count,) int64: the rows at stream positions ``[start, start + count)`` of
        ``source`` (position ``m``: epoch ``m // E``, place ``m % E``)."""
        length = self.epoch_lengths[source]
        m = start + np.arange(count, dtype=np.int64)
        epoch, place = np.divmod(m, length)
        out = np.empty(count, np.int64)
        for e in np.unique(epoch).tolist():  # one epoch, or two at a boundary (more if tiny)
            at = epoch == e
            out[at] = self.permutation(source, e)[place[at]]
        return out

    def global_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source (B,) int32, row (B,) int64)``: slot ``i`` of the global batch at ``step``
        is row ``row[i]`` of source ``source[i]``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        before, counts = self.drawn_before(step), self.counts(step)
        source = np.repeat(np.arange(self.num_sources, dtype=np.int32), counts)
        row = np.concatenate([self.stream(k, int(before[k]), int(counts[k]))
                              for k in range(self.num_sources)])
        if self.num_sources > 1:
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, int(step)], spawn_key=(INTERLEAVE_STREAM,)))
            slots = rng.permutation(self.global_batch_size)
            source, row = source[slots], row[slots]
        return source, row
