"""Readers, bad-row handling, the shipped VADER data and the check tool.

Fixtures (tests/fixtures/data) are made up in each real format. One extra test reads the real files
in ../shared/data (or $SOFTMCL_DATA_DIR) when they are there and checks the documented row counts.
"""

from __future__ import annotations

import fnmatch
import gzip
import importlib.resources
import os
import sys
from pathlib import Path

import pytest

from softmcl_jax.data import (
    AspectExample,
    BadRows,
    DataError,
    Sentence,
    SentencePair,
    load_vader_lexicon,
    load_vader_sentences,
    read_csv,
    read_emobank,
    read_glue_sst2,
    read_goemotions,
    read_hf,
    read_jsonl,
    read_label_names,
    read_semeval14,
    read_sst,
    read_stsb,
    read_tfds,
    read_vader_lexicon,
    read_vader_sentences,
    read_warriner,
)
from softmcl_jax.data import check as check_tool

FIX = Path(__file__).parent / "fixtures" / "data"
REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("SOFTMCL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared"
            / "data")
approx = pytest.approx


def at(name: str | Path, line: int) -> str:
    path = name if isinstance(name, Path) else FIX / name
    return f"{path}:{line}"


# ---------------------------------------------------------------------------------------------
# Each reader on its fixture: exact records


def test_warriner():
    got = read_warriner(FIX / "warriner.csv")
    # (v - 1) / 8; sunbeam's second row has the same value ("7.4" == "7.40") and is no error
    assert got == {
        "aardwolf": 0.5,
        "sunbeam": approx(0.8),
        "drizzle": approx(0.35),
        "zenith": 1.0,
        "gloom": 0.0,
    }
    assert list(got) == ["aardwolf", "sunbeam", "drizzle", "zenith", "gloom"]


def test_emobank():
    got = read_emobank(FIX / "emobank.csv")
    # (x - 1) / 4 for each of V, A, D
    assert got == [
        Sentence('She said: "see you soon."', valence=approx(0.5), arousal=approx(0.5),
                 dominance=approx(0.55), split="train", where=at("emobank.csv", 2)),
        Sentence("What a wonderful day", valence=approx(0.9), arousal=approx(0.725),
                 dominance=approx(0.525), split="dev", where=at("emobank.csv", 3)),
        Sentence("Two lines,\nwith a comma.", valence=approx(0.05), arousal=approx(0.775),
                 dominance=approx(0.25), split="train", where=at("emobank.csv", 4)),
        Sentence("Plain text.", valence=approx(0.375), arousal=approx(0.375),
                 dominance=approx(0.375), split="test", where=at("emobank.csv", 6)),
    ]
    assert [s.split for s in read_emobank(FIX / "emobank.csv", splits=["train"])] == ["train"] * 2
    arousal = read_emobank(FIX / "emobank.csv", column="A")
    assert [s.valence for s in arousal] == approx([0.5, 0.725, 0.775, 0.375])


def test_emobank_arousal_and_dominance(tmp_path):
    path = tmp_path / "emobank.csv"
    path.write_text('id,split,V,A,D,text\n'
                    'e1,train,1.0,5.0,3.0,"calm, low"\n'
                    'e2,dev,4.0,2.0,1.0,second\n')
    got = read_emobank(path)
    assert [(s.valence, s.arousal, s.dominance) for s in got] == [
        (0.0, 1.0, 0.5), (0.75, 0.25, 0.0)]
    # column= only changes what is called valence; arousal and dominance stay A and D.
    by_d = read_emobank(path, column="D")
    assert [(s.valence, s.arousal, s.dominance) for s in by_d] == [(0.5, 1.0, 0.5),
                                                                   (0.0, 0.25, 0.0)]
    # Same scale argument for all three: on (0, 10) a 5.0 is 0.5.
    assert read_emobank(path, scale=(0, 10))[0].arousal == 0.5
    path.write_text("id,split,V,A,text\ne1,train,3,3,t\n")
    with pytest.raises(DataError, match=r":1: no column 'D' in the header"):
        read_emobank(path, on_bad_row="skip")


def test_warriner_arousal_and_dominance_columns(tmp_path):
    path = tmp_path / "norms.csv"
    path.write_text(",Word,V.Mean.Sum,V.SD.Sum,A.Mean.Sum,A.SD.Sum,D.Mean.Sum,D.SD.Sum\n"
                    "1,calm,7.0,1.0,1.0,1.0,5.0,1.0\n"
                    "2,panic,1.0,1.0,9.0,1.0,3.0,1.0\n")
    # (x - 1) / 8
    assert read_warriner(path) == {"calm": 0.75, "panic": 0.0}
    assert read_warriner(path, valence_column="A.Mean.Sum") == {"calm": 0.0, "panic": 1.0}
    assert read_warriner(path, valence_column="D.Mean.Sum") == {"calm": 0.5, "panic": 0.25}


