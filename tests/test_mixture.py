"""Mixture index arithmetic (softmcl_jax.data.mixture): per-step counts by telescoping floors,
per-source epochs, the slot interleave, one source = the pipeline's order since the beginning,
refusals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from softmcl_jax.data.mixture import Mixture, epoch_permutation, source_permutation


def todays_global_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The reference: the single-source pipeline's indices with drop_remainder=True, copied from
    its code before mixtures (epoch = step // steps_per_epoch, a slice of the permutation)."""
    steps_per_epoch = n // batch
    epoch, i = divmod(step, steps_per_epoch)
    return epoch_permutation(n, seed, epoch)[i * batch:(i + 1) * batch]


def test_counts_by_telescoping_floors():
    mix = Mixture([1000, 1000, 1000], [0.3, 0.3, 0.4], global_batch_size=32, seed=0)
    assert mix.weights == (Fraction(3, 10), Fraction(3, 10), Fraction(2, 5))
    counts = np.stack([mix.counts(s) for s in range(50)])
    assert (counts.sum(1) == 32).all() and (counts >= 0).all()
    # By hand: A(1) = (floor 9.6, floor 19.2 - 9, 32 - 19) = (9, 10, 13); A(2) = (19, 19, 26).
    np.testing.assert_array_equal(counts[0], [9, 10, 13])
    np.testing.assert_array_equal(counts[1], [10, 9, 13])
    np.testing.assert_array_equal(mix.drawn_before(2), [19, 19, 26])
    # Exact decimal shares: after 5 steps 0.3 * 160 = 48 rows exactly (not 47 by binary 0.3).
    np.testing.assert_array_equal(mix.drawn_before(5), [48, 48, 64])
    # Long-run shares within 1/steps of the weights (in fact within one row of w * B * steps).
    shares = counts.sum(0) / (32 * 50)
    assert np.abs(shares - [0.3, 0.3, 0.4]).max() <= 1 / 50
    np.testing.assert_array_equal(mix.drawn_before(50), counts.sum(0))
    # Closed form: the count at a far step needs no history.
    far = 10**12
    assert mix.counts(far).sum() == 32 and (mix.counts(far) >= 0).all()
    # Weights in any scale.
    same = Mixture([1000] * 3, [3, 3, 4], global_batch_size=32, seed=0)
    np.testing.assert_array_equal(same.counts(7), mix.counts(7))


def test_smallest_weights_still_never_negative():
    # w * B = 1 exactly for the small source: one row a step, the others never below 0.
    mix = Mixture([50, 50, 50], [1, 30, 1], global_batch_size=32, seed=0)
    counts = np.stack([mix.counts(s) for s in range(200)])
    assert (counts >= 0).all() and (counts.sum(1) == 32).all()
    np.testing.assert_array_equal(counts[:, 0], 1)


def test_one_source_is_the_pipelines_order_since_the_beginning():
    for n, batch in ((103, 16), (64, 16), (1000, 32)):
        mix = Mixture([n], global_batch_size=batch, seed=3)
        for step in (0, 1, n // batch - 1, n // batch, 2 * (n // batch) + 1, 57):
            source, row = mix.global_indices(step)
            assert (source == 0).all()
            np.testing.assert_array_equal(row, todays_global_indices(n, batch, 3, step))


def test_source_permutation_is_todays_for_source_zero():
    perm = source_permutation(1000, 7, 2, 0)
    assert perm.dtype == np.int32
    np.testing.assert_array_equal(perm, epoch_permutation(1000, 7, 2))
    other = source_permutation(1000, 7, 2, 1)
    assert sorted(other.tolist()) == list(range(1000))
    assert not np.array_equal(other, perm)  # its own stream
    assert not np.array_equal(source_permutation(1000, 7, 3, 1), other)  # redrawn each epoch


def test_tiny_mixture_by_hand():
    # B = 4, equal weights: 2 rows a step from each. Source 0 (5 rows >= B): epochs of 4 (one
    # row left out each epoch); source 1 (3 rows < B): whole epochs of 3.
    mix = Mixture([5, 3], [1, 1], global_batch_size=4, seed=11)
    assert mix.epoch_lengths == (4, 3)
    p0 = [epoch_permutation(5, 11, e) for e in range(3)]
    p1 = [source_permutation(3, 11, e, 1) for e in range(4)]
    stream0 = np.concatenate([p[:4] for p in p0])
    stream1 = np.concatenate(p1)
    for step in range(5):
        np.testing.assert_array_equal(mix.counts(step), [2, 2])
        source, row = mix.global_indices(step)
        # The next two rows of each source's stream, source 0's then source 1's, put into the
        # slots by the step's permutation.
        rng = np.random.default_rng(np.random.SeedSequence([11, step], spawn_key=(0x494C,)))
        slots = rng.permutation(4)
        drawn = np.concatenate([stream0[2 * step:2 * step + 2], stream1[2 * step:2 * step + 2]])
        np.testing.assert_array_equal(row, drawn[slots])
        np.testing.assert_array_equal(source, np.repeat([0, 1], 2)[slots])


def test_rows_never_repeat_within_a_sources_epoch():
    sizes = [70, 45, 20]
    mix = Mixture(sizes, [0.5, 0.3, 0.2], global_batch_size=16, seed=5)
    steps = 60
    drawn: list[list[int]] = [[], [], []]
    blocks_mixed = 0
    for step in range(steps):
        source, row = mix.global_indices(step)
        assert len(row) == 16
        for k in range(3):
            drawn[k].extend(row[source == k].tolist())
        # Every block of 4 slots (a process's share with 4 processes) draws from 2+ sources
        # most of the time: the slots are interleaved, not source by source.
        blocks_mixed += sum(len(set(source[i:i + 4].tolist())) > 1 for i in range(0, 16, 4))
    assert blocks_mixed > 0.8 * 4 * steps
    for k in range(3):
        # The batches hold exactly each source's stream (the slot interleave reorders rows
        # within a step, across an epoch boundary too, so compare as multisets) ...
        rows = mix.stream(k, 0, int(mix.drawn_before(steps)[k])).tolist()
        assert sorted(drawn[k]) == sorted(rows)
        # ... and the stream's epochs hold no row twice.
        length = mix.epoch_lengths[k]
        assert length == (sizes[k] - sizes[k] % 16 if sizes[k] >= 16 else sizes[k])
        whole = len(rows) // length
        assert whole >= 2
        for e in range(whole):
            epoch = rows[e * length:(e + 1) * length]
            assert len(set(epoch)) == length, (k, e)  # no repeats within an epoch
            assert set(epoch) <= set(range(sizes[k]))
        if length < sizes[k]:  # the cut leaves out different rows in different epochs
            left = [set(range(sizes[k])) - set(rows[e * length:(e + 1) * length])
                    for e in range(whole)]
            assert len({frozenset(x) for x in left}) > 1


def test_refusals_name_the_field():
    with pytest.raises(ValueError, match=r"config\.data\.mixture\[1\].*> 0"):
        Mixture([10, 10], [1, 0], global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"config\.data\.mixture\[0\].*> 0"):
        Mixture([10, 10], [-1, 2], global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"config\.data\.mixture\[1\].*global batch of 8"):
        Mixture([10, 10], [0.9, 0.1], global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"config\.data\.mixture\[2\]: the source has no rows"):
        Mixture([10, 10, 0], [1, 1, 1], global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"2 weights for 3 sources"):
        Mixture([10, 10, 10], [1, 1], global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"data\.x\[0\]"):
        Mixture([10], [float("nan")], global_batch_size=8, seed=0, field="data.x")
