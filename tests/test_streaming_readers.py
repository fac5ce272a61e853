"""Streaming readers: the ``iter_*`` forms, ``sources.iter_sentences``, the ``text`` source, and
bounded memory on large files.

``read_*`` is ``list(iter_*(...))``, so the exact-record and bad-row tests in test_readers.py (the
old, whole-file behaviour) hold for the streaming forms; here: that the ``iter_*`` forms are lazy
and agree with the lists, and that reading a large file holds one record at a time.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import tracemalloc
import types
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import pytest

from softmcl_jax.data import readers, sources
from softmcl_jax.data.records import BadRows, DataError, Sentence

FIX = Path(__file__).parent / "fixtures" / "data"
BIG_BYTES = 30 * 2**20  # the size of the generated corpora
PEAK_LIMIT = 5 * 2**20  # what reading one may hold at its peak


def data_config(**fields) -> ml_collections.ConfigDict:
    """A ``config.data`` section with base.py's defaults for the fields sources reads."""
    d = dict(source="vader", path="", vader_sets=("tweets",), split="", text_column="text",
             label_column="", valence_column="", scale_low=None, scale_high=None, num_labels=0,
             single_label_only=False, on_bad_row="raise")
    d.update(fields)
    return ml_collections.ConfigDict(d)


# The readers a large corpus comes in, each with its fixture and arguments.
STREAMING = {
    "emobank": (readers.iter_emobank, readers.read_emobank, "emobank.csv", {}),
    "goemotions": (readers.iter_goemotions, readers.read_goemotions, "goemotions.tsv", {}),
    "sst": (readers.iter_sst, readers.read_sst, "sst5.txt", {"num_labels": 5}),
    "glue_sst2": (readers.iter_glue_sst2, readers.read_glue_sst2, "glue_sst2.tsv", {}),
    "vader_sentences": (readers.iter_vader_sentences, readers.read_vader_sentences,
                        "vader_sentences.txt", {}),
    "csv": (readers.iter_csv, readers.read_csv, "generic.csv",
            {"text_column": "text", "label_column": "label", "valence_column": "score",
             "scale": (-1, 1), "split_column": "split"}),
    "jsonl": (readers.iter_jsonl, readers.read_jsonl, "generic.jsonl",
              {"text_key": "text", "label_key": "label", "valence_key": "v", "scale": (1, 7)}),
    "text": (readers.iter_text, readers.read_text, "sst2.txt", {}),
}


@pytest.mark.parametrize("name", list(STREAMING))
def test_iter_forms_are_lazy_and_equal_the_lists(name, tmp_path, caplog):
    iterate, read, fixture, kw = STREAMING[name]
    expected = read(FIX / fixture, **kw)
    assert expected and all(isinstance(s, Sentence) for s in expected)
    # BOM + CRLF, packed as .gz: the same sentences, one at a time
    body = (FIX / fixture).read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    packed = tmp_path / f"{fixture}.gz"
    packed.write_bytes(gzip.compress(b"\xef\xbb\xbf" + body.replace(b"\n", b"\r\n")))
    for path in (FIX / fixture, packed):
        with caplog.at_level(logging.INFO, logger=readers.__name__):
            caplog.clear()
            it = iterate(path, **kw)
            assert isinstance(it, types.GeneratorType)
            first = next(it)
            # the end-of-file count is logged when the file has been read, not before
            assert not any(": read " in r.getMessage() for r in caplog.records)
            rest = list(it)
            assert any(r.getMessage() == f"{path}: read {len(expected)} sentences, no bad rows"
                       for r in caplog.records)
        got = [first, *rest]
        if path == packed:  # the same records, from another file
            assert [s.where.rsplit(":", 1)[1] for s in got] == [
                s.where.rsplit(":", 1)[1] for s in expected]
            got = [dataclasses.replace(s, where=e.where)
                   for s, e in zip(got, expected, strict=True)]
        assert got == expected