def test_load_affect_lexicons(tmp_path):
    from softmcl_jax.data.sources import AFFECT_DIMS, load_affect_lexicons

    assert AFFECT_DIMS == ("valence", "arousal", "dominance")
    path = tmp_path / "norms.csv"
    path.write_text(",Word,V.Mean.Sum,A.Mean.Sum,D.Mean.Sum\n"
                    "1,calm,7.0,1.0,5.0\n"
                    "2,panic,1.0,9.0,3.0\n")
    assert load_affect_lexicons(str(path), ("valence", "arousal", "dominance")) == {
        "arousal": {"calm": 0.0, "panic": 1.0}, "dominance": {"calm": 0.5, "panic": 0.25}}
    assert load_affect_lexicons(str(path), ("arousal",)) == {"arousal": {"calm": 0.0,
                                                                        "panic": 1.0}}
    # Valence is load_lexicon's: nothing more to load, whatever the lexicon.
    for name in (str(path), "vader", "none", ""):
        assert load_affect_lexicons(name, ("valence",)) == {}
        assert load_affect_lexicons(name, ()) == {}
    for name in ("vader", "none", ""):
        with pytest.raises(ValueError, match=r"config\.data\.lexicon=.* has valence only"):
            load_affect_lexicons(name, ("valence", "dominance"))
    with pytest.raises(ValueError, match="unknown affect dimension"):
        load_affect_lexicons(str(path), ("valence", "joy"))


def test_goemotions():
    got = read_goemotions(FIX / "goemotions.tsv", split="train")
    f = "goemotions.tsv"
    assert got == [
        Sentence("I love this so much!", labels=(0, 18), split="train", where=at(f, 1)),
        Sentence("Well that was unexpected", label=26, labels=(26,), split="train",
                 where=at(f, 2)),
        Sentence("ok", label=27, labels=(27,), split="train", where=at(f, 3)),
        Sentence('[NAME] is "great", apparently', labels=(3, 10, 27), split="train",
                 where=at(f, 4)),
    ]
    assert read_label_names(FIX / "emotions.txt") == ["joy", "anger", "surprise", "neutral"]
    with pytest.raises(DataError, match=r"goemotions.tsv:1: unknown label id 18 \(ids are 0..3\)"):
        read_goemotions(FIX / "goemotions.tsv", num_labels=4)


def test_sst_and_glue():
    assert read_sst(FIX / "sst2.txt", num_labels=2, split="dev") == [
        Sentence("a warm , funny film .", label=1, split="dev", where=at("sst2.txt", 1)),
        Sentence("dull and overlong .", label=0, split="dev", where=at("sst2.txt", 2)),
    ]
    assert read_sst(FIX / "sst5.txt", num_labels=5) == [
        Sentence("a triumph .", label=4, where=at("sst5.txt", 1)),
        Sentence("it 's a movie .", label=2, where=at("sst5.txt", 2)),
        Sentence("unwatchable .", label=0, where=at("sst5.txt", 3)),
    ]
    assert read_glue_sst2(FIX / "glue_sst2.tsv") == [
        Sentence("a warm , funny film", label=1, where=at("glue_sst2.tsv", 2)),
        Sentence('dull "and overlong', label=0, where=at("glue_sst2.tsv", 3)),
    ]


def test_semeval14():
    assert read_semeval14(FIX / "semeval14.seg") == [
        AspectExample("the battery life is great but the screen is dim .", "battery life", 2,
                      where=at("semeval14.seg", 1)),
        AspectExample("the screen is dim .", "screen", 0, where=at("semeval14.seg", 4)),
        AspectExample("i use it for work .", "work", 1, where=at("semeval14.seg", 7)),
    ]


def test_stsb():
    assert read_stsb(FIX / "stsb.csv") == [
        SentencePair("A cat sits.", "A cat is sitting.", 5.0, where=at("stsb.csv", 1)),
        SentencePair('A "quoted word here.', "Another sentence.", 2.4, where=at("stsb.csv", 2)),
        SentencePair("Yes.", "No.", 0.0, where=at("stsb.csv", 3)),
    ]


