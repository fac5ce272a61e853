"""Input pipeline: per-epoch shuffle, multi-process sharding, drop_remainder accounting, MLM per
batch, exact resume from a step, background prefetch (shutdown, exceptions), device_put."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from softmcl_jax.data.masking import MaskingConfig
from softmcl_jax.data.pipeline import Pipeline, Prefetcher, epoch_permutation

N, L = 103, 12
MASKING = MaskingConfig(mask_token_id=103, vocab_size=30522, special_ids=(0, 100, 101, 102, 103),
                        rate=0.3)


def make_arrays(n=N, length=L):
    """Rows whose token 1 encodes the example index, so a batch says which examples it holds."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, length + 1, size=n)
    pos = np.arange(length)[None]
    ids = rng.integers(1000, 30000, size=(n, length)).astype(np.int32)
    ids[:, 0] = 101
    ids[:, 1] = 1000 + np.arange(n)
    ids[pos == lengths[:, None] - 1] = 102
    ids[pos >= lengths[:, None]] = 0
    attention = (pos < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "special_tokens_mask": (pos == 0) | (pos >= lengths[:, None] - 1),
        "token_valence": rng.random((n, length)).astype(np.float32),
        "token_valence_mask": rng.random((n, length)) < 0.2,
        "sentence_valence": rng.random(n).astype(np.float32),
        "sentence_valence_mask": np.ones(n, bool),
        "labels": rng.integers(0, 3, size=n).astype(np.int32),
    }


def example_ids(batch):
    return np.asarray(batch["input_ids"])[:, 1] - 1000


def pipe(**kw):
    arrays = kw.pop("arrays", None)
    args = dict(global_batch_size=16, seed=3, process_index=0, process_count=1, prefetch=0)
    args.update(kw)
    return Pipeline(make_arrays() if arrays is None else arrays, **args)


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# --- epochs, shuffling, drop_remainder -------------------------------------------------------

def test_epoch_arithmetic_and_shuffle():
    p = pipe(num_epochs=3)
    assert (p.steps_per_epoch, p.dropped_per_epoch, p.num_steps) == (6, 7, 18)
    assert "7 examples left out per epoch" in p.describe()
    batches = list(p)
    assert len(batches) == 18
    epochs = [np.concatenate([example_ids(b) for b in batches[e * 6:(e + 1) * 6]])
              for e in range(3)]
    for e, seen in enumerate(epochs):
        assert len(set(seen.tolist())) == 96  # no repeats within an epoch
        np.testing.assert_array_equal(seen, epoch_permutation(N, 3, e)[:96])
        left_out = set(range(N)) - set(seen.tolist())
        assert len(left_out) == 7
    assert not np.array_equal(epochs[0], epochs[1])  # order redrawn each epoch ...
    # ... so over epochs the left-out examples change
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())
    for b in batches:
        assert {k: v.shape[0] for k, v in b.items()} == dict.fromkeys(b, 16)
        assert b["input_ids"].shape == (16, L) and b["valid"].all()


def test_seeds_and_no_shuffle():
    a = example_ids(pipe(seed=1).batch(0))
    assert not np.array_equal(a, example_ids(pipe(seed=2).batch(0)))
    np.testing.assert_array_equal(a, example_ids(pipe(seed=1).batch(0)))
    p = pipe(shuffle=False)
    np.testing.assert_array_equal(example_ids(p.batch(1)), np.arange(16, 32))
    np.testing.assert_array_equal(example_ids(p.batch(p.steps_per_epoch)), np.arange(16))


def test_keep_remainder_pads_the_last_batch_with_invalid_rows():
    p = pipe(drop_remainder=False, masking=MASKING, num_epochs=1)
    assert (p.steps_per_epoch, p.dropped_per_epoch) == (7, 0)
    batches = list(p)
    last = batches[-1]
    assert last["valid"].sum() == N - 6 * 16 and not last["valid"][7:].any()
    seen = np.concatenate([example_ids(b)[b["valid"]] for b in batches])
    assert sorted(seen.tolist()) == list(range(N))  # every example exactly once
    bad = ~last["valid"]
    assert (last["labels"][bad] == -1).all() and (last["mlm_labels"][bad] == -100).all()
    assert not last["token_valence_mask"][bad].any()
    assert not last["sentence_valence_mask"][bad].any()
    assert (last["input_ids"][bad] == make_arrays()["input_ids"][example_ids(last)[bad]]).all()


def test_too_few_examples_and_bad_arguments():
    with pytest.raises(ValueError, match="no full global batch"):
        pipe(global_batch_size=128)
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipe(global_batch_size=18, process_count=4, process_index=0)
    with pytest.raises(ValueError, match="process_index"):
        pipe(process_index=2, process_count=2)
    with pytest.raises(ValueError, match="different lengths"):
        Pipeline({"input_ids": np.zeros((4, 2)), "labels": np.zeros(3)}, global_batch_size=2,
                 seed=0, process_index=0, process_count=1)
    with pytest.raises(IndexError):
        pipe(num_epochs=1).batch(6)


