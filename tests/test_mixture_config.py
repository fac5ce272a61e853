"""data.mixture and data.source="prepared" in the config: the command-line form, the entries'
checks, and each term's data checked against the folders' manifests before anything is read
(hand-written manifest.json files: validate reads nothing else)."""

from __future__ import annotations

import json
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from softmcl_jax import config_check, objective
from softmcl_jax.data import prepared
from tests import train_utils as tu

preset = tu.load_config

RATED = {"sentence_valence": [[0.25, 3], [0.75, 2]]}
VAD = {f"sentence_{d}": [[0.5, 4], [0.7, 1]] for d in ("valence", "arousal", "dominance")}


def manifest_dir(path, rows: int, *, rated: int = 0, words: int = 0, labels: int = 0,
                 values: dict | None = None) -> str:
    """A folder holding only a manifest.json with these counts (no shards)."""
    os.makedirs(path, exist_ok=True)
    keys = [f"{level}_{d}" for level in ("sentence", "token")
            for d in ("valence", "arousal", "dominance")]
    manifest = {"format": prepared.FORMAT_VERSION, "rows": rows,
                "flags": {"rated": rated, "words": words, "class": labels},
                "values": {k: (values or {}).get(k, []) for k in keys}, "spreads": {}}
    with open(os.path.join(path, prepared.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return str(path)


def parse(*overrides: str):
    """The config main.py gets for ``--config=configs/simcse.py`` and ``overrides`` (its flag
    definition: config_flags.DEFINE_config_file, lock_config=True)."""
    argv = ["main.py", f"--config={os.path.join(tu.ROOT, 'configs', 'simcse.py')}", *overrides]
    values = flags.FlagValues()
    # main.py's flag reads sys.argv for the overrides it accepts; here that argv is passed.
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


# ------------------------------------------------------------------- the command line


def test_the_mixture_parses_from_the_command_line(tmp_path):
    a = manifest_dir(tmp_path / "a", 100)
    b = manifest_dir(tmp_path / "b", 50)
    config = parse(f"--config.data.mixture=(({a!r}, 0.5), ({b!r}, 0.5))")
    assert config.data.mixture == ((a, 0.5), (b, 0.5))
    assert isinstance(config.data.mixture, tuple)
    assert all(isinstance(e, tuple) and isinstance(e[0], str) and isinstance(e[1], float)
               for e in config.data.mixture)
    assert config_check.validate(config).terms == ("infonce",)
    # One folder: the trailing comma makes the pair an entry ...
    assert parse(f"--config.data.mixture=(({a!r}, 1.0),)").data.mixture == ((a, 1.0),)
    assert parse("--config.data.mixture=()").data.mixture == ()
    # ... without it the pair itself is the mixture, which validate refuses, naming the entry.
    config = parse(f"--config.data.mixture=(({a!r}, 1.0))")
    assert config.data.mixture == (a, 1.0)
    with pytest.raises(ValueError, match=re.escape(f"config.data.mixture[0]={a!r} is not a "
                                                   "('DIR', weight) pair")
                       + r".*with the trailing comma"):
        config_check.validate(config)


def test_the_new_data_fields_are_declared_with_their_defaults():
    d = parse().data
    assert (d.mixture, d.cache_dir, d.workers) == ((), "", 0)
    assert parse("--config.data.source=prepared", "--config.data.path=/x").data.source == \
        "prepared"


# --------------------------------------------------------------------- the entries


@pytest.mark.parametrize("mixture,message", [
    ((("a", 0.5), "b"), r"config.data.mixture\[1\]='b' is not a \('DIR', weight\) pair"),
    ((("a",),), r"config.data.mixture\[0\]=\('a',\) is not a \('DIR', weight\) pair"),
    ((("a", "0.5"),), r"config.data.mixture\[0\]=\('a', '0.5'\) is not a"),
    ((("", 1.0),), r"config.data.mixture\[0\]=\('', 1.0\) is not a"),
    (((1, 1.0),), r"config.data.mixture\[0\]=\(1, 1.0\) is not a"),
    ((("a", True),), r"config.data.mixture\[0\]=\('a', True\) is not a"),
    ((("a", 1.0), ("b", 0.0)),
     r"config.data.mixture\[1\]=\('b', 0.0\): the weight 0.0 must be finite and > 0"),
    ((("a", -1),), r"config.data.mixture\[0\]=\('a', -1\): the weight -1 must be finite"),
    ((("a", float("nan")),), r"config.data.mixture\[0\]=\('a', nan\): the weight nan must be"),
    ((("a", float("inf")),), r"config.data.mixture\[0\]=\('a', inf\): the weight inf must be"),
])
def test_a_malformed_entry_is_refused_naming_it(mixture, message):
    with pytest.raises(ValueError, match=message):
        config_check.validate(preset("simcse", **{"data.mixture": mixture}))


def test_weights_are_any_positive_numbers(tmp_path):
    a, b = manifest_dir(tmp_path / "a", 10), manifest_dir(tmp_path / "b", 10)
    config_check.validate(preset("simcse", **{"data.mixture": ((a, 1), (b, 2.5))}))


def test_a_folder_without_a_manifest_is_refused_naming_the_entry(tmp_path):
    a = manifest_dir(tmp_path / "a", 10)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for folder, what in ((str(unfinished), "no manifest.json"),
                         (str(tmp_path / "missing"), "no such folder")):
        config = preset("simcse", **{"data.mixture": ((a, 0.5), (folder, 0.5))})
        with pytest.raises(ValueError, match=re.escape(f"config.data.mixture[1]: {folder}: "
                                                       f"{what}")) as e:
            config_check.validate(config)
        assert isinstance(e.value.__cause__, prepared.PreparedError)
    config = preset("simcse", **{"data.source": "prepared", "data.path": str(unfinished)})
    with pytest.raises(ValueError, match=re.escape(f"config.data.path: {unfinished}: no "
                                                   "manifest.json")):
        config_check.validate(config)


def test_prepared_source_needs_a_path_and_is_an_alternative_to_a_mixture(tmp_path):
    with pytest.raises(ValueError, match=r"config.data.path='' is empty: "
                                         r"config.data.source='prepared' reads"):
        config_check.validate(preset("simcse", **{"data.source": "prepared"}))
    a = manifest_dir(tmp_path / "a", 10)
    both = preset("simcse", **{"data.source": "prepared", "data.path": a,
                               "data.mixture": ((a, 1.0),)})
    with pytest.raises(ValueError, match=re.escape(f"config.data.mixture=(({a!r}, 1.0),) and "
                                                   "config.data.source='prepared' with "
                                                   f"config.data.path={a!r} are alternatives")):
        config_check.validate(both)
    # source="prepared" with the folders in the mixture, or one folder at data.path: both fine.
    config_check.validate(preset("simcse", **{"data.source": "prepared",
                                              "data.mixture": ((a, 1.0),)}))
    config_check.validate(preset("simcse", **{"data.source": "prepared", "data.path": a}))
    with pytest.raises(ValueError, match=r"config.data.source='prepard' is not one of .*"
                                         r"'prepared'\)"):
        config_check.validate(preset("simcse", **{"data.source": "prepard"}))


# ------------------------------------------------------- each term's data, from manifests


def test_a_term_no_source_has_data_for_is_refused_naming_every_source(tmp_path):
    a = manifest_dir(tmp_path / "DIR_A", 1200, rated=1200, words=800,
                     values=dict(RATED, token_valence=[[0.1, 900]]))
    b = manifest_dir(tmp_path / "DIR_B", 500, words=100, values={"token_valence": [[0.9, 100]]})
    config = preset("simcse", **{"objective.supcon.weight": 1.0, "data.mixture": ((a, 0.5),
                                                                                 (b, 0.5))})
    with pytest.raises(ValueError, match=re.escape(
            "config.objective.supcon needs class labels (batch array 'labels'), but none of the "
            f"mixture's sources has any: {a} (0 of 1200 rows), {b} (0 of 500 rows). Add to "
            "config.data.mixture a folder prepared from data that have them")
            + r".*set config.data.source to a labelled source"):
        config_check.validate(config)
    # One labelled folder among them is enough: SupCon reads the rows that have a class.
    c = manifest_dir(tmp_path / "DIR_C", 300, labels=120)
    config.data.mixture = ((a, 0.4), (b, 0.4), (c, 0.2))
    assert "supcon" in config_check.validate(config).terms


@pytest.mark.parametrize("name,fields,has,lacks,message", [
    # soft_sentence: a present sentence valence somewhere.
    ("simcse", {"objective.soft_sentence.weight": 1.0}, dict(rated=5, values=RATED), {},
     r"config.objective.soft_sentence needs sentence-level valence ratings"),
    # soft_word and vsp_word: lexicon words (flags.words); soft_sentence is satisfied.
    ("softmcl", {}, dict(rated=5, words=3, values=RATED), dict(rated=5, values=RATED),
     r"config.objective.soft_word needs lexicon words with a valence rating"),
    ("simcse", {"objective.vsp_word.weight": 1.0}, dict(words=3), {},
     r"config.objective.vsp_word needs lexicon words with a valence rating"),
    # V/A/D: a folder with valences only lacks the sentences' arousal ...
    ("softmcl_vad", {"objective.soft_word.weight": 0.0, "data.mlm_rate": 0.15},
     dict(rated=5, values=VAD), dict(rated=5, values=RATED),
     r"config.objective.soft_sentence needs sentence-level arousal ratings"),
    # ... and words without an arousal are no arousal ratings of words.
    ("softmcl_vad", {"objective.soft_sentence.weight": 0.0, "data.mlm_rate": 0.15},
     dict(words=3, values={"token_valence": [[0.5, 4]], "token_arousal": [[0.2, 1]],
                           "token_dominance": [[0.3, 2]]}),
     dict(words=3, values={"token_valence": [[0.5, 4]], "token_dominance": [[0.3, 2]]}),
     r"config.objective.soft_word needs lexicon words with a arousal rating"),
    ("lcl", {"data.num_labels": 3}, dict(labels=4), {},
     r"config.objective.lcl needs class labels"),
])
def test_each_need_is_read_from_the_manifest(tmp_path, name, fields, has, lacks, message):
    """The folder with the data passes, alone or mixed with one without; the one without is
    refused alone (as a mixture and as data.source="prepared")."""
    good = manifest_dir(tmp_path / "good", 10, **has)
    bad = manifest_dir(tmp_path / "bad", 10, **lacks)
    for mixture in (((good, 1.0),), ((good, 0.5), (bad, 0.5))):
        config_check.validate(preset(name, **dict(fields, **{"data.mixture": mixture})))
    with pytest.raises(ValueError, match=message + r".*none of the mixture's sources has any: "
                                         + re.escape(f"{bad} (0 of 10 rows)")):
        config_check.validate(preset(name, **dict(fields, **{"data.mixture": ((bad, 1.0),)})))
    with pytest.raises(ValueError, match=message + r".*" + re.escape(
            f", but the training data (config.data.source='prepared', config.data.path={bad!r})"
            " have none (0 of 10 rows): ")):
        config_check.validate(preset(name, **dict(fields, **{"data.source": "prepared",
                                                             "data.path": bad})))


def test_mlm_is_a_config_matter_not_a_manifest_one(tmp_path):
    """SoftMCL's MLM needs no supervision in the data: a folder of rated sentences with words
    and no class serves all three of its terms."""
    folder = manifest_dir(tmp_path / "f", 10, rated=5, words=3, values=RATED)
    the_plan = config_check.validate(preset("softmcl", **{"data.mixture": ((folder, 1.0),)}))
    assert ("mlm", "mlm") in the_plan.data


def test_a_source_prepared_on_first_use_keeps_check_datas_message():
    """loop checks a source prepared into the cache by the folder's manifest, named by the
    folder: the message says the config's source as check_data's did, and where it was
    prepared."""
    config = preset("simcse", **{"objective.supcon.weight": 1.0})
    manifest = {"rows": 64, "flags": {"rated": 64, "words": 40, "class": 0},
                "values": {"sentence_valence": [[0.5, 64]]}}
    with pytest.raises(ValueError, match=r"config.objective.supcon needs class labels .* \("
                                         r"config.data.source='vader'\) have none \(0 of 64 "
                                         r"rows in /cache/vader-1234\): set config.data.source"):
        objective.check_sources(objective.plan(config), [("/cache/vader-1234", manifest)],
                                config)


def test_with_a_source_entry_the_folders_are_checked_now_the_terms_data_once_prepared(tmp_path):
    """A mixture of a folder and a source (prepared on first use): the folder must be prepared
    already (refused now, naming its entry), but a term whose data the folder lacks is not
    refused here: the source may have them (loop.build_pipeline checks every manifest once the
    source is prepared)."""
    unlabelled = manifest_dir(tmp_path / "unlabelled", 10, rated=5, values=RATED)
    source = (("source", "goemotions"), ("path", "/x/train.tsv"), ("single_label_only", True))
    fields = {"objective.supcon.weight": 1.0}
    plan = config_check.validate(preset("simcse", **dict(fields, **{
        "data.mixture": ((unlabelled, 0.5), (source, 0.5))})))
    assert "supcon" in plan.terms
    with pytest.raises(ValueError, match=r"config.objective.supcon needs class labels"):
        config_check.validate(preset("simcse", **dict(fields, **{
            "data.mixture": ((unlabelled, 1.0),)})))
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=re.escape(f"config.data.mixture[0]: {missing}: no such "
                                                   "folder")):
        config_check.validate(preset("simcse", **dict(fields, **{
            "data.mixture": ((missing, 0.5), (source, 0.5))})))