def test_vader_formats_crlf_and_bom():
    # both fixtures have CRLF and no final line end; the sentences also start with a BOM
    assert read_vader_lexicon(FIX / "vader_lexicon.txt") == {
        ":-)": approx(5.3 / 8),
        "can't stand": approx(0.25),
        ":\u00de": approx(5.1 / 8),
        "glad": 0.75,
        "dreadful": 0.0,
    }
    f = "vader_sentences.txt"
    assert read_vader_sentences(FIX / f) == [
        Sentence("What a lovely day!", valence=approx(0.8125), where=at(f, 1)),
        Sentence("meh, it rained.", valence=approx(0.40625), where=at(f, 2)),
        Sentence("  spaced text ", valence=0.5, where=at(f, 3)),
    ]


def test_generic_csv_and_jsonl():
    f = "generic.csv"
    got = read_csv(FIX / f, text_column="text", label_column="label", valence_column="score",
                   scale=(-1, 1), split_column="split", num_labels=2)
    assert got == [
        Sentence("Hello, world", valence=0.75, label=1, split="train", where=at(f, 2)),
        Sentence("plain", valence=0.0, label=0, split="dev", where=at(f, 3)),
    ]
    assert read_csv(FIX / f, text_column="text", split="x") == [
        Sentence("Hello, world", split="x", where=at(f, 2)),
        Sentence("plain", split="x", where=at(f, 3)),
    ]
    f = "generic.jsonl"
    got = read_jsonl(FIX / f, text_key="text", label_key="label", valence_key="v", scale=(1, 7),
                     split="train")
    assert got == [
        Sentence("first", valence=1.0, label=2, split="train", where=at(f, 1)),
        Sentence("multi", valence=0.0, labels=(0, 3), split="train", where=at(f, 2)),
        Sentence("single list", valence=0.5, label=1, labels=(1,), split="train",
                 where=at(f, 3)),
    ]
    with pytest.raises(ValueError, match="scale"):
        read_jsonl(FIX / f, text_key="text", valence_key="v")  # a valence needs its scale


def test_hf_in_memory_and_local_file(tmp_path):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["neg", "pos"]),
         "v": datasets.Value("float32")}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": ["good", "bad"], "y": [1, 0], "v": [4.0, 2.0]}, features=features
    )
    got = read_hf(ds, text_column="sentence", label_column="y", valence_column="v",
                  scale=(1, 5), split="train")
    assert got == [
        Sentence("good", valence=0.75, label=1, split="train", where="hf:Dataset[train]:0"),
        Sentence("bad", valence=0.25, label=0, split="train", where="hf:Dataset[train]:1"),
    ]
    # ids are checked against num_labels ...
    bad_ds = datasets.Dataset.from_dict({"sentence": ["a", "b", " "], "y": [0, 2, 1]})
    with pytest.raises(DataError, match=r"^hf:Dataset:1: unknown label id 2 \(ids are 0..1\)"):
        read_hf(bad_ds, text_column="sentence", label_column="y", num_labels=2)
    bad = BadRows("skip")
    assert len(read_hf(bad_ds, text_column="sentence", label_column="y", num_labels=2,
                       on_bad_row=bad)) == 1
    assert [str(e) for e in bad.skipped] == [
        "hf:Dataset:1: unknown label id 2 (ids are 0..1)", "hf:Dataset:2: empty text"]
    # ... which a ClassLabel column supplies; its "no label" id -1 is a bad row too
    unlabelled = datasets.Dataset.from_dict({"sentence": ["a"], "y": [-1], "v": [1.0]},
                                            features=features)
    with pytest.raises(DataError, match=r"^hf:Dataset:0: unknown label id -1 \(ids are 0..1\)"):
        read_hf(unlabelled, text_column="sentence", label_column="y")
    with pytest.raises(DataError, match="no column 'text'"):
        read_hf(ds, text_column="text")
    # a name/path for datasets.load_dataset, here the local JSON builder on our fixture
    got = read_hf("json", data_files=str(FIX / "generic.jsonl"), split="train",
                  cache_dir=str(tmp_path), text_column="text", label_column="label")
    assert [(s.text, s.label, s.labels, s.split) for s in got] == [
        ("first", 2, (), "train"), ("multi", None, (0, 3), "train"),
        ("single list", 1, (1,), "train")]
    assert got[0].where == "hf:json[train]:0"
    with pytest.raises(ValueError, match="split"):
        read_hf(datasets.DatasetDict({"train": ds}), text_column="sentence")


def test_tfds_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"needs tensorflow-datasets.*softmcl_jax\[tfds\]"):
        read_tfds("imdb_reviews", split="train", text_key="text", label_key="label")