# --- sharding over processes -----------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 4])
def test_processes_get_disjoint_equal_slices_whose_union_is_the_global_batch(count):
    single = pipe(masking=MASKING)
    procs = [pipe(masking=MASKING, process_index=i, process_count=count) for i in range(count)]
    for step in (0, 1, 5, 6, 13):  # 6 and 13 cross epoch boundaries
        glob = single.batch(step)
        parts = [p.batch(step) for p in procs]
        assert all(len(example_ids(b)) == 16 // count for b in parts)
        ids = np.concatenate([example_ids(b) for b in parts])
        assert len(set(ids.tolist())) == 16  # disjoint
        # Masks too: each process keeps its rows of the global batch's masks, so the corruption
        # does not depend on the process count.
        for key in ("input_ids", "attention_mask", "labels", "token_valence", "valid",
                    "mlm_input_ids", "mlm_labels"):
            np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), glob[key])


def test_masks_are_the_global_batchs_from_seed_and_step():
    from softmcl_jax.data.masking import mask_tokens

    single = pipe(masking=MASKING).batch(7)
    ids, labels = mask_tokens(
        single["input_ids"], single["special_tokens_mask"], mask_token_id=MASKING.mask_token_id,
        vocab_size=MASKING.vocab_size, special_ids=MASKING.special_ids, rate=MASKING.rate,
        seed=3, step=7, process_index=0)
    np.testing.assert_array_equal(single["mlm_input_ids"], ids)
    np.testing.assert_array_equal(single["mlm_labels"], labels)


# --- masking in the pipeline -----------------------------------------------------------------

def test_masking_adds_keys_and_leaves_input_ids_alone():
    arrays = make_arrays()
    b = pipe(masking=MASKING).batch(2)
    plain = pipe().batch(2)
    np.testing.assert_array_equal(b["input_ids"], plain["input_ids"])
    sel = b["mlm_labels"] != -100
    assert sel.any()
    np.testing.assert_array_equal(b["mlm_labels"][sel], b["input_ids"][sel])
    assert not (sel & b["special_tokens_mask"]).any()
    assert (b["mlm_input_ids"][~sel] == b["input_ids"][~sel]).all()
    # Without special_tokens_mask it is derived from the special ids and the attention mask.
    del arrays["special_tokens_mask"]
    derived = pipe(arrays=arrays, masking=MASKING).batch(2)
    np.testing.assert_array_equal(derived["mlm_labels"], b["mlm_labels"])
    assert pipe(masking=MASKING).batch(3)["mlm_labels"].tolist() != b["mlm_labels"].tolist()


# --- exact resume ----------------------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_a_step_gives_the_same_batches(prefetch):
    p = pipe(masking=MASKING, num_epochs=3, prefetch=prefetch)
    full = list(p.iterate(0))
    for start in (1, 5, 6, 11, 17):
        resumed = list(pipe(masking=MASKING, num_epochs=3, prefetch=prefetch).iterate(start))
        assert len(resumed) == 18 - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert_batches_equal(a, b)
    # Random access in any order, from a fresh pipeline (no state carried between steps).
    fresh = pipe(masking=MASKING, num_epochs=3)
    for s in (17, 0, 12, 6, 5):
        assert_batches_equal(fresh.batch(s), full[s])


# --- prefetch --------------------------------------------------------------------------------

def counting_source(n, produced, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError(f"boom at {i}")
        produced.append(i)
        yield i


def test_prefetch_is_bounded_and_ordered():
    produced = []
    pf = Prefetcher(counting_source(100, produced), size=2)
    time.sleep(0.3)
    # Two items queued, one more made and waiting to be put.
    assert len(produced) <= 3
    assert [next(pf) for _ in range(10)] == list(range(10))
    assert list(pf) == list(range(10, 100))
    assert not pf.alive


def test_prefetch_propagates_exceptions_after_earlier_items():
    produced = []
    pf = Prefetcher(counting_source(10, produced, fail_at=4), size=2)
    assert [next(pf) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="boom at 4"):
        next(pf)
    with pytest.raises(StopIteration):
        next(pf)
    pf._thread.join(2)
    assert not pf.alive


def test_pipeline_propagates_exceptions(monkeypatch):
    p = pipe(prefetch=2)
    original = Pipeline.batch

    def failing(self, step):
        if step == 3:
            raise KeyError("bad batch 3")
        return original(self, step)

    monkeypatch.setattr(Pipeline, "batch", failing)
    got = []
    with pytest.raises(KeyError, match="bad batch 3"), p.iterate(1) as batches:
        for b in batches:
            got.append(b)
    assert len(got) == 2


def test_prefetch_shuts_down_cleanly():
    before = threading.active_count()
    # close() with the producer blocked on a full queue of an endless source
    pf = pipe(prefetch=2).iterate(0)
    next(pf)
    time.sleep(0.1)
    pf.close()
    assert not pf.alive
    with pytest.raises(StopIteration):
        next(pf)
    # leaving a with block early
    with pipe(prefetch=2).iterate(0) as batches:
        for i, _ in enumerate(batches):
            if i == 3:
                break
    assert not batches.alive
    # dropping the last reference
    pf = pipe(prefetch=2).iterate(0)
    next(pf)
    thread = pf._thread
    del pf
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()
    assert threading.active_count() <= before


def test_prefetch_zero_is_synchronous_and_equal():
    a = list(pipe(prefetch=0, num_epochs=1, masking=MASKING))
    b = list(pipe(prefetch=3, num_epochs=1, masking=MASKING))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b, strict=True):
        assert_batches_equal(x, y)


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
