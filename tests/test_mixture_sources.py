"""``data.mixture`` entries that are sources, not prepared folders: ``(("source", NAME),
(field, value), ...)`` pairs overriding ``config.data`` for that entry, prepared into the cache
on first use exactly as that source alone is, then read like any folder; their validation; and
the all-affect recipe (``configs/softmcl_affect.py``) that mixes VADER's rated sentences with
GoEmotions' labelled comments."""

from __future__ import annotations

import os

import pytest
import transformers

from softmcl_jax import config_check, loop
from softmcl_jax.data import prepare
from softmcl_jax.data.prepared import PreparedSource
from tests import train_utils as tu

preset = tu.load_config

FIXTURES = os.path.join(tu.ROOT, "tests", "fixtures", "data")
# Made-up GoEmotions-format comments: 16 single-label ones over 4 classes (2 anger, 14 fear,
# 15 gratitude, 17 joy; 4 each), 2 multi-label ones that single_label_only drops.
GOEMOTIONS = os.path.join(FIXTURES, "goemotions_affect.tsv")
GOEMOTIONS_ENTRY = (("source", "goemotions"), ("path", GOEMOTIONS), ("single_label_only", True))
VADER_ENTRY = (("source", "vader"), ("max_examples", 24))


def affect(tmp_path, model_dir: str, **fields):
    """The all-affect preset, tiny, on the fixture comments and 24 VADER sentences."""
    return preset("softmcl_affect", **{
        "model.name_or_path": model_dir, "model.max_len": 32, "probe.enabled": False,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.mixture": ((VADER_ENTRY, 0.5), (GOEMOTIONS_ENTRY, 0.5)), **fields})


def test_the_affect_preset_validates_and_plans_supcon_on_its_own_head():
    the_plan = config_check.validate(preset("softmcl_affect"))
    assert the_plan.terms == ("soft_sentence", "soft_word", "mlm", "infonce", "supcon", "vsp")
    heads = dict(the_plan.heads)
    assert heads["emotion"] == "projection" and heads["projection"] == "projection"
    entries = config_check.mixture_entries(preset("softmcl_affect").data.mixture,
                                           preset("softmcl_affect").data)
    assert [e.weight for e in entries] == [0.5, 0.5]
    assert [dict(e.fields)["source"] for e in entries] == ["vader", "goemotions"]
    assert all(e.folder is None for e in entries)


def test_a_source_entry_is_the_folder_that_source_alone_prepares(tmp_path, tiny_model):
    """The GoEmotions entry is prepared into the run's cache under the key a run of that source
    alone uses (the same folder, reused), and holds the rows a fresh preparation of that source
    writes, byte for byte; the VADER entry keeps its own max_examples."""
    config = affect(tmp_path, tiny_model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    sources, weights = loop.data_sources(config, tokenizer)
    assert weights == [0.5, 0.5]
    vader, goemotions = sources
    assert len(vader) == 24
    assert len(goemotions) == 16  # the single-label comments

    alone = preset("softmcl_affect", **{
        "model.name_or_path": tiny_model, "model.max_len": 32, "probe.enabled": False,
        "data.cache_dir": str(tmp_path / "cache"), "data.mixture": (),
        "data.source": "goemotions", "data.path": GOEMOTIONS, "data.single_label_only": True})
    assert prepare.cached(alone, loop.cache_dir(alone)) == goemotions.path
    fresh = str(tmp_path / "fresh")
    manifest = prepare.prepare(alone, fresh)
    assert manifest["rows"] == 16 and manifest["flags"]["class"] == 16
    again = PreparedSource(fresh)
    assert again.read(range(16)) == goemotions.read(range(16))
    assert again.manifest["data"] == goemotions.manifest["data"]


# ------------------------------------------------------------------- the form and its checks


def parse(*overrides: str):
    """The config main.py gets for the affect preset and ``overrides`` (config_flags, locked)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main.py", f"--config={os.path.join(tu.ROOT, 'configs', 'softmcl_affect.py')}",
            *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def test_a_source_entry_survives_the_command_line_freezing_and_config_json():
    """The (field, value) pairs form parses from a command-line literal, freezes
    (FrozenConfigDict), and reads back from the run's config.json (lists for tuples) as the same
    entries: the resume guard sees no difference."""
    import json

    import ml_collections

    from softmcl_jax import workdir

    literal = ("(((('source', 'vader'), ('max_examples', 24)), 0.5), ((('source', 'goemotions'), "
               f"('path', {GOEMOTIONS!r}), ('single_label_only', True)), 1))")
    config = parse(f"--config.data.mixture={literal}")
    assert config.data.mixture == ((VADER_ENTRY, 0.5), (GOEMOTIONS_ENTRY, 1))
    frozen = ml_collections.FrozenConfigDict(config)
    assert frozen.data.mixture == config.data.mixture
    stored = json.loads(config.to_json_best_effort())
    assert stored["data"]["mixture"][0] == [[["source", "vader"], ["max_examples", 24]], 0.5]
    assert workdir.config_differences(stored, json.loads(config.to_json_best_effort())) == []
    reread = ml_collections.ConfigDict(stored).data
    assert (config_check.mixture_entries(reread.mixture, reread)
            == config_check.mixture_entries(config.data.mixture, config.data))
    entry = config_check.mixture_entries(config.data.mixture, config.data)[1]
    assert entry == config_check.MixtureEntry(None, GOEMOTIONS_ENTRY, 1.0)


def test_an_entry_overrides_the_runs_data_fields_for_itself_only():
    config = preset("softmcl_affect")
    data = prepare.source_data(config.data, GOEMOTIONS_ENTRY)
    assert (data.source, data.path, data.single_label_only) == ("goemotions", GOEMOTIONS, True)
    assert data.mixture == () and data.lexicon == "vader" and data.num_labels == 28
    # The run's own data section is untouched, and so is the rest of the run's config.
    assert config.data.source == "vader" and config.data.path == ""
    whole = prepare.source_config(config, (("source", "vader"), ("vader_sets", ["tweets"])))
    assert whole.data.vader_sets == ("tweets",) and whole.model == config.model
    assert config.data.vader_sets == ("tweets", "movie_reviews", "product_reviews", "nyt")


@pytest.mark.parametrize("entry,message", [
    ({"source": "vader"}, r"config.data.mixture\[1\]: the source \{'source': 'vader'\} is a "
                          r"dict; write it as \(field, value\) pairs, \(\('source', 'vader'\),\)"),
    ((("source", "prepared"), ("path", "/x")),
     r"config.data.mixture\[1\] sets config.data.source='prepared': give the prepared folder"),
    ((("source", "nope"),), r"config.data.mixture\[1\] sets config.data.source='nope': not one"),
    ((("path", "/x.tsv"),), r"config.data.mixture\[1\]=\(\('path', '/x.tsv'\),\) names no source"),
    ((("source", "vader"), ("lexicon", "none")),
     r"config.data.mixture\[1\] sets config.data.lexicon: run-wide, not per entry: every entry "
     r"of a mixture is prepared with the run's own"),
    ((("source", "vader"), ("max_len", 16)),
     r"config.data.mixture\[1\] sets config.data.max_len: no such field of config.data"),
    ((("source", "vader"), ("num_labels", 3)),
     r"config.data.mixture\[1\] sets config.data.num_labels: run-wide.*config.data.num_labels "
     r"instead"),
    ((("source", "vader"), ("mlm_rate", 0.3)),
     r"config.data.mixture\[1\] sets config.data.mlm_rate: run-wide, not per entry \(it acts on "
     r"the whole run's batches\)"),
    ((("source", "vader"), ("source", "sst")),
     r"config.data.mixture\[1\] sets config.data.source twice"),
    ((("source", "vader"), ("max_examples", "10")),
     r"config.data.mixture\[1\] sets config.data.max_examples='10', not of the field's type"),
    ((("source", "vader"), ("max_examples", -1)),
     r"config.data.mixture\[1\] sets config.data.max_examples=-1: must be >= 0"),
    ((("source", "csv"), ("path", "/x.csv"), ("scale_low", 1.0)),
     r"config.data.mixture\[1\]: config.data.scale_low=1.0 and scale_high=None: set both"),
    ((("source", "vader"), "max_examples"),
     r"config.data.mixture\[1\]: 'max_examples' is not a \(field, value\) pair"),
])
def test_a_bad_source_entry_is_refused_naming_the_entry_and_the_field(entry, message):
    config = preset("softmcl_affect", **{"data.mixture": ((VADER_ENTRY, 0.5), (entry, 0.5))})
    with pytest.raises(ValueError, match=message):
        config_check.validate(config)


def test_a_source_entry_with_no_positive_weight_is_refused():
    for weight in (0, -0.5, float("nan")):
        config = preset("softmcl_affect", **{"data.mixture": ((VADER_ENTRY, weight),)})
        with pytest.raises(ValueError, match=r"config.data.mixture\[0\]=.*must be finite and > 0"):
            config_check.validate(config)


def test_the_reproductions_affect_runs_read_goemotions_under_data_dir():
    """The AFFECT_MIX runs' mixture is the preset's with GoEmotions under --data_dir; the LCL
    runs swap SupCon for configs/lcl.py's three terms, on the pooled output or a head."""
    import sys

    sys.path.insert(0, os.path.join(tu.ROOT, "benchmarks"))
    import reproduce_runs as rr

    runs = rr.AFFECT_MIX
    assert set(runs) == {"affect_supcon_head", "affect_supcon_pooled", "affect_lcl_head",
                         "affect_lcl_pooled", "affect_supcon0.3", "affect_supcon0.3_vsp3",
                         "affect_supcon0.1", "affect_supcon0.3_mix0.75",
                         "affect_supcon0", "affect_supcon0.03", "affect_supcon0.05"}
    assert all(name in rr.RUNS for name in runs)
    config = parse(*runs["affect_supcon_head"].flags("/data"))
    want = runs_preset_mixture("/data/goemotions/train.tsv")
    assert config.data.mixture == want
    # The 0.75 mix: the same two sources, VADER at three quarters of each batch.
    mixed = parse(*runs["affect_supcon0.3_mix0.75"].flags("/data")).data.mixture
    assert [entry for entry, _ in mixed] == [entry for entry, _ in want]
    assert [share for _, share in mixed] == [0.75, 0.25]
    plans = {name: config_check.validate(parse(*run.flags("/data"))) for name, run in runs.items()}
    assert dict(plans["affect_supcon_head"].heads)["emotion"] == "projection"
    assert "emotion" not in dict(plans["affect_supcon_pooled"].heads)
    lcl = preset("lcl").objective
    for name in ("affect_lcl_head", "affect_lcl_pooled"):
        assert set(plans[name].terms) >= {"lcl", "ce", "weighting_ce"}
        assert "supcon" not in plans[name].terms
        o = parse(*runs[name].flags("/data")).objective
        assert [o[t].weight for t in ("ce", "weighting_ce", "lcl")] == [
            lcl[t].weight for t in ("ce", "weighting_ce", "lcl")]
        assert o.lcl.temperature == lcl.lcl.temperature
    assert dict(plans["affect_lcl_head"].heads)["emotion"] == "projection"
    assert "emotion" not in dict(plans["affect_lcl_pooled"].heads)


def runs_preset_mixture(goemotions: str) -> tuple:
    import runpy

    return runpy.run_path(os.path.join(tu.ROOT, "configs", "softmcl_affect.py"))["mixture"](
        goemotions)


def test_lcl_on_a_head_plans_it_and_empty_keeps_todays_plan():
    today = config_check.validate(preset("lcl"))
    assert preset("lcl").objective.lcl.head == ""
    assert dict(today.heads) == {"classifier": "classifier", "weighting": "weighting"}
    headed = config_check.validate(preset("lcl", **{"objective.lcl.head": "emotion"}))
    assert dict(headed.heads) == {**dict(today.heads), "emotion": "projection"}
    with pytest.raises(ValueError, match=r"config.objective.lcl.head='weighting' is the "
                                         r"weighting head"):
        config_check.validate(preset("lcl", **{"objective.lcl.head": "weighting"}))


# --------------------------------------------------------------------- a mixed batch trains


@pytest.mark.parametrize("variant", ["supcon_head", "lcl_head"])
def test_a_mixed_batch_trains_each_term_on_its_own_rows(variant, tmp_path, tiny_model):
    """One step of the affect objective on a batch drawn from both sources: the loss is finite,
    the class terms read exactly the GoEmotions rows and soft_sentence exactly the rated VADER
    rows (counted from the mixture's own draw), the unsupervised terms every row."""
    import jax
    import numpy as np

    from softmcl_jax import sharding, train

    fields = {"batch_size": 8, "head.dim": 16, "data.prefetch": 0,
              "objective.soft_sentence.queue_size": 16, "objective.soft_word.queue_size": 64}
    if variant == "lcl_head":
        fields.update({"objective.supcon.weight": 0.0, "objective.ce.weight": 0.5,
                       "objective.weighting_ce.weight": 0.5, "objective.lcl.weight": 0.5,
                       "objective.lcl.head": "emotion"})
    config = affect(tmp_path, tiny_model, **fields)
    the_plan = config_check.validate(config)
    _, tokenizer, model = loop.setup_model(config, the_plan)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    pipeline = loop.build_pipeline(config, tokenizer, mesh, the_plan)
    setup = train.setup_step(model, config, mesh, the_plan)
    batch = {k: v for k, v in pipeline.batch(0).items() if k in the_plan.batch_keys}
    _, metrics = setup.step_fn(setup.init(), batch)
    metrics = {k: np.asarray(jax.device_get(v)) for k, v in metrics.items()}

    source, _ = pipeline.mixture.global_indices(0)
    rated, labelled = int((source == 0).sum()), int((source == 1).sum())
    assert (rated, labelled) == (4, 4)  # 0.5 / 0.5 of 8
    assert bool(metrics["finite"]) and np.isfinite(metrics["loss"])
    labelled_terms = ("supcon",) if variant == "supcon_head" else ("lcl", "ce", "weighting_ce")
    for term in labelled_terms:
        assert int(metrics[f"rows/{term}"]) == labelled, term
        assert np.isfinite(metrics[f"loss/{term}"]), term
    assert int(metrics["rows/soft_sentence"]) == rated
    for term in ("infonce", "vsp", "mlm"):
        assert int(metrics[f"rows/{term}"]) == 8, term