# ---------------------------------------------------------------------------------------------
# Bad rows: raise names PATH:LINE and the problem; skip counts and reports

WARRINER_HEADER = (FIX / "warriner.csv").read_text().splitlines(keepends=True)[0]
W_ROW = "2,sunbeam,7.40,1.20,19,4.10,2.30,20,6.00,1.90,21\n"
E_HEAD = "id,split,V,A,D,text\n"
E_ROW = "fx_9,dev,3.0,3.0,3.0,fine\n"
GO_ROW = "fine\t1\tfx9\n"
SEG = "a $T$ .\nthing\n1\n"
STS_ROW = "g\tf\t2012\t0001\t1.0\tA.\tB.\n"
LEX_ROW = "ok\t1.0\t0.5\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
JS_ROW = '{"text": "t", "label": 1, "v": 2}\n'


def _case(reader, content, line, what, n_good, **kw):
    return (reader, kw, content if isinstance(content, bytes) else content.encode(), line, what,
            n_good)


BAD_CASES = {
    # Warriner word norms
    "warriner-columns": _case(read_warriner, WARRINER_HEADER + "1,aardwolf,5.00\n" + W_ROW, 2,
                              "expected 11 columns, got 3", 1),
    "warriner-not-a-number": _case(
        read_warriner, WARRINER_HEADER + "1,aardwolf,abc,1,1,1,1,1,1,1,1\n" + W_ROW, 2,
        "valence 'abc' is not a number", 1),
    "warriner-nan": _case(read_warriner, WARRINER_HEADER + W_ROW + "3,void,nan,1,1,1,1,1,1,1,1\n",
                          3, "valence 'nan' is not a finite number", 1),
    "warriner-out-of-scale": _case(
        read_warriner, WARRINER_HEADER + W_ROW + "3,bliss,9.5,1,1,1,1,1,1,1,1\n", 3,
        "valence 9.5 is outside the stated scale [1.0, 9.0]", 1),
    "warriner-arousal-out-of-scale": _case(
        read_warriner, WARRINER_HEADER + W_ROW + "3,bliss,5,1,1,9.5,1,1,1,1,1\n", 3,
        "arousal 9.5 is outside the stated scale [1.0, 9.0]", 1, valence_column="A.Mean.Sum"),
    "warriner-empty-word": _case(read_warriner, WARRINER_HEADER + "1,,5,1,1,1,1,1,1,1,1\n" + W_ROW,
                                 2, "empty word", 1),
    "warriner-duplicate": _case(
        read_warriner, WARRINER_HEADER + W_ROW + W_ROW.replace("7.40", "6.00"), 3,
        "word 'sunbeam' listed twice with different values: 7.40 on line 2, 6.00 here", 1),
    "warriner-utf8": _case(
        read_warriner, WARRINER_HEADER.encode() + b"1,caf\xe9,5,1,1,1,1,1,1,1,1\n" + W_ROW.encode(),
        2, "invalid UTF-8 at byte 5", 1),
    # EmoBank
    "emobank-split": _case(read_emobank, E_HEAD + "fx_1,valid,3,3,3,text\n" + E_ROW, 2,
                           "unknown split 'valid'", 1),
    "emobank-out-of-scale": _case(read_emobank, E_HEAD + E_ROW + "fx_1,dev,5.5,3,3,text\n", 3,
                                  "valence 5.5 is outside the stated scale [1.0, 5.0]", 1),
    "emobank-arousal-out-of-scale": _case(
        read_emobank, E_HEAD + E_ROW + "fx_1,dev,3,0.5,3,text\n", 3,
        "arousal 0.5 is outside the stated scale [1.0, 5.0]", 1),
    "emobank-dominance-missing": _case(read_emobank, E_HEAD + "fx_1,dev,3,3,,text\n" + E_ROW, 2,
                                       "missing dominance", 1),
    "emobank-empty-text": _case(read_emobank, E_HEAD + E_ROW + 'fx_1,dev,3,3,3," "\n', 3,
                                "empty text", 1),
    "emobank-columns": _case(read_emobank, E_HEAD + "fx_1,dev,3,3,3\n" + E_ROW, 2,
                             "expected 6 columns, got 5", 1),
    "emobank-stray-quote": _case(read_emobank, E_HEAD + 'fx_1,dev,3,3,3,"a"b\n' + E_ROW, 2,
                                 "malformed CSV record", 1),
    "emobank-utf8-inside-a-record": _case(
        read_emobank,
        (E_HEAD + E_ROW + 'fx_1,dev,3,3,3,"line one\n').encode() + b'line \xff two"\n'
        + E_ROW.encode(),
        4, "invalid UTF-8 at byte 5", 2),
    # GoEmotions
    "goemotions-unknown-id": _case(read_goemotions, GO_ROW + "text\t3,28\tfx1\n", 2,
                                   "unknown label id 28 (ids are 0..27)", 1),
    "goemotions-not-an-id": _case(read_goemotions, "text\tjoy\tfx1\n" + GO_ROW, 1,
                                  "label 'joy' is not an integer id", 1),
    "goemotions-repeated-id": _case(read_goemotions, "text\t3,3\tfx1\n" + GO_ROW, 1,
                                    "label id(s) [3] listed twice", 1),
    "goemotions-columns": _case(read_goemotions, GO_ROW + "text\t3\n", 2,
                                "expected 3 tab-separated fields, got 2", 1),
    "goemotions-empty-text": _case(read_goemotions, GO_ROW + " \t3\tfx1\n", 2, "empty text", 1),
    "goemotions-empty-line": _case(read_goemotions, GO_ROW + "\n" + GO_ROW, 2, "empty line", 2),
    "goemotions-no-ids": _case(read_goemotions, "text\t\tfx1\n" + GO_ROW, 1, "no label ids", 1),
    # SST and GLUE SST-2
    "sst-unknown-label": _case(read_sst, "1 fine .\n5 too good .\n", 2,
                               "unknown label id 5 (ids are 0..4)", 1, num_labels=5),
    "sst-no-text": _case(read_sst, "1\n1 fine .\n", 1, "empty text", 1, num_labels=2),
    "sst-not-a-label": _case(read_sst, "pos great .\n1 fine .\n", 1,
                             "label 'pos' is not an integer id", 1, num_labels=2),
    "glue-columns": _case(read_glue_sst2, "sentence\tlabel\na \t1\textra\nb \t0\n", 2,
                          "expected 2 tab-separated fields, got 3", 1),
    "glue-label": _case(read_glue_sst2, "sentence\tlabel\na \t2\nb \t0\n", 2,
                        "unknown label id 2 (ids are 0..1)", 1),
    # SemEval-2014
    "semeval-polarity": _case(read_semeval14, "a $T$ .\nthing\n2\n" + SEG, 3,
                              "polarity '2' is not -1, 0 or 1", 1),
    "semeval-no-placeholder": _case(read_semeval14, SEG + "a thing .\nthing\n1\n", 4,
                                    "the sentence has 0 '$T$' placeholders, expected 1", 1),
    "semeval-empty-aspect": _case(read_semeval14, SEG + "a $T$ .\n \n1\n", 5,
                                  "empty aspect term", 1),
    "semeval-incomplete": _case(read_semeval14, SEG + "a $T$ .\nthing\n", 4,
                                "incomplete example: 2 of 3 lines", 1),
    # STS-B
    "stsb-columns": _case(read_stsb, "g\tf\t2012\t0001\t1.0\tA.\n" + STS_ROW, 1,
                          "expected at least 7 tab-separated fields, got 6", 1),
    "stsb-score-range": _case(read_stsb, STS_ROW + STS_ROW.replace("1.0", "5.5"), 2,
                              "score 5.5 is outside 0..5", 1),
    "stsb-score-text": _case(read_stsb, STS_ROW.replace("1.0", "n/a") + STS_ROW, 1,
                             "score 'n/a' is not a number", 1),
    # VADER formats
    "vader-lexicon-columns": _case(read_vader_lexicon, "bad\t1.0\t0.5\n" + LEX_ROW, 1,
                                   "expected 4 tab-separated fields, got 3", 1),
    "vader-lexicon-duplicate": _case(read_vader_lexicon, LEX_ROW + LEX_ROW.replace("1.0", "2"),
                                     2, "word 'ok' listed twice with different values: 1.0 on "
                                     "line 1, 2 here", 1),
    "vader-lexicon-mean": _case(read_vader_lexicon, LEX_ROW + LEX_ROW.replace("1.0", "4.5"), 2,
                                "valence 4.5 is outside the stated scale [-4.0, 4.0]", 1),
    "vader-sentences-columns": _case(read_vader_sentences, "1\t2.0\n2\t1.0\tfine\n", 1,
                                     "expected 3 tab-separated fields, got 2", 1),
    # generic sources
    "csv-label": _case(read_csv, "text,y\na,one\nb,1\n", 2, "label 'one' is not an integer id",
                       1, text_column="text", label_column="y"),
    "csv-missing-valence": _case(read_csv, "text,v\na,\nb,3\n", 2, "missing valence", 1,
                                 text_column="text", valence_column="v", scale=(1, 5)),
    "jsonl-invalid": _case(read_jsonl, '{"text": "a"\n' + JS_ROW, 1, "invalid JSON", 1,
                           text_key="text"),
    "jsonl-not-object": _case(read_jsonl, JS_ROW + "[1, 2]\n", 2,
                              "expected a JSON object, got list", 1, text_key="text"),
    "jsonl-missing-key": _case(read_jsonl, '{"txt": "a"}\n' + JS_ROW, 1, "no key 'text'", 1,
                               text_key="text"),
    "jsonl-unknown-label": _case(read_jsonl, JS_ROW + '{"text": "b", "label": [0, 5]}\n', 2,
                                 "unknown label id 5 (ids are 0..2)", 1, text_key="text",
                                 label_key="label", num_labels=3),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_row_raises_with_path_line_and_problem(case, tmp_path):
    reader, kw, content, line, what, _ = BAD_CASES[case]
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        reader(path, **kw)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert what in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), line)


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_row_skipped_and_counted(case, tmp_path, caplog):
    reader, kw, content, line, what, n_good = BAD_CASES[case]
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    bad = BadRows("skip")
    with caplog.at_level("INFO"):
        got = reader(path, on_bad_row=bad, **kw)
    assert len(got) == n_good
    assert len(bad.skipped) == 1 and bad.skipped[0].line == line and what in str(bad.skipped[0])
    assert bad.report() == f"skipped bad rows: {path}: 1"
    # each skip is logged, and so is the reader's count at the end
    assert any(f"{path}:{line}: " in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith(f"{path}: read {n_good} ") and "skipped 1" in
               r.getMessage() for r in caplog.records)
    # the string form of the policy works too
    assert len(reader(path, on_bad_row="skip", **kw)) == n_good


