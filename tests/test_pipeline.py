"""Input pipeline over row sources: one source gives the examples (and masks) each step always
had, epochs and drop_remainder, processes read disjoint rows whose union is the global batch,
exact resume through Grain (threads and worker processes), keys, rating scales, mixtures,
device_put."""

from __future__ import annotations

import numpy as np
import pytest

from softmcl_jax.data import rows
from softmcl_jax.data.masking import MaskingConfig, mask_tokens
from softmcl_jax.data.mixture import epoch_permutation
from softmcl_jax.data.packing import assign_rows, lengths, pack, pack_one_per_row
from softmcl_jax.data.pipeline import TOKEN_KEYS, Pipeline
from softmcl_jax.data.rating_units import in_spread_units

N, L = 103, 12
MASKING = MaskingConfig(mask_token_id=103, vocab_size=30522, special_ids=(0, 100, 101, 102, 103),
                        rate=0.3)


def make_arrays(n=N, length=L, seed=0, first=1000):
    """encode_sentences-like arrays whose token 1 encodes the example index (``first + i``), so
    a batch says which examples it holds."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(4, length + 1, size=n)
    pos = np.arange(length)[None]
    real = pos < lens[:, None]
    ids = rng.integers(1000, 30000, size=(n, length)).astype(np.int32)
    ids[:, 0] = 101
    ids[:, 1] = first + np.arange(n)
    ids[pos == lens[:, None] - 1] = 102
    ids[~real] = 0
    words = (rng.random((n, length)) < 0.2) & real & (pos > 0) & (pos < lens[:, None] - 1)
    sentence = np.where(rng.random(n) < 0.8, rng.random(n), -1.0).astype(np.float32)
    return {
        "input_ids": ids,
        "attention_mask": real.astype(np.int32),
        "special_tokens_mask": (pos == 0) | (pos >= lens[:, None] - 1),
        "token_valence": np.where(words, rng.random((n, length)), 0.0).astype(np.float32),
        "token_valence_mask": words,
        "token_arousal": np.where(words, rng.random((n, length)), -1.0).astype(np.float32),
        "token_dominance": np.where(words, rng.random((n, length)), -1.0).astype(np.float32),
        "sentence_valence": sentence,
        "sentence_valence_mask": sentence >= 0,
        "sentence_arousal": np.where(sentence >= 0, rng.random(n), -1.0).astype(np.float32),
        "sentence_dominance": np.full(n, -1.0, np.float32),
        "labels": rng.integers(0, 3, size=n).astype(np.int32),
    }


class CountingSource:
    """A source that records every row it is asked to read (and may hide ``lengths``)."""

    def __init__(self, inner, lengths=True):
        self.inner, self.manifest, self.path = inner, inner.manifest, inner.path
        self.reads: list[int] = []
        if lengths:
            self.lengths = inner.lengths

    def __len__(self):
        return len(self.inner)

    def read(self, indices):
        self.reads.extend(int(i) for i in indices)
        return self.inner.read(indices)


def source_of(arrays, name="memory"):
    return rows.MemorySource(rows.rows_from_encoded(arrays), max_len=arrays["input_ids"].shape[1],
                             pad_id=0, name=name)


SOURCE = source_of(make_arrays())
# The whole corpus padded: the arrays the pipeline held before it read rows.
CORPUS = rows.pad_rows([rows.decode_row(b) for b in SOURCE.blobs], max_len=L, pad_id=0)


def example_ids(batch):
    return np.asarray(batch["input_ids"])[:, 1] - 1000


def pipe(source=None, **kw):
    args = dict(global_batch_size=16, seed=3, max_len=L, pad_id=0, process_index=0,
                process_count=1, prefetch=0)
    args.update(kw)
    return Pipeline([SOURCE if source is None else source], **args)


def todays_batch(arrays, step, *, batch, seed, masking=None, process_index=0, process_count=1,
                 packing_rows=None, shards=1, pad_id=0):
    """The reference: the batch the pipeline made from whole-corpus arrays before it read rows,
    its index, mask and packing logic copied (drop_remainder=True)."""
    n, max_len = arrays["input_ids"].shape
    epoch, i = divmod(step, n // batch)
    idx = epoch_permutation(n, seed, epoch)[i * batch:(i + 1) * batch]
    b = batch // process_count
    mine = slice(process_index * b, (process_index + 1) * b)
    out = {k: v[idx[mine]] for k, v in arrays.items()}
    out["valid"] = np.ones(b, bool)
    if masking is not None:
        m = masking
        ids, labels = mask_tokens(
            arrays["input_ids"][idx], arrays["special_tokens_mask"][idx],
            mask_token_id=m.mask_token_id, vocab_size=m.vocab_size, special_ids=m.special_ids,
            rate=m.rate, mask_fraction=m.mask_fraction, random_fraction=m.random_fraction,
            max_predictions=m.max_predictions, seed=seed, step=step, process_index=0)
        out["mlm_input_ids"], out["mlm_labels"] = ids[mine], labels[mine]
    if packing_rows is None:
        return out
    lens = lengths(arrays["attention_mask"])[idx]
    global_rows = next((r for r in sorted(packing_rows)
                        if assign_rows(lens, max_len=max_len, rows=r,
                                       shards=process_count * shards) is not None), None)
    if global_rows is not None:
        r = global_rows // process_count
        packed = pack(out, rows=r, shards=shards, pad_id=pad_id)
    else:
        r = b
        packed = pack_one_per_row(out, pad_id=pad_id)
    packed["sentence_row"] += process_index * r
    return packed


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# --- one source: today's examples, epochs ----------------------------------------------------

def test_rows_pad_back_to_the_encoded_arrays():
    arrays = make_arrays()
    for k, v in CORPUS.items():
        np.testing.assert_array_equal(v, arrays[k], err_msg=k)


@pytest.mark.parametrize("masking", [None, MASKING])
def test_one_source_gives_todays_batches(masking):
    p = pipe(masking=masking)
    # 6 steps an epoch: 5, 6 and 12, 13 cross epoch boundaries.
    for step in (0, 1, 5, 6, 12, 13, 40):
        assert_batches_equal(p.batch(step), todays_batch(CORPUS, step, batch=16, seed=3,
                                                         masking=masking))


def test_epoch_arithmetic_and_shuffle():
    p = pipe(num_steps=18)
    assert (p.steps_per_epoch, p.dropped_per_epoch, p.num_examples) == (6, 7, N)
    assert "7 examples left out per epoch" in p.describe()
    with p.iterate(0) as it:
        batches = list(it)
    assert len(batches) == 18
    epochs = [np.concatenate([example_ids(b) for b in batches[e * 6:(e + 1) * 6]])
              for e in range(3)]
    for e, seen in enumerate(epochs):
        assert len(set(seen.tolist())) == 96  # no repeats within an epoch
        np.testing.assert_array_equal(seen, epoch_permutation(N, 3, e)[:96])
    assert not np.array_equal(epochs[0], epochs[1])  # order redrawn each epoch ...
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # ... so the left-out change
    for b in batches:
        assert {k: v.shape[0] for k, v in b.items()} == dict.fromkeys(b, 16)
        assert b["input_ids"].shape == (16, L) and b["valid"].all()
    a = example_ids(pipe(seed=1).batch(0))
    assert not np.array_equal(a, example_ids(pipe(seed=2).batch(0)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="no full global batch"):
        pipe(global_batch_size=128)
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipe(global_batch_size=18, process_count=4, process_index=0)
    with pytest.raises(ValueError, match="process_index"):
        pipe(process_index=2, process_count=2)
    with pytest.raises(ValueError, match="max_len 12, the pipeline pads to max_len 16"):
        pipe(max_len=16)
    with pytest.raises(ValueError, match="pads with id 0, the pipeline with 1"):
        pipe(pad_id=1)
    with pytest.raises(ValueError, match="not arrays the pipeline makes"):
        pipe(keys={"input_ids", "nonsense"})
    with pytest.raises(ValueError, match="multi_labels needs num_labels"):
        pipe(keys={"multi_labels"})
    with pytest.raises(ValueError, match="not a rating key"):
        pipe(rating_scales={"labels": 2.0})
    with pytest.raises(TypeError, match="not a row source"):
        Pipeline([make_arrays()], global_batch_size=16, seed=0, max_len=L, pad_id=0,
                 process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"config\.data\.mixture\[1\]"):
        Pipeline([SOURCE, SOURCE], weights=[1, 0], global_batch_size=16, seed=0, max_len=L,
                 pad_id=0, process_index=0, process_count=1)
    with pytest.raises(IndexError):
        pipe(num_steps=6).batch(6)


# --- processes -------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [2, 4])
def test_processes_read_disjoint_rows_whose_union_is_the_global_batch(count):
    single = pipe(masking=MASKING)
    for step in (0, 1, 5, 6, 13):  # 5 -> 6 and 13 cross epoch boundaries
        glob = single.batch(step)
        sources = [CountingSource(SOURCE) for _ in range(count)]
        parts = [pipe(src, masking=MASKING, process_index=i, process_count=count).batch(step)
                 for i, src in enumerate(sources)]
        # Each process read exactly its own block's rows, once; together the global batch.
        idx = epoch_permutation(N, 3, step // 6)[(step % 6) * 16:(step % 6 + 1) * 16]
        b = 16 // count
        for i, src in enumerate(sources):
            assert src.reads == idx[i * b:(i + 1) * b].tolist()
        assert sorted(sum((s.reads for s in sources), [])) == sorted(idx.tolist())
        # Masks too: the global batch's, whatever the process count.
        whole = {k: np.concatenate([part[k] for part in parts]) for k in glob}
        assert_batches_equal(whole, glob)


def test_masks_are_the_global_batchs_from_seed_and_step():
    single = pipe(masking=MASKING).batch(7)
    ids, labels = mask_tokens(
        single["input_ids"], single["special_tokens_mask"], mask_token_id=MASKING.mask_token_id,
        vocab_size=MASKING.vocab_size, special_ids=MASKING.special_ids, rate=MASKING.rate,
        seed=3, step=7, process_index=0)
    np.testing.assert_array_equal(single["mlm_input_ids"], ids)
    np.testing.assert_array_equal(single["mlm_labels"], labels)
    b = single
    sel = b["mlm_labels"] != -100
    assert sel.any() and not (sel & b["special_tokens_mask"]).any()
    np.testing.assert_array_equal(b["mlm_labels"][sel], b["input_ids"][sel])
    assert (b["mlm_input_ids"][~sel] == b["input_ids"][~sel]).all()
    np.testing.assert_array_equal(b["input_ids"], pipe().batch(7)["input_ids"])  # uncorrupted


# --- keys, rating scales, labels -------------------------------------------------------------

def test_keys_limit_the_arrays():
    b = pipe(keys={"input_ids", "attention_mask", "valid"}, masking=MASKING).batch(2)
    assert set(b) == {"input_ids", "attention_mask", "valid", "mlm_input_ids", "mlm_labels"}
    full = pipe(masking=MASKING).batch(2)
    for k in b:
        np.testing.assert_array_equal(b[k], full[k], err_msg=k)
    # Masking reads special_tokens_mask whether or not it is emitted.
    assert "special_tokens_mask" not in b
    labelled = pipe(num_labels=3).batch(2)
    np.testing.assert_array_equal(labelled["multi_labels"], np.eye(3, dtype=np.int32)[
        labelled["labels"]])


def test_rating_scales_are_in_spread_units_of_the_whole_arrays():
    scaled, spreads = in_spread_units(CORPUS)
    assert {"sentence_valence", "token_valence", "token_arousal"} <= set(spreads)
    p = pipe(rating_scales=spreads)
    for step in (0, 9):
        want = todays_batch(scaled, step, batch=16, seed=3)
        assert_batches_equal(p.batch(step), want)


def test_buckets_are_decided_on_the_global_batch():
    buckets = (6, 11)  # lengths 4..12: a batch of 16 has none of 12 now and then
    full = pipe(masking=MASKING)
    procs = [pipe(masking=MASKING, bucket_lengths=buckets, process_index=i, process_count=2)
             for i in range(2)]
    seen = set()
    for step in range(30):
        glob = full.batch(step)
        longest = int(glob["attention_mask"].sum(1).max())
        want = next((b for b in buckets if longest <= b), L)
        parts = [p.batch(step) for p in procs]
        seen.add(want)
        for i, part in enumerate(parts):
            assert part.keys() == glob.keys()
            for k, v in part.items():
                ref = glob[k][8 * i:8 * i + 8]
                if k in TOKEN_KEYS:
                    assert v.shape == (8, want), k  # every process the same shape
                    np.testing.assert_array_equal(v, ref[:, :want], err_msg=k)
                else:
                    np.testing.assert_array_equal(v, ref, err_msg=k)
    assert seen == {11, L}
    with pytest.raises(ValueError, match="alternatives"):
        pipe(bucket_lengths=buckets, packing_rows=8)


# --- exact resume through Grain --------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_from_a_step_gives_the_same_batches(prefetch):
    with pipe(masking=MASKING, num_steps=18, prefetch=prefetch).iterate(0) as it:
        full = list(it)
    assert len(full) == 18
    for start in (1, 5, 6, 11, 17, 18):
        with pipe(masking=MASKING, num_steps=18, prefetch=prefetch).iterate(start) as it:
            resumed = list(it)
        assert len(resumed) == 18 - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert_batches_equal(a, b)
    # Random access in any order, from a fresh pipeline (no state carried between steps).
    fresh = pipe(masking=MASKING)
    for s in (17, 0, 12, 6, 5):
        assert_batches_equal(fresh.batch(s), full[s])
    # Endless: no num_steps.
    with pipe(masking=MASKING, prefetch=prefetch).iterate(16) as it:
        assert_batches_equal(next(it), full[16])
        assert_batches_equal(next(it), full[17])
        assert it.step == 18


def test_iterate_propagates_exceptions(monkeypatch):
    p = pipe(prefetch=2)
    original = p._maker.make

    def failing(step):
        if step == 3:
            raise KeyError("bad batch 3")
        return original(step)

    monkeypatch.setattr(p._maker, "make", failing)
    got = []
    with pytest.raises(KeyError, match="bad batch 3"), p.iterate(1) as batches:
        for b in batches:
            got.append(b)
    assert len(got) == 2


def test_worker_processes_give_the_same_batches():
    want = [pipe(masking=MASKING).batch(s) for s in range(4, 9)]
    with pipe(masking=MASKING, workers=2, prefetch=1, num_steps=9).iterate(4) as it:
        got = list(it)
    assert len(got) == 5
    for a, b in zip(got, want, strict=True):
        assert_batches_equal(a, b)


# --- mixtures --------------------------------------------------------------------------------

def test_a_mixture_reads_each_row_from_its_source():
    other = source_of(make_arrays(n=40, seed=1, first=5000), name="other")
    reference = rows.pad_rows([rows.decode_row(b) for b in other.blobs], max_len=L, pad_id=0)
    p = Pipeline([SOURCE, other], weights=[0.75, 0.25], global_batch_size=16, seed=3,
                 max_len=L, pad_id=0, process_index=0, process_count=1, prefetch=0,
                 masking=MASKING)
    assert p.steps_per_epoch is None and "2 sources" in p.describe()
    for step in (0, 1, 2, 9, 10):
        source, row = p.global_indices(step)
        assert (source == 1).sum() == 4  # 0.25 x 16
        b = p.batch(step)
        for i in range(16):
            ref = CORPUS if source[i] == 0 else reference
            np.testing.assert_array_equal(b["input_ids"][i], ref["input_ids"][row[i]])
            np.testing.assert_array_equal(b["token_valence"][i], ref["token_valence"][row[i]])
        # The global masks on the mixed batch.
        ids, labels = mask_tokens(
            b["input_ids"], b["special_tokens_mask"], mask_token_id=MASKING.mask_token_id,
            vocab_size=MASKING.vocab_size, special_ids=MASKING.special_ids, rate=MASKING.rate,
            seed=3, step=step, process_index=0)
        np.testing.assert_array_equal(b["mlm_labels"], labels)
    # Two processes: disjoint reads, union the global batch.
    counting = [[CountingSource(SOURCE), CountingSource(other)] for _ in range(2)]
    parts = [Pipeline(srcs, weights=[0.75, 0.25], global_batch_size=16, seed=3, max_len=L,
                      pad_id=0, process_index=i, process_count=2, masking=MASKING).batch(10)
             for i, srcs in enumerate(counting)]
    glob = p.batch(10)
    assert_batches_equal({k: np.concatenate([q[k] for q in parts]) for k in glob}, glob)
    source, row = p.global_indices(10)
    for k in range(2):
        reads = [sorted(counting[i][k].reads) for i in range(2)]
        assert sorted(reads[0] + reads[1]) == sorted(row[source == k].tolist())
        for i in range(2):
            blk = slice(8 * i, 8 * i + 8)
            assert reads[i] == sorted(row[blk][source[blk] == k].tolist())


# --- device placement ------------------------------------------------------------------------

def test_device_put_to_a_sharding():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    p = pipe(sharding=sharding, masking=MASKING, prefetch=2, process_index=None,
             process_count=None)
    with p.iterate(4) as batches:
        b = next(batches)
    ref = pipe(masking=MASKING).batch(4)
    assert b.keys() == ref.keys()
    for k, v in b.items():
        assert isinstance(v, jax.Array) and v.sharding == sharding, k
        np.testing.assert_array_equal(np.asarray(v), ref[k])
    with pytest.raises(ValueError, match="simulated"):
        pipe(sharding=sharding, process_index=0, process_count=2)