def test_iter_forms_check_arguments_at_once_and_read_the_file_when_iterated(tmp_path):
    missing = tmp_path / "missing.csv"
    it = readers.iter_csv(missing, text_column="text")  # nothing is opened yet
    with pytest.raises(FileNotFoundError):
        next(it)
    with pytest.raises(ValueError, match="scale"):
        readers.iter_csv(missing, text_column="t", valence_column="v")
    with pytest.raises(ValueError, match="on_bad_row"):
        readers.iter_text(missing, on_bad_row="ignore")
    with pytest.raises(ValueError, match="splits"):
        readers.iter_emobank(missing, splits=["valid"])
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match=r"empty.txt:1: the file is empty"):
        next(readers.iter_text(empty, on_bad_row="skip"))
    # a bad row raises when iteration reaches it, after the good rows before it
    path = tmp_path / "g.tsv"
    path.write_text("ok\t1\tx\nbad\t99\tx\n")
    it = readers.iter_goemotions(path)
    assert next(it).text == "ok"
    with pytest.raises(DataError, match=r"g.tsv:2: unknown label id 99"):
        next(it)


def test_csv_records_spanning_lines_and_bad_utf8_stream(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'text,label\n"one\nrecord, two lines",1\n"caf\xe9\nbad",0\nlast,0\n')
    bad = BadRows("skip")
    got = list(readers.iter_csv(path, text_column="text", label_column="label", on_bad_row=bad))
    assert [(s.text, s.where) for s in got] == [
        ("one\nrecord, two lines", f"{path}:2"), ("last", f"{path}:6")]
    assert [(e.line, e.what[:21]) for e in bad.skipped] == [(4, "invalid UTF-8 at byte")]


def test_gzip_problems_are_data_errors(tmp_path):
    plain = tmp_path / "not-gzip.txt.gz"
    plain.write_bytes(b"a sentence\n")
    with pytest.raises(DataError, match=r"not-gzip.txt.gz:-: not a readable gzip file"):
        readers.read_text(plain)
    # a truncated .gz shows only when reading reaches its end: the rows before it are read
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(gzip.compress(b"".join(b"sentence %d\n" % i for i in range(5000)))[:-200])
    it = readers.iter_text(cut)
    assert next(it).text == "sentence 0"
    with pytest.raises(DataError, match="not a readable gzip file") as info:
        list(it)
    assert info.value.line is None
    empty = tmp_path / "empty.txt.gz"
    empty.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match=r"empty.txt.gz:1: the file is empty"):
        readers.read_text(empty)


# ---------------------------------------------------------------------------------------------
# The text source


def test_text_source_one_sentence_per_line(tmp_path):
    body = "A first sentence.\r\n  kept as written \nwith a lone \r inside\nno final end"
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    expected = [
        Sentence("A first sentence.", where=f"{path}:1"),
        Sentence("  kept as written ", where=f"{path}:2"),
        Sentence("with a lone \r inside", where=f"{path}:3"),
        Sentence("no final end", where=f"{path}:4"),
    ]
    assert readers.read_text(path) == expected
    d = data_config(source="text", path=str(path))
    assert list(sources.iter_sentences(d)) == sources.load_sentences(d) == expected
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(body.encode()))
    d.path, d.split = str(packed), "train"
    assert [(s.text, s.split, s.where) for s in sources.iter_sentences(d)] == [
        (s.text, "train", s.where.replace(str(path), str(packed))) for s in expected]


