"""Sequence packing: several sentences per row of ``L`` tokens, so the encoder spends its FLOPs on
real tokens instead of padding (VADER's sentences average ~25 MiniLM tokens; at ``L = 64`` an
unpacked batch is ~60% padding).

    counts = choose_rows(lengths(encoded.arrays["attention_mask"]), batch_size=32, max_len=64,
                         quantiles=(0.5, 0.9, 1.0))   # e.g. (13, 15, 18)
    # or, without reading a row, from prepared sources' manifests (a mixture's weights):
    counts = choose_rows_from_histograms([s.manifest["length_histogram"] for s in sources],
                                         weights, batch_size=32, max_len=64)
    packed = pack(batch, rows=counts[0])   # None: does not fit (the caller tries the next)
    # encoder on packed["packed_input_ids"] (rows, L), attention within packed["segment_ids"];
    # sentence i's hidden states are row sentence_row[i], tokens
    # [sentence_start[i], sentence_start[i] + length[i]).

Pure numpy, deterministic: the packing is a function of the batch alone.

**Layout.** ``pack`` takes an unpacked batch (B sentences, right-padded to L: the real tokens
of sentence i are positions ``[0, length_i)`` with ``length_i = attention_mask[i].sum()``) and
copies each sentence's real tokens, contiguous and as encoded ([CLS] ... [SEP]), to
``[sentence_start[i], sentence_start[i] + length_i)`` of row ``sentence_row[i]``.
``segment_ids`` numbers the sentences of each row 1..k from left to right, 0 on padding; the
encoder must attend only within a segment and restart positions at each segment's start
(:func:`segment_positions`). Sentences of length 0 (no real token) take no slot: they get row
= the first row of their shard block, start 0, and no segment.

**Bin packing.** First-fit decreasing: the sentences of a block, longest first (ties by index in
the batch), each go to the first row with enough room left, appended after what it holds. FFD
uses at most ``11/9 OPT + 6/9`` rows and, for short items like sentences, is close to optimal.

**Shards.** With the batch axis split over ``shards`` devices, sentence block ``s`` (``B /
shards`` contiguous sentences) goes only into row block ``s`` (``rows / shards`` contiguous
rows), so each sentence's row lies on the device that holds its sentence-level arrays.
``sentence_row`` is the row's index in the whole packed array (block offset included).

**Static shapes.** Under ``jit`` every distinct shape is a separate compiled program, so the
numbers of rows a step may have are fixed in advance (:func:`choose_rows`, from the data's
length distribution, or :func:`choose_rows_from_histograms`, from the sources' length
histograms: a few counts, each its own compiled program) instead of being whatever a
batch needs; a batch takes the smallest count that holds it. A batch that needs more rows than
the largest is an overflow; ``pack`` then returns None and the caller falls back to
:func:`pack_one_per_row` (sentence i alone in row i, rows = B, which always fits: a further,
rarely used static shape). Nothing is ever dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from softmcl_jax.data.masking import IGNORE_INDEX
from softmcl_jax.data.mixture import Mixture

# Encoder inputs that get a packed copy, and the fill of their padding (None: the pad id).
PACKED_KEYS: dict[str, int | None] = {
    "input_ids": None,
    "mlm_input_ids": None,
    "mlm_labels": IGNORE_INDEX,
    # Text pairs' segments (0 = A, 1 = B): copied with the tokens, so they restart with each
    # packed sentence as its positions do; 0 on padding.
    "token_type_ids": 0,
}
PACKED_PREFIX = "packed_"


def lengths(attention_mask: np.ndarray) -> np.ndarray:
    """(B,) int32: the real tokens of each sentence, from a (B, L) attention mask."""
    return np.asarray(attention_mask).astype(bool).sum(axis=-1).astype(np.int32)


def _first_fit_decreasing(
    lens: np.ndarray, capacity: int, max_rows: int | None
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(row, start, rows used) of each item packed first-fit decreasing into rows of
    ``capacity``; None if ``max_rows`` rows are not enough (no limit when None)."""
    n = len(lens)
    nrows = n if max_rows is None else max_rows
    free = np.full(max(nrows, 1), capacity, np.int64)
    row = np.zeros(n, np.int32)
    start = np.zeros(n, np.int32)
    used = 0
    for i in np.argsort(-lens, kind="stable"):  # longest first, ties by index
        length = int(lens[i])
        if length == 0:
            break  # sorted: the rest are empty too; they keep row 0, start 0
        # The unused rows are all free, so the first fit among all rows opens a new row only
        # when none of the used rows has room: first fit with rows opened on demand.
        r = int(np.argmax(free >= length))
        if free[r] < length:
            return None
        row[i], start[i] = r, capacity - free[r]
        free[r] -= length
        used = max(used, r + 1)
    return row, start, used


