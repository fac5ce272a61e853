"""data.rating_unit="spread": ratings over their mean absolute difference (rating_units.py).

References: the brute-force mean over all pairs, and the invariance the unit exists for: soft
targets that do not change when the ratings are stretched or shifted (another rating scale, or
data that use more of theirs)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from softmcl_jax import config_check, losses
from softmcl_jax.data import rating_units
from softmcl_jax.data.rows import RowStats, decode_row, rows_from_encoded
from tests.test_objective import preset


def _brute(x):
    return np.mean([abs(a - b) for a, b in itertools.permutations(np.asarray(x, float), 2)])


@pytest.mark.parametrize("x", [[0.2, 0.7], [1, 1, 2], np.random.default_rng(0).uniform(size=37),
                               np.round(np.random.default_rng(1).uniform(size=50), 1)])
def test_mean_abs_difference_is_the_mean_over_distinct_pairs(x):
    assert rating_units.mean_abs_difference(x) == pytest.approx(_brute(x), rel=1e-12)


def test_mean_abs_difference_needs_two_values():
    with pytest.raises(ValueError, match="2 or more values, got 1"):
        rating_units.mean_abs_difference([0.5])


def _arrays(rng, n=40, length=12):
    """encode_sentences' rating arrays with absent markers: -1 (sentence_*, token_arousal) and 0
    outside token_valence_mask."""
    mask = rng.uniform(size=(n, length)) < 0.3
    token_valence = np.where(mask, rng.uniform(size=(n, length)), 0.0).astype(np.float32)
    token_arousal = np.where(mask & (rng.uniform(size=(n, length)) < 0.8),
                             rng.uniform(size=(n, length)), -1.0).astype(np.float32)
    sentence_valence = np.where(rng.uniform(size=n) < 0.9, rng.uniform(0.4, 0.6, size=n),
                                -1.0).astype(np.float32)
    return {"input_ids": rng.integers(5, 100, size=(n, length)), "token_valence": token_valence,
            "token_valence_mask": mask, "token_arousal": token_arousal,
            "sentence_valence": sentence_valence, "sentence_valence_mask": sentence_valence >= 0}


def test_ratings_are_divided_by_their_spread_and_markers_kept():
    a = _arrays(np.random.default_rng(0))
    out, spreads = rating_units.in_spread_units(a)
    assert sorted(spreads) == ["sentence_valence", "token_arousal", "token_valence"]
    for key, present in (("sentence_valence", a["sentence_valence"] >= 0),
                         ("token_valence", a["token_valence_mask"]),
                         ("token_arousal", a["token_arousal"] >= 0)):
        assert spreads[key] == pytest.approx(_brute(a[key][present]), rel=1e-6)
        np.testing.assert_allclose(out[key][present], a[key][present] / spreads[key], rtol=1e-6)
        np.testing.assert_array_equal(out[key][~present], a[key][~present])
        assert out[key].dtype == a[key].dtype
        # In spread units the mean difference of two items is 1 in every array.
        assert rating_units.mean_abs_difference(out[key][present]) == pytest.approx(1, rel=1e-5)
    for key in ("input_ids", "token_valence_mask", "sentence_valence_mask"):
        assert out[key] is a[key]


def test_soft_targets_in_spread_units_ignore_the_rating_scale():
    """Ratings c * x + b (c > 0): in spread units the same label distances, so the same loss;
    on the scale, a narrower band (c < 1) gives another loss (flatter targets)."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 16, 8)).astype(np.float32)
    x = rng.uniform(size=(16, 2)).astype(np.float32)

    def loss(labels, unit):
        if unit == "spread":
            labels = labels / np.array([rating_units.mean_abs_difference(c) for c in labels.T])
        return float(losses.soft_label_contrastive(q, k, labels, temperature=0.1,
                                                   label_temperature=0.4,
                                                   label_weights=(0.5, 0.5)))

    narrow = 0.25 * x + 0.4  # EmoBank-like: a band in the middle of the scale
    assert loss(narrow, "spread") == pytest.approx(loss(x, "spread"), rel=1e-5)
    assert abs(loss(narrow, "scale") - loss(x, "scale")) > 1e-2


def test_ratings_that_do_not_vary_are_refused_by_name():
    a = _arrays(np.random.default_rng(0))
    a["sentence_valence"] = np.where(a["sentence_valence"] >= 0, 0.5, -1.0).astype(np.float32)
    with pytest.raises(ValueError, match=r"rating_unit='spread': the training data's "
                                         r"sentence_valence ratings do not vary"):
        rating_units.in_spread_units(a)


def _manifest(a, rows):
    """A prepared folder's manifest of ``a``'s rows ``rows`` (rows.RowStats, as prepare writes)."""
    arrays = {**a, "attention_mask": np.ones_like(a["input_ids"], np.int32),
              "special_tokens_mask": np.zeros(a["input_ids"].shape, bool),
              "labels": np.full(len(a["input_ids"]), -1, np.int32)}
    stats = RowStats(a["input_ids"].shape[1])
    for blob in rows_from_encoded({k: v[rows] for k, v in arrays.items()}):
        stats.add(decode_row(blob))
    return stats.to_json()


def test_a_mixtures_spreads_are_those_of_the_union_of_its_rows():
    """From two manifests' rating multisets alone, the spreads of all their rows together."""
    a = _arrays(np.random.default_rng(1))
    _, whole = rating_units.in_spread_units(a)
    parts = [_manifest(a, slice(0, 15)), _manifest(a, slice(15, None))]
    merged = rating_units.spreads_of_manifests(parts)
    assert sorted(merged) == sorted(whole)
    for key in whole:
        assert merged[key] == pytest.approx(whole[key], rel=1e-12)
    flat = _manifest({**a, "sentence_valence": np.where(a["sentence_valence"] >= 0, 0.5, -1.0)
                      .astype(np.float32)}, slice(None))
    with pytest.raises(ValueError, match="sentence_valence ratings do not vary"):
        rating_units.spreads_of_manifests([flat])


def test_an_unknown_rating_unit_is_refused():
    with pytest.raises(ValueError, match=r"config.data.rating_unit='z' is not one of"):
        config_check.validate(preset("softmcl", **{"data.rating_unit": "z"}))


def test_the_vad_presets_label_temperature_is_the_vader_presets_sharpness():
    """configs/softmcl_vad.py's label temperature in spreads is configs/softmcl.py's on the
    scale, measured in the spreads of the data that preset trains on (the shipped VADER
    sentences, and the lexicon's entries: 0.244, close to the 0.252 of the rated tokens that
    the pipeline measures, which needs the tokenizer)."""
    import runpy

    from softmcl_jax.data import load_vader_lexicon, load_vader_sentences
    from tests.train_utils import ROOT

    vader = runpy.run_path(f"{ROOT}/configs/softmcl.py")["get_config"]()
    vad = runpy.run_path(f"{ROOT}/configs/softmcl_vad.py")["get_config"]()
    sentences = load_vader_sentences(tuple(vader.data.vader_sets))
    for term, values in (("soft_sentence", [s.valence for s in sentences]),
                         ("soft_word", list(load_vader_lexicon().values()))):
        on_scale = vader.objective[term].label_temperature
        in_spreads = on_scale / rating_units.mean_abs_difference(values)
        assert vad.objective[term].label_temperature == pytest.approx(in_spreads, abs=0.025)
        assert vader.data.rating_unit == "scale" and vad.data.rating_unit == "spread"