def test_text_source_blank_lines_are_bad_rows(tmp_path, caplog):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"one\n\n \t\ntwo\ncaf\xe9\nthree\n")
    d = data_config(source="text", path=str(path))
    with pytest.raises(DataError) as info:
        sources.load_sentences(d)
    assert str(info.value) == f"{path}:2: empty line"
    bad = BadRows("skip")
    assert [s.text for s in readers.iter_text(path, on_bad_row=bad)] == ["one", "two", "three"]
    assert [(e.line, e.what) for e in bad.skipped][:2] == [(2, "empty line"), (3, "empty line")]
    assert bad.skipped[2].line == 5 and "invalid UTF-8" in bad.skipped[2].what
    assert bad.report() == f"skipped bad rows: {path}: 3"
    d.on_bad_row = "skip"
    with caplog.at_level(logging.INFO):
        assert [s.text for s in sources.iter_sentences(d)] == ["one", "two", "three"]
    assert any(r.getMessage().startswith(f"{path}: read 3 sentences, skipped 3 bad rows")
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# iter_sentences: every source as load_sentences gave it


@pytest.mark.parametrize("fields", [
    dict(source="vader", vader_sets=("tweets",)),
    dict(source="emobank", path=str(FIX / "emobank.csv"), split="dev"),
    dict(source="goemotions", path=str(FIX / "goemotions.tsv")),
    dict(source="goemotions", path=str(FIX / "goemotions.tsv"), single_label_only=True),
    dict(source="sst", path=str(FIX / "sst5.txt"), num_labels=5),
    dict(source="csv", path=str(FIX / "generic.csv"), label_column="label",
         valence_column="score", scale_low=-1.0, scale_high=1.0),
    dict(source="jsonl", path=str(FIX / "generic.jsonl"), label_column="label"),
    dict(source="text", path=str(FIX / "sst2.txt")),
], ids=lambda f: f["source"] + ("-single" if f.get("single_label_only") else ""))
def test_iter_sentences_matches_load_sentences(fields):
    d = data_config(**fields)
    it = sources.iter_sentences(d)
    assert not isinstance(it, list)
    got = list(it)
    assert got and got == sources.load_sentences(d)
    if fields.get("single_label_only"):
        assert all(s.label is not None for s in got)
        assert len(got) < len(readers.read_goemotions(FIX / "goemotions.tsv"))


def test_iter_sentences_config_errors_raise_at_once():
    with pytest.raises(ValueError, match="data.path is empty"):
        sources.iter_sentences(data_config(source="csv"))
    with pytest.raises(ValueError, match="is not one of"):
        sources.iter_sentences(data_config(source="nope", path="x"))
    assert "text" in sources.SOURCES


def test_iter_hf_rows_are_read_lazily():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(3000)],
                                     "y": [i % 2 for i in range(3000)]})
    it = readers.iter_hf(ds, text_column="sentence", label_column="y", num_labels=2)
    assert isinstance(it, types.GeneratorType)
    assert next(it) == Sentence("s0", label=0, where="hf:Dataset:0")
    assert [next(it) for _ in range(2)][-1].where == "hf:Dataset:2"
    assert [next(it).text, *(s.text for s in it)][-1] == "s2999"
    assert readers.read_hf(ds, text_column="sentence") == list(
        readers.iter_hf(ds, text_column="sentence"))
    with pytest.raises(DataError, match="no column 'text'"):
        readers.iter_hf(ds, text_column="text")  # columns are checked at the call


# ---------------------------------------------------------------------------------------------
# Bounded memory: a large file is read a line at a time


def _peak_while_counting(sentences) -> tuple[int, int]:
    """(count, peak bytes traced) while iterating ``sentences``, keeping only a counter."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in sentences)
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _big_rows(n_bytes: int) -> tuple[Iterator[bytes], int]:
    """(CSV rows of ~500-byte distinct sentences, their count) adding up to ``n_bytes``; every
    997th sentence spans two lines inside its CSV quotes."""
    words = b" ".join(b"word%03d" % i for i in range(60))
    row = b'"%d, %s ""quoted""%s",%d,%d\n'
    n = n_bytes // len(row % (0, words, b"", 0, 0)) + 1
    rows = (row % (i, words, b"\nsecond line" if i % 997 == 0 else b"", i % 3, i % 5 + 1)
            for i in range(n))
    return rows, n


def test_iter_sentences_streams_a_large_csv_in_bounded_memory(tmp_path):
    path = tmp_path / "big.csv"
    rows, n = _big_rows(BIG_BYTES)
    with path.open("wb") as f:
        f.write(b"text,label,v\n")
        f.writelines(rows)
    assert path.stat().st_size >= BIG_BYTES
    d = data_config(source="csv", path=str(path), label_column="label", valence_column="v",
                    scale_low=1.0, scale_high=5.0, num_labels=3)
    count, peak = _peak_while_counting(sources.iter_sentences(d))
    assert count == n
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB reading a {BIG_BYTES >> 20} MiB file"


def test_iter_sentences_streams_a_large_gz_text_corpus_in_bounded_memory(tmp_path):
    path = tmp_path / "big.txt.gz"
    rows, n = _big_rows(BIG_BYTES)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.writelines(r.replace(b"\nsecond", b" second") for r in rows)
    with gzip.open(path, "rb") as f:
        assert sum(len(line) for line in f) >= BIG_BYTES  # decompressed
    d = data_config(source="text", path=str(path))
    count, peak = _peak_while_counting(sources.iter_sentences(d))
    assert count == n
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB reading a {BIG_BYTES >> 20} MiB file"