def _check_blocks(n: int, rows: int, shards: int) -> None:
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if rows < 1 or rows % shards:
        raise ValueError(f"rows {rows} must be a positive multiple of shards {shards}")
    if n % shards:
        raise ValueError(f"batch size {n} must be a multiple of shards {shards}")


def assign_rows(
    lens: np.ndarray, *, max_len: int, rows: int, shards: int = 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """(sentence_row, sentence_start), both (B,) int32, for sentences of ``lens`` tokens packed
    into ``rows`` rows of ``max_len``, shard by shard (module docstring); None if they do not
    fit. Only the lengths matter: this is the fit test of :func:`pack` without the copying."""
    lens = np.asarray(lens)
    _check_blocks(len(lens), rows, shards)
    if lens.size and (lens.min() < 0 or lens.max() > max_len):
        raise ValueError(f"lengths must lie in [0, {max_len}]")
    bs, rs = len(lens) // shards, rows // shards
    sentence_row = np.empty(len(lens), np.int32)
    sentence_start = np.empty(len(lens), np.int32)
    for s in range(shards):
        block = slice(s * bs, (s + 1) * bs)
        packed = _first_fit_decreasing(lens[block], max_len, rs)
        if packed is None:
            return None
        sentence_row[block] = packed[0] + s * rs
        sentence_start[block] = packed[1]
    return sentence_row, sentence_start


def pad_id_of(input_ids: np.ndarray, attention_mask: np.ndarray, default: int = 0) -> int:
    """The id found at the first padded position (``attention_mask == 0``); ``default`` if none."""
    pads = np.asarray(input_ids)[np.asarray(attention_mask) == 0]
    return int(pads[0]) if pads.size else default


def pack(
    batch: Mapping[str, np.ndarray], *, rows: int, shards: int = 1, pad_id: int | None = None
) -> dict[str, np.ndarray] | None:
    """Pack the encoder inputs of an unpacked batch into ``rows`` rows; see the module docstring.

    Args:
      batch: numpy arrays with ``input_ids`` and ``attention_mask`` (B, L), right-padded; B a
        multiple of ``shards``.
      rows: packed rows (a multiple of ``shards``).
      shards: contiguous sentence blocks, each packed into its own contiguous block of rows.
      pad_id: the ids' padding; None takes the id at a padded position of ``input_ids``
        (:func:`pad_id_of`, 0 if the batch has no padding).
    Returns:
      None if the sentences do not fit into ``rows`` rows. Otherwise every key of ``batch``
      unchanged (same arrays), plus ``packed_input_ids`` and, where the batch has them,
      ``packed_mlm_input_ids`` / ``packed_mlm_labels`` (rows, L) (padding: ``pad_id`` for ids,
      -100 for labels), ``segment_ids`` (rows, L) int32 (0 padding, 1..k the row's sentences
      left to right), ``sentence_row`` and ``sentence_start`` (B,) int32.
    """
    lens = _checked_lengths(batch)
    placed = assign_rows(lens, max_len=batch["input_ids"].shape[1], rows=rows, shards=shards)
    if placed is None:
        return None
    return _assemble(batch, lens, *placed, rows=rows, pad_id=pad_id)


def pack_one_per_row(
    batch: Mapping[str, np.ndarray], *, pad_id: int | None = None
) -> dict[str, np.ndarray]:
    """:func:`pack`'s output with sentence i alone in row i at start 0 (rows = B): the overflow
    layout, which always fits; the packed arrays are the unpacked ones with the padding filled
    and ``segment_ids`` = the attention mask. Any ``shards`` dividing B are respected."""
    lens = _checked_lengths(batch)
    n = len(lens)
    return _assemble(batch, lens, np.arange(n, dtype=np.int32), np.zeros(n, np.int32), rows=n,
                     pad_id=pad_id)


def _checked_lengths(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be equal "
                         f"(B, L) shapes")
    lens = lengths(mask)
    if not np.array_equal(np.arange(ids.shape[1])[None] < lens[:, None], mask.astype(bool)):
        raise ValueError("attention_mask must be ones then zeros in every row (right padding)")
    return lens


def _assemble(
    batch: Mapping[str, np.ndarray], lens: np.ndarray, sentence_row: np.ndarray,
    sentence_start: np.ndarray, *, rows: int, pad_id: int | None,
) -> dict[str, np.ndarray]:
    """Copy the encoder inputs to their rows and starts; the packed keys of :func:`pack`."""
    ids = np.asarray(batch["input_ids"])
    n, max_len = ids.shape
    pos = np.arange(max_len)
    real = pos[None] < lens[:, None]  # (B, L) the real tokens, a prefix of each row
    if pad_id is None:
        pad_id = pad_id_of(ids, batch["attention_mask"])

    # Flat destination of every real token: row * L + start + offset in the sentence.
    dest = ((sentence_row.astype(np.int64) * max_len + sentence_start)[:, None] + pos[None])[real]
    out = dict(batch)
    for key, fill in PACKED_KEYS.items():
        if key not in batch:
            continue
        a = np.asarray(batch[key])
        if a.shape != ids.shape:
            raise ValueError(f"{key} has shape {a.shape}, not input_ids' {ids.shape}")
        flat = np.full(rows * max_len, pad_id if fill is None else fill, a.dtype)
        flat[dest] = a[real]
        out[PACKED_PREFIX + key] = flat.reshape(rows, max_len)

    # Segment ids: the rank of each sentence's start among the sentences of its row, from 1.
    nonempty = np.flatnonzero(lens > 0)
    order = nonempty[np.lexsort((sentence_start[nonempty], sentence_row[nonempty]))]
    r = sentence_row[order]
    first = np.searchsorted(r, r, side="left")  # index in ``order`` of the row's first sentence
    segment = np.zeros(n, np.int32)
    segment[order] = np.arange(len(order)) - first + 1
    seg = np.zeros(rows * max_len, np.int32)
    seg[dest] = np.broadcast_to(segment[:, None], real.shape)[real]
    out["segment_ids"] = seg.reshape(rows, max_len)
    out["sentence_row"], out["sentence_start"] = sentence_row, sentence_start
    return out


def unpack(
    packed: np.ndarray, sentence_row: np.ndarray, sentence_start: np.ndarray, lens: np.ndarray,
    *, fill: int | float = 0, row_offset: int = 0,
) -> np.ndarray:
    """The inverse gather: (B, L, ...) with sentence i's ``lens[i]`` packed tokens (or hidden
    states) at ``[0, lens[i])`` and ``fill`` after them.

    ``packed`` is (rows, L, ...); ``row_offset`` is subtracted from ``sentence_row`` (a process's
    batch from :class:`~softmcl_jax.data.pipeline.Pipeline` numbers rows globally: its rows
    start at ``process_index * rows_per_process``).
    """
    packed = np.asarray(packed)
    max_len = packed.shape[1]
    pos = np.arange(max_len)
    src = np.minimum(np.asarray(sentence_start)[:, None] + pos[None], max_len - 1)
    out = packed[(np.asarray(sentence_row) - row_offset)[:, None], src]
    real = pos[None] < np.asarray(lens)[:, None]
    return np.where(real.reshape(real.shape + (1,) * (out.ndim - 2)), out,
                    np.asarray(fill, packed.dtype))


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """(rows, L) int32: each token's position within its segment (0 at a sentence's first
    token, as in the unpacked row); 0 on padding. These are the encoder's position ids on a
    packed row (in JAX: the same with ``jax.lax.cummax`` for ``np.maximum.accumulate``)."""
    seg = np.asarray(segment_ids)
    idx = np.broadcast_to(np.arange(seg.shape[-1]), seg.shape)
    prev = np.concatenate([np.zeros_like(seg[..., :1]), seg[..., :-1]], axis=-1)
    starts = np.where(seg != prev, idx, 0)
    pos = idx - np.maximum.accumulate(starts, axis=-1)
    return np.where(seg > 0, pos, 0).astype(np.int32)


def _check_choose(samples: int, batch_size: int, shards: int,
                  quantiles: Sequence[float]) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if shards < 1 or batch_size < 1 or batch_size % shards:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of shards {shards}")
    if not quantiles or any(not 0 < q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must be a non-empty list of values in (0, 1], got "
                         f"{tuple(quantiles)}")


def _counts_of_needs(batches: Iterable[np.ndarray], *, samples: int, batch_size: int,
                     max_len: int, shards: int, quantiles: Sequence[float]) -> tuple[int, ...]:
    """The ``quantiles`` of the rows sampled batches (each (batch_size,) lengths, clipped to
    ``max_len``) need, as :func:`choose_rows` returns them."""
    need = np.empty(samples, np.int64)
    for i, drawn in enumerate(batches):
        drawn = np.minimum(drawn, max_len)
        need[i] = max(max(_first_fit_decreasing(block, max_len, None)[2], 1)
                      for block in drawn.reshape(shards, -1))
    picked = np.quantile(need, sorted(quantiles), method="higher")
    return tuple(sorted({min(int(n) * shards, batch_size) for n in picked}))


def choose_rows(
    lengths: np.ndarray, *, batch_size: int, max_len: int, shards: int = 1, seed: int = 0,
    samples: int = 1000, quantiles: tuple[float, ...] = (1.0,),
) -> tuple[int, ...]:
    """Static numbers of packed rows per step, from the data's length distribution.

    Draws ``samples`` random batches of ``batch_size`` sentences (without replacement, as an
    epoch's permutation does; seeded), splits each into ``shards`` blocks and packs each block
    first fit decreasing; a batch needs ``shards x`` the most rows any of its blocks needed.
    Returns the ``quantiles`` of that need over the samples (each a need some sample had),
    ascending, without repeats, never above ``batch_size``: ``(1.0,)`` is the sampled worst
    case alone, one static shape.

    Why static: under ``jit`` every shape compiles a program of its own, so a per-batch row count
    would recompile constantly. Why several: the need concentrates around its mean but has a
    tail (VADER, batch 32 at max_len 64: 13 rows or fewer for 56% of batches, 17 or more for
    0.6%), so one shape sized for the tail pads the typical batch; with counts at the 0.5, 0.9
    and 1.0 quantiles each batch takes the smallest that holds it, at the price of one compiled
    program per count. A batch needing more than the largest is rare (the largest is the most of
    1000 samples: about 1 batch in 1000 or fewer needs more); the pipeline packs such a batch
    one sentence per row instead (a further static shape, rows = batch size, compiled when first
    needed), and counts it.

    Args:
      lengths: (N,) real tokens of every sentence (:func:`lengths`); values above ``max_len``
        are clipped (the encoding truncates to ``max_len``).
      batch_size: sentences per packing (per process: the local batch), a multiple of
        ``shards``.
      max_len: tokens per row.
      quantiles: in (0, 1].
    """
    lens = np.minimum(np.asarray(lengths).reshape(-1), max_len)
    if lens.size == 0:
        raise ValueError("no lengths")
    _check_choose(samples, batch_size, shards, quantiles)
    rng = np.random.default_rng(seed)
    batches = (lens[rng.choice(lens.size, size=batch_size, replace=lens.size < batch_size)]
               for _ in range(samples))
    return _counts_of_needs(batches, samples=samples, batch_size=batch_size, max_len=max_len,
                            shards=shards, quantiles=quantiles)


def histogram_lengths(histogram: Sequence[int] | np.ndarray, positions: np.ndarray
                      ) -> np.ndarray:
    """The lengths at ``positions`` of the population a length histogram describes, its rows in
    order of length (``histogram[t]`` rows of ``t`` tokens): ``(len(positions),)`` int64, in
    O(len(histogram) + len(positions)) whatever the number of rows."""
    ends = np.cumsum(np.asarray(histogram, np.int64))
    positions = np.asarray(positions, np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= ends[-1]):
        raise ValueError(f"positions outside the histogram's {int(ends[-1])} rows")
    return np.searchsorted(ends, positions, side="right").astype(np.int64)


def sample_batch_lengths(
    histograms: Sequence[Sequence[int] | np.ndarray], weights: Sequence[float] | None = None, *,
    batch_size: int, samples: int, seed: int = 0,
) -> Iterator[np.ndarray]:
    """``samples`` random global batches' lengths ((batch_size,) int64 each) from the sources'
    length histograms, mixed as the pipeline mixes them: sample ``i`` takes the per-source row
    counts of step ``i`` (:class:`~softmcl_jax.data.mixture.Mixture`, the same weights), draws
    each source's rows without replacement (as an epoch does) and, with several sources,
    shuffles them into the slots (as the slot interleave does). One source draws exactly the
    positions :func:`choose_rows` draws, read in histogram order (see
    :func:`choose_rows_from_histograms`). O(samples x batch_size + histogram bins): no row is
    read and nothing grows with the number of rows.
    """
    hists = [np.asarray(h, np.int64) for h in histograms]
    sizes = [int(h.sum()) for h in hists]
    if not hists:
        raise ValueError("no histograms")
    mix = Mixture(sizes, weights, global_batch_size=batch_size, seed=0)
    rng = np.random.default_rng(seed)
    for i in range(samples):
        counts = mix.counts(i)
        parts = [histogram_lengths(h, rng.choice(n, size=int(c), replace=n < c))
                 for h, n, c in zip(hists, sizes, counts, strict=True)]
        drawn = np.concatenate(parts)
        yield drawn if len(hists) == 1 else drawn[rng.permutation(batch_size)]


def choose_rows_from_histograms(
    histograms: Sequence[Sequence[int] | np.ndarray], weights: Sequence[float] | None = None, *,
    batch_size: int, max_len: int, shards: int = 1, seed: int = 0, samples: int = 1000,
    quantiles: tuple[float, ...] = (1.0,),
) -> tuple[int, ...]:
    """:func:`choose_rows` from the sources' length histograms (a prepared folder's manifest
    ``length_histogram``; ``histogram[t]`` rows of ``t`` tokens) mixed by ``weights``
    (:func:`sample_batch_lengths`), without reading a row: O(1) in the corpus size, so a run's
    start-up does not grow with its data.

    ``batch_size`` is the global batch (the mixture's per-step counts are of it) and ``shards``
    the blocks it is packed in (processes x devices per process). One source samples as
    :func:`choose_rows` does (same seed, same draws of positions), but the population is the
    histogram's rows in order of length, not the corpus in file order, so the same positions
    are other sentences and the counts can differ from :func:`choose_rows`' on the lengths
    array by a sample's worth; both estimate the same quantiles of the same distribution.
    """
    _check_choose(samples, batch_size, shards, quantiles)
    batches = sample_batch_lengths(histograms, weights, batch_size=batch_size, samples=samples,
                                   seed=seed)
    return _counts_of_needs(batches, samples=samples, batch_size=batch_size, max_len=max_len,
                            shards=shards, quantiles=quantiles)


def min_rows_needed(histograms: Sequence[Sequence[int] | np.ndarray], *, batch_size: int,
                    max_len: int, shards: int = 1) -> int:
    """A lower bound on the packed rows any global batch of ``batch_size`` sentences drawn
    from sources with these length histograms needs, ``shards`` blocks each packed into its own
    rows: a row holds at most ``max_len // m`` sentences of the shortest length ``m`` any
    source has (clipped to ``max_len``), so a block of ``batch_size / shards`` sentences needs
    at least ``ceil(block / (max_len // m))`` rows, whichever rows the batch draws, however the
    mixture mixes them. 0 when every row is empty (they take no slot)."""
    _check_blocks(batch_size, shards, shards)
    least = shortest_length(histograms)
    if least == 0:
        return 0
    per_row = max_len // min(least, max_len)
    return shards * -(-(batch_size // shards) // per_row)


def shortest_length(histograms: Sequence[Sequence[int] | np.ndarray]) -> int:
    """The fewest tokens a non-empty row of any of these length histograms has (0: none)."""
    found = [int(np.flatnonzero(np.asarray(h)[1:])[0]) + 1
             for h in histograms if np.asarray(h)[1:].any()]
    return min(found, default=0)


def sampled_needs(
    histograms: Sequence[Sequence[int] | np.ndarray], weights: Sequence[float] | None = None, *,
    batch_size: int, max_len: int, shards: int = 1, seed: int = 0, samples: int = 200,
) -> np.ndarray:
    """(samples,) the packed rows each of ``samples`` global batches drawn from the length
    histograms (:func:`sample_batch_lengths`) needs, ``shards`` blocks each packed first fit
    decreasing into its own rows: a batch fits ``rows`` rows exactly when its need is at most
    ``rows`` (the pipeline's test, :func:`assign_rows`), so ``(need > rows).mean()`` estimates
    the share of steps that overflow ``rows``."""
    _check_choose(samples, batch_size, shards, (1.0,))
    need = np.empty(samples, np.int64)
    for i, drawn in enumerate(sample_batch_lengths(histograms, weights, batch_size=batch_size,
                                                   samples=samples, seed=seed)):
        drawn = np.minimum(drawn, max_len)
        need[i] = shards * max(_first_fit_decreasing(block, max_len, None)[2]
                               for block in drawn.reshape(shards, -1))
    return need


def real_token_fraction(lens: np.ndarray, *, rows: int, max_len: int) -> float:
    """Real tokens over all tokens of ``rows`` rows of ``max_len`` holding sentences ``lens``."""
    return float(np.sum(lens)) / (rows * max_len)