def test_one_badrows_collects_several_files(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(GO_ROW + "x\t99\tfx\n")
    b.write_text("x\t99\tfx\n" + "y\t99\tfx\n" + GO_ROW)
    bad = BadRows("skip")
    assert len(read_goemotions(a, on_bad_row=bad)) + len(read_goemotions(b, on_bad_row=bad)) == 2
    assert bad.report() == f"skipped bad rows: {a}: 1, {b}: 2"


def test_lexicon_duplicates_with_same_value_are_fine_and_last_can_win(tmp_path):
    path = tmp_path / "lex.txt"
    path.write_text(LEX_ROW + LEX_ROW.replace("0.5", "0.7") + LEX_ROW.replace("1.0", "-2.0"))
    with pytest.raises(DataError, match=":3: word 'ok' listed twice"):
        read_vader_lexicon(path)  # rows 1 and 2 agree on the mean: no error until row 3
    assert read_vader_lexicon(path, duplicates="last") == {"ok": 0.25}
    bad = BadRows("skip")
    assert read_vader_lexicon(path, on_bad_row=bad) == {"ok": 0.625}  # the first kept
    assert len(bad.skipped) == 1


def test_file_level_problems_always_raise(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("id,split,A,D,text\nfx,dev,3,3,t\n")
    with pytest.raises(DataError, match=r":1: no column 'V' in the header"):
        read_emobank(path, on_bad_row="skip")
    for content in (b"", b"\xef\xbb\xbf"):
        path.write_bytes(content)
        with pytest.raises(DataError, match=r"e.csv:1: the file is empty"):
            read_emobank(path, on_bad_row="skip")
        with pytest.raises(DataError, match=r"e.csv:1: the file is empty"):
            read_sst(path, num_labels=2, on_bad_row="skip")
    path.write_text("sentence\tidx\na\t1\n")
    with pytest.raises(DataError, match=r":1: no column 'label'"):
        read_glue_sst2(path, on_bad_row="skip")
    with pytest.raises(ValueError, match="on_bad_row"):
        read_sst(FIX / "sst2.txt", num_labels=2, on_bad_row="ignore")
    with pytest.raises(ValueError, match="scale"):
        read_emobank(FIX / "emobank.csv", scale=(5, 1))


# ---------------------------------------------------------------------------------------------
# BOM, CRLF and gzip give the same records

READERS_ON_FIXTURES = {
    "warriner.csv": lambda p: read_warriner(p),
    "emobank.csv": lambda p: read_emobank(p),
    "goemotions.tsv": lambda p: read_goemotions(p),
    "sst5.txt": lambda p: read_sst(p, num_labels=5),
    "glue_sst2.tsv": lambda p: read_glue_sst2(p),
    "semeval14.seg": lambda p: read_semeval14(p),
    "stsb.csv": lambda p: read_stsb(p),
    "vader_lexicon.txt": lambda p: read_vader_lexicon(p),
    "vader_sentences.txt": lambda p: read_vader_sentences(p),
    "generic.csv": lambda p: read_csv(p, text_column="text", label_column="label"),
    "generic.jsonl": lambda p: read_jsonl(p, text_key="text", label_key="label"),
}


def _without_where(records):
    if isinstance(records, dict):
        return records
    return [(type(r).__name__, *(v for k, v in vars(r).items() if k != "where")) for r in records]


@pytest.mark.parametrize("name", list(READERS_ON_FIXTURES))
def test_bom_crlf_lf_and_gzip_read_the_same(name, tmp_path):
    read = READERS_ON_FIXTURES[name]
    raw = (FIX / name).read_bytes()
    body = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    expected = _without_where(read(FIX / name))
    variants = {
        "lf.txt": body,
        "crlf.txt": body.replace(b"\n", b"\r\n"),
        "bom-crlf.txt": b"\xef\xbb\xbf" + body.replace(b"\n", b"\r\n"),
        "no-final-eol.txt": body.rstrip(b"\n"),
        "packed.txt.gz": gzip.compress(b"\xef\xbb\xbf" + body),
    }
    for file_name, content in variants.items():
        path = tmp_path / file_name
        path.write_bytes(content)
        assert _without_where(read(path)) == expected, file_name
    # line numbers are unchanged by the BOM and by CRLF
    if not isinstance(expected, dict):
        wheres = [r.where.rsplit(":", 1)[1] for r in read(tmp_path / "bom-crlf.txt")]
        assert wheres == [r.where.rsplit(":", 1)[1] for r in read(FIX / name)]


# ---------------------------------------------------------------------------------------------
# The shipped VADER data


def test_vader_lexicon_shipped():
    lexicon = load_vader_lexicon()
    assert len(lexicon) == 7506  # 7,520 rows, 14 tokens listed twice (later row wins, as VADER)
    assert all(0.0 <= v <= 1.0 for v in lexicon.values())
    # means from the raw file (README of hutto_ICWSM_2014: good 1.9, great 3.1, horrible -2.5,
    # okay 0.9, ":(" -1.9 in the 3.3.2 lexicon), normalised by (mean + 4) / 8
    for token, mean in {"good": 1.9, "great": 3.1, "horrible": -2.5, "okay": 0.9, ":(": -1.9,
                        "sux": -1.5, "can't stand": -2.0}.items():
        assert lexicon[token] == approx((mean + 4) / 8), token
    assert lexicon["lol"] == approx((1.8 + 4) / 8)  # line 4406 overrides line 305's 2.9
    assert min(lexicon.values()) == approx((-3.9 + 4) / 8)
    assert max(lexicon.values()) == approx((3.4 + 4) / 8)
    resources = importlib.resources.files("softmcl_jax.data") / "resources"
    text = gzip.decompress((resources / "vader_lexicon.tsv.gz").read_bytes()).decode()
    assert text.count("\n") == 7520 and "\r" not in text
    with pytest.raises(DataError, match=r"vader_lexicon.tsv.gz:124: word ':-p' listed twice"):
        with importlib.resources.as_file(resources / "vader_lexicon.tsv.gz") as path:
            read_vader_lexicon(path)


def test_vader_sentences_shipped():
    counts = {"tweets": 4200, "movie_reviews": 10605, "product_reviews": 3708, "nyt": 5190}
    sentences = load_vader_sentences()
    assert len(sentences) == sum(counts.values()) == 23703
    assert all(0.0 <= s.valence <= 1.0 and s.text.strip() for s in sentences)
    for name, n in counts.items():
        one = load_vader_sentences(name)
        assert len(one) == n
        assert one[0].where.endswith(f"vader_{name}.tsv.gz:1")
    first = sentences[0]
    assert first.text.startswith("Somehow I was blessed with some really amazing friends")
    assert first.valence == approx((2.726315789 + 4) / 8)
    values = [s.valence for s in sentences]
    assert min(values) == approx((-3.875 + 4) / 8)
    assert max(values) == approx((3.94117647059 + 4) / 8)
    with pytest.raises(ValueError, match="unknown VADER sentence sets"):
        load_vader_sentences(["tweets", "imdb"])


def test_vader_resources_licence_and_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    resources = REPO / "softmcl_jax" / "data" / "resources"
    assert "MIT License" in (resources / "LICENSE").read_text()
    assert "Copyright (c) 2016 C.J. Hutto" in (resources / "LICENSE").read_text()
    assert "Hutto" in (resources / "CITATION.md").read_text()
    assert "build.py" in (resources / "README.md").read_text()
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["softmcl_jax.data"]
    for path in resources.iterdir():
        if path.is_file():
            assert any(fnmatch.fnmatch(f"resources/{path.name}", p) for p in patterns), path.name


# ---------------------------------------------------------------------------------------------
# The check tool


def test_check_tool(tmp_path, capsys):
    assert check_tool.main(["--format=emobank", str(FIX / "emobank.csv")]) == 0
    out = capsys.readouterr().out
    assert "records: 4" in out and "splits: dev: 1, test: 1, train: 2" in out
    assert "min 0.05, max 0.9" in out and "1.2..4.6" in out and "skipped bad rows: 0" in out
    assert check_tool.main(["--format=goemotions", str(FIX / "goemotions.tsv")]) == 0
    out = capsys.readouterr().out
    assert "labels: 0: 1, 3: 1, 10: 1, 18: 1, 26: 1, 27: 2" in out
    assert "records with more than one label: 2" in out
    assert check_tool.main(["--format=vader_lexicon", str(FIX / "vader_lexicon.txt")]) == 0
    assert "entries: 5" in capsys.readouterr().out

    path = tmp_path / "bad.tsv"
    path.write_text(GO_ROW + "x\t99\tfx\n" + GO_ROW)
    assert check_tool.main(["--format=goemotions", str(path)]) == 1
    assert f"{path}:2: unknown label id 99" in capsys.readouterr().out
    assert check_tool.main(["--format=goemotions", "--on_bad_row=skip", str(path)]) == 1
    out = capsys.readouterr().out
    assert "records: 2" in out and "skipped bad rows: 1" in out
    assert check_tool.main(["--format=stsb", str(tmp_path / "missing.csv")]) == 1
    assert "cannot read" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        check_tool.main(["--format=nope", str(path)])


# ---------------------------------------------------------------------------------------------
# The real files, when ../shared/data (or $SOFTMCL_DATA_DIR) is there


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no real data at {REAL}")
def test_real_files_have_the_documented_row_counts():
    def count(records, key):
        out: dict = {}
        for r in records:
            out[key(r)] = out.get(key(r), 0) + 1
        return out

    assert len(read_warriner(REAL / "warriner_vad" / "Ratings_Warriner_et_al.csv")) == 13915
    emobank = read_emobank(REAL / "emobank" / "emobank.csv")
    assert count(emobank, lambda s: s.split) == {"train": 8062, "dev": 1000}
    assert len(read_goemotions(REAL / "goemotions" / "train.tsv")) == 43410
    assert len(read_goemotions(REAL / "goemotions" / "dev.tsv")) == 5426
    assert len(read_label_names(REAL / "goemotions" / "emotions.txt")) == 28
    sst2 = REAL / "sst2"
    assert count(read_sst(sst2 / "stsa.binary.train", num_labels=2), lambda s: s.label) == {
        0: 3310, 1: 3610}
    assert count(read_sst(sst2 / "stsa.binary.dev", num_labels=2), lambda s: s.label) == {
        0: 428, 1: 444}
    glue = [*read_glue_sst2(sst2 / "glue_train_part.tsv"),
            *read_glue_sst2(sst2 / "glue_train_rest.tsv")]
    assert count(glue, lambda s: s.label) == {1: 37569, 0: 29780}  # 67,349 GLUE train phrases
    sst5 = REAL / "sst5"
    assert count(read_sst(sst5 / "stsa.fine.train", num_labels=5), lambda s: s.label) == {
        0: 1092, 1: 2218, 2: 1624, 3: 2322, 4: 1288}
    assert len(read_sst(sst5 / "stsa.fine.dev", num_labels=5)) == 1101
    absa = REAL / "semeval14_absa"
    assert count(read_semeval14(absa / "Laptops_Train.xml.seg"), lambda a: a.label) == {
        0: 870, 1: 464, 2: 994}
    assert count(read_semeval14(absa / "Restaurants_Train.xml.seg"), lambda a: a.label) == {
        0: 807, 1: 637, 2: 2164}
    assert len(read_stsb(REAL / "stsb" / "sts-train.csv")) == 5749
    assert len(read_stsb(REAL / "stsb" / "sts-dev.csv")) == 1500
