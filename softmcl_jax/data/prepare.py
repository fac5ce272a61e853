"""Prepare a corpus once: sentences -> encoded rows in ArrayRecord shards + ``manifest.json``.

    python -m softmcl_jax.data.prepare --config=configs/softmcl.py --out=prepared/vader \\
        [--config.data.source=csv --config.data.path=big.csv ...] [--workers=4]

Training then reads rows by random access (``prepared.PreparedSource``, through Grain) instead
of reading and tokenising the whole corpus at every start.

**What is read.** The config's data section exactly as training reads it
(``sources.iter_sentences``), labels checked against ``data.num_labels``, the probe's held-out
VADER texts left out (and counted) when ``config.probe.enabled``, then the first
``data.max_examples`` kept; the tokenizer of ``model.name_or_path`` (never the model's
weights) at ``model.max_len``; the word lexicon ``data.lexicon`` and, for a Warriner-format
CSV, its arousal and dominance too (stored on every row whatever the objective reads).

**Streaming.** Sentences are pulled ``chunk_rows`` at a time, encoded (``encode_sentences``,
then ``rows.rows_from_encoded``) and appended to the current shard: memory holds a few chunks,
whatever the corpus size. ``workers`` >= 1 encodes chunks in that many processes, in order, at
most ``2 * workers`` chunks in flight; the output is byte-identical whatever ``workers``.

**The folder.** ``prepare.json`` first (what this preparation is: a rerun with another config
is refused, naming the differences), then ``rows-00000.arrayrecord`` ... of ``shard_rows`` rows
each, each written as ``*.tmp`` and renamed when complete, with its rows' token counts
``rows-00000.lengths.npy`` and then its sidecar ``rows-00000.json`` (the shard's row statistics
and how far the input was read: sentences, held out, bad rows); at the end ``lengths.npy`` (all
rows' token counts, for ``PreparedSource.lengths``) and ``manifest.json`` last.

**manifest.json** (format 1): the identity (``tokenizer`` {name_or_path, vocab_hash, pad_id,
size}, ``max_len``, ``lexicon`` {name, hash, words, words_hash, affect}, ``assign``,
``neutral_band``, ``data`` (:data:`DATA_FIELDS`), ``source_files`` [{role, path, bytes, sha256}
or {role, resource}], ``held_out`` {n_train, n_test, seed} or null, ``shard_rows``), then
``pad_id``, ``num_labels`` (``data.num_labels``, else the largest class id + 1), ``held_out``
gains ``rows_removed``, ``sentences_read``, ``rows``, ``shards`` [{file, rows, bytes}],
``lengths`` {file, bytes}, ``length_histogram``, ``flags``, ``values`` (``RowStats.to_json``),
``spreads`` (``RowStats.spreads``), ``encode_stats`` (summed ``EncodeStats``), ``bad_rows``
{file: rows skipped}. Counts of the input (held out, bad rows, read) stop where reading stopped:
at ``data.max_examples`` rows, if set.

**Resuming.** Killed at any point, the same command finishes the job: complete shards (sidecar
present, size as recorded) are kept and their sentences skipped without encoding, a partial
``.tmp`` is discarded, and the result is byte-identical to an uninterrupted run (no time stamps
or durations are written anywhere).

**Caching.** ``cached(config, cache_dir)`` is the folder for a config under ``cache_dir``,
prepared on first use (under a lock: two processes never prepare one folder at once), reused
after: small and large data take one path, as Hugging Face ``datasets`` caches.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from softmcl_jax.data import prepared, sources
from softmcl_jax.data.prepared import (
    FORMAT_VERSION,
    LENGTHS,
    MANIFEST,
    SHARD_PATTERN,
    PreparedError,
)
from softmcl_jax.data.records import BadRows, Sentence
from softmcl_jax.data.rows import RowStats, decode_row, rows_from_encoded
from softmcl_jax.data.valence import EncodeStats, encode_sentences

log = logging.getLogger(__name__)

PREPARE_JSON = "prepare.json"
SIDECAR_PATTERN = "rows-{:05d}.json"
# Each shard's rows' token counts (uint16, as rows store them), concatenated into
# prepared.LENGTHS at the end: what packing sizes a batch by without reading its rows.
SHARD_LENGTHS_PATTERN = "rows-{:05d}.lengths.npy"
# Group size 1: Grain reads one record per seek. zstd:3 (ArrayRecord's default codec, named so
# that a library default never changes the bytes): measured on VADER rows (171 raw bytes), 179
# bytes a row on disk against 227 uncompressed, 198 snappy, 168 brotli:6 (2.5x zstd's write
# time); random reads of all four took 6-7 us a row, within the noise of each other.
WRITER_OPTIONS = "group_size:1,zstd:3"
# The fields of config.data that decide the rows (the manifest's "data", the cache key).
DATA_FIELDS = ("source", "path", "vader_sets", "split", "text_column", "label_column",
               "valence_column", "scale_low", "scale_high", "num_labels", "single_label_only",
               "on_bad_row", "max_examples", "lexicon", "lexicon_words", "assign",
               "neutral_band")
# Test hook: SIGKILL this process once it has written this many rows (a preemption mid-shard).
_KILL_AFTER_ROWS = "SOFTMCL_PREPARE_KILL_AFTER_ROWS"


# --- what a preparation is -------------------------------------------------------------------

def load_tokenizer(name_or_path: str) -> Any:
    """The fast tokenizer of ``model.name_or_path``, found as training finds it
    (``hf.resolve_name``: ``minilm`` is the packaged all-MiniLM-L6-v2); no weights are read."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(resolve(name_or_path))


def resolve(name_or_path: str) -> str:
    """The tokenizer folder or hub id of ``model.name_or_path`` (``hf.resolve_name``)."""
    from softmcl_jax.models.hf import resolve_name

    return resolve_name(name_or_path)


def _plain(value: Any) -> Any:
    """A config value as JSON: tuples as lists."""
    return list(value) if isinstance(value, tuple | list) else value


def data_fields(d: ml_collections.ConfigDict) -> dict:
    """The preparation fields of ``config.data`` (:data:`DATA_FIELDS`), as JSON values, and
    ``pair_column`` where it is set: left out when empty, so that the identity (and the cache
    key) of every single-text preparation stays what it was before pairs existed."""
    out = {k: _plain(d.get(k)) for k in DATA_FIELDS}
    if d.get("pair_column"):
        out["pair_column"] = d.pair_column
    return out


def _resource(name: str) -> dict:
    return {"resource": f"softmcl_jax.data/resources/{name}"}


def source_paths(d: ml_collections.ConfigDict) -> list[tuple[str, str | dict]]:
    """``(role, path)`` of every input file of ``config.data`` (role ``data``, ``lexicon`` or
    ``lexicon_words``; a file, a folder, or a name such as a hub data set id), or ``(role,
    {"resource": ...})`` for the shipped VADER files."""
    from softmcl_jax.data.vader import VADER_LEXICON, VADER_SENTENCE_SETS

    out: list[tuple[str, str | dict]] = []
    if d.source == "vader":
        out += [("data", _resource(VADER_SENTENCE_SETS[s])) for s in d.vader_sets
                if s in VADER_SENTENCE_SETS]
    elif d.get("path"):
        out.append(("data", d.path))
    if d.lexicon == "vader":
        out.append(("lexicon", _resource(VADER_LEXICON)))
    elif d.lexicon not in ("none", ""):
        out.append(("lexicon", d.lexicon))
    if d.lexicon_words:
        out.append(("lexicon_words", d.lexicon_words))
    return out


def _files_under(path: str) -> list[str]:
    """``path`` itself, or every file under the folder ``path`` (sorted), or none (a name)."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        return sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
    return []


def file_sha256(path: str, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read a block at a time (memory does not grow with the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def source_files(d: ml_collections.ConfigDict) -> list[dict]:
    """The manifest's ``source_files``: each input file's path, size and sha256 (streamed);
    the shipped VADER files by resource name; a source not on disk (a hub data set) by name."""
    out = []
    for role, path in source_paths(d):
        if isinstance(path, dict):
            out.append({"role": role, **path})
            continue
        files = _files_under(path)
        if not files:
            out.append({"role": role, "name": path})
        out += [{"role": role, "path": f, "bytes": os.path.getsize(f), "sha256": file_sha256(f)}
                for f in files]
    return out


def preparation(config: ml_collections.ConfigDict, tokenizer: Any,
                lexicon: Mapping[str, float], affect: Mapping[str, Mapping[str, float]], *,
                shard_rows: int) -> dict:
    """What this preparation is (``prepare.json``; the manifest's identity fields): the
    tokenizer, ``max_len``, the lexicon, ``assign``, ``neutral_band``, the data fields, the
    input files' hashes, the probe's held-out split and the shard size."""
    d = config.data
    return {
        "format": FORMAT_VERSION,
        "tokenizer": {"name_or_path": config.model.name_or_path,
                      "vocab_hash": prepared.vocab_hash(tokenizer),
                      "pad_id": int(tokenizer.pad_token_id), "size": len(tokenizer)},
        "max_len": int(config.model.max_len),
        "lexicon": {"name": d.lexicon, "hash": prepared.lexicon_hash(lexicon, affect),
                    "words": d.lexicon_words, "words_hash": prepared.words_hash(d.lexicon_words),
                    "affect": sorted(affect)},
        "assign": d.assign,
        "neutral_band": float(d.neutral_band),
        "data": data_fields(d),
        "source_files": source_files(d),
        "held_out": prepared.held_out_settings(config),
        "shard_rows": int(shard_rows),
    }


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differences(have: Mapping, want: Mapping, limit: int = 6) -> str:
    """The fields where two preparations differ, as ``key: have -> want``."""
    a, b = _flat(dict(have)), _flat(dict(want))
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    text = "; ".join(f"{k}: {a.get(k)!r} in the folder, {b.get(k)!r} now" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


# --- encoding ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EncodeSpec:
    """What encoding needs (picklable: each worker process loads its own tokenizer and lexicons
    from it once)."""

    tokenizer: str
    lexicon: str
    lexicon_words: str
    max_len: int
    assign: str
    neutral_band: float


@dataclasses.dataclass
class Encoded:
    """A chunk's rows: encoded blobs, their token counts (n,) uint16, their statistics, the
    encoding counters and the largest class id (-1: none)."""

    blobs: list[bytes]
    lengths: np.ndarray
    stats: RowStats
    encode_stats: EncodeStats
    max_label: int


class Encoder:
    """Sentences -> :class:`Encoded` rows with the tokenizer and lexicons of an
    :class:`EncodeSpec` (or the ones given, already loaded)."""

    def __init__(self, spec: EncodeSpec, tokenizer: Any = None,
                 lexicons: tuple[dict, dict] | None = None):
        self.spec = spec
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec.tokenizer)
        d = ml_collections.ConfigDict({"lexicon": spec.lexicon,
                                       "lexicon_words": spec.lexicon_words})
        self.lexicon, self.affect = lexicons if lexicons is not None else prepared.load_lexicons(d)

    def __call__(self, chunk: Sequence[Sentence]) -> Encoded:
        s = self.spec
        enc = encode_sentences(chunk, self.tokenizer, self.lexicon, max_len=s.max_len,
                               assign=s.assign, neutral_band=s.neutral_band,
                               affect_lexicons=self.affect)
        if any(x.pair is not None for x in chunk):
            enc.arrays.update(pair_arrays(chunk, self.tokenizer, s.max_len,
                                          lexicon=bool(self.lexicon)))
        blobs = rows_from_encoded(enc.arrays, multi_labels=[x.labels for x in chunk])
        stats = RowStats(s.max_len)
        for b in blobs:
            stats.add(decode_row(b))
        labels = [y for x in chunk for y in (*x.labels, *((x.label,) if x.label is not None
                                                            else ()))]
        lengths = enc.arrays["attention_mask"].sum(-1).astype(prepared.LENGTHS_DTYPE)
        return Encoded(blobs, lengths, stats, enc.stats, max(labels, default=-1))


def pair_arrays(chunk: Sequence[Sentence], tokenizer: Any, max_len: int, *, lexicon: bool
                ) -> dict[str, np.ndarray]:
    """The token arrays of ``chunk`` encoded as text pairs, ``[CLS] text [SEP] pair [SEP]``
    (the tokenizer's own pair template; truncation takes from the longer text first), with
    ``token_type_ids`` (1 on the pair's segment B): what replaces ``encode_sentences``' single
    text encoding for a ``data.pair_column`` source.

    A lexicon is refused: its word positions are found in the single-text encoding, which a
    pair's truncation can shift (fine-tuning reads none)."""
    if lexicon:
        raise ValueError("config.data.pair_column is set, but so is config.data.lexicon: word "
                         "valences are located in single texts; set config.data.lexicon='none'")
    missing = next((x for x in chunk if x.pair is None), None)
    if missing is not None:
        raise ValueError(f"{missing.where or 'a row'}: no pair text (config.data.pair_column), "
                         "while other rows have one")
    n = len(chunk)
    enc = tokenizer([x.text for x in chunk], [x.pair for x in chunk], max_length=max_len,
                    truncation=True, padding="max_length", return_special_tokens_mask=True,
                    return_attention_mask=True, return_token_type_ids=True)
    attention = np.asarray(enc["attention_mask"], np.int32).reshape(n, max_len)
    special = (np.asarray(enc["special_tokens_mask"]).reshape(n, max_len) > 0) | (attention == 0)
    return {"input_ids": np.asarray(enc["input_ids"], np.int32).reshape(n, max_len),
            "attention_mask": attention, "special_tokens_mask": special,
            "token_type_ids": np.asarray(enc["token_type_ids"], np.int32).reshape(n, max_len)
            * attention}


_worker: Encoder | None = None
_worker_error: str | None = None


def _init_worker(spec: EncodeSpec) -> None:
    global _worker, _worker_error
    # One process per core already: the tokenizer's own threads would only contend.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _worker = Encoder(spec)
    except Exception as e:  # noqa: BLE001 - a Pool whose initializer raises respawns forever
        _worker_error = f"{type(e).__name__}: {e}"


def _encode_in_worker(chunk: Sequence[Sentence]) -> Encoded:
    if _worker is None:
        raise RuntimeError(f"prepare: a worker process could not load the tokenizer and "
                           f"lexicons ({_worker_error})")
    try:
        return _worker(chunk)
    except ValueError as e:
        # DataError and its kin take several constructor arguments and do not unpickle.
        raise ValueError(str(e)) from None


# --- reading the input: held-out texts left out, resumable ---------------------------------------

@dataclasses.dataclass
class Progress:
    """How far the input has been read: sentences consumed, held-out ones left out, rows kept;
    ``bad`` collects the readers' skipped rows."""

    bad: BadRows
    consumed: int = 0
    removed: int = 0
    kept: int = 0

    def snapshot(self) -> dict:
        counts = collections.Counter(e.path for e in self.bad.skipped)
        return {"consumed": self.consumed, "held_out_removed": self.removed,
                "bad_rows": dict(sorted(counts.items()))}


def held_out_texts(config: ml_collections.ConfigDict) -> frozenset[str]:
    """The VADER probe texts (train + test) that training leaves out, as loop.build_pipeline
    does; empty when the probe is off."""
    settings = prepared.held_out_settings(config)
    if settings is None:
        return frozenset()
    from softmcl_jax.data.vader import load_vader_sentences
    from softmcl_jax.evaluation.probe import vader_probe_split

    split = vader_probe_split(load_vader_sentences(), **settings)
    return frozenset(split.train_texts) | frozenset(split.test_texts)


def kept_sentences(d: ml_collections.ConfigDict, held_out: frozenset[str],
                   progress: Progress) -> Iterator[Sentence]:
    """The sentences that become rows, in input order: labels checked, held-out texts left out,
    at most ``d.max_examples``. ``progress`` is up to date whenever a sentence is yielded."""
    # The readers take a BadRows object for on_bad_row: its counts go to the manifest.
    fields = {**d.to_dict(), "on_bad_row": progress.bad}
    for s in sources.iter_sentences(ml_collections.ConfigDict(fields)):
        progress.consumed += 1
        if d.num_labels:
            sources.check_labels([s], d.num_labels)
        if s.text in held_out:
            progress.removed += 1
            continue
        progress.kept += 1
        yield s
        if d.max_examples and progress.kept >= d.max_examples:
            return


@dataclasses.dataclass
class Chunk:
    """Sentences of one shard to encode; ``closes``: the input read when the shard's last row
    was (its sidecar's), on the shard's last chunk only."""

    shard: int
    sentences: list[Sentence]
    closes: dict | None


@dataclasses.dataclass
class End:
    """The input is read: how far (the manifest's totals)."""

    snapshot: dict


def chunks(kept: Iterator[Sentence], progress: Progress, *, start_row: int, chunk_rows: int,
           shard_rows: int) -> Iterator[Chunk | End]:
    """Chunks of at most ``chunk_rows`` kept sentences, never across a shard boundary, rows
    numbered from ``start_row`` (the caller has skipped the rows before it), then
    :class:`End`."""
    chunk: list[Sentence] = []
    row = start_row
    for s in kept:
        chunk.append(s)
        row += 1
        closes = row % shard_rows == 0
        if closes or len(chunk) == chunk_rows:
            yield Chunk((row - 1) // shard_rows, chunk, progress.snapshot() if closes else None)
            chunk = []
    if chunk:
        yield Chunk((row - 1) // shard_rows, chunk, None)
    yield End(progress.snapshot())


def encoded(items: Iterable[Chunk | End], encode, pool, in_flight: int
            ) -> Iterator[tuple[Chunk | End, Encoded | None]]:
    """``(item, its Encoded)`` in input order: in this process (``pool`` None), or by the
    pool's workers with at most ``in_flight`` chunks submitted and not yet taken."""
    if pool is None:
        for item in items:
            yield item, encode(item.sentences) if isinstance(item, Chunk) else None
        return
    pending: collections.deque = collections.deque()
    for item in items:
        job = (pool.apply_async(_encode_in_worker, (item.sentences,))
               if isinstance(item, Chunk) else None)
        pending.append((item, job))
        while len(pending) >= in_flight:
            item, job = pending.popleft()
            yield item, job.get() if job is not None else None
    while pending:
        item, job = pending.popleft()
        yield item, job.get() if job is not None else None


# --- writing -------------------------------------------------------------------------------------

def write_json(path: str, value: Any) -> None:
    """Write JSON atomically (a temp file, then os.replace): a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ShardWriter:
    """One shard being written: rows go to ``rows-NNNNN.arrayrecord.tmp``; :meth:`finish`
    renames it and writes its sidecar."""

    def __init__(self, out: str, index: int, max_len: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out, self.index = out, index
        self.file = SHARD_PATTERN.format(index)
        self.tmp = os.path.join(out, self.file + ".tmp")
        self.writer = ArrayRecordWriter(self.tmp, WRITER_OPTIONS)
        self.stats = RowStats(max_len)
        self.encode_stats = EncodeStats()
        self.max_label = -1
        self.lengths: list[np.ndarray] = []

    def add(self, enc: Encoded, on_row=None) -> None:
        for blob in enc.blobs:
            self.writer.write(blob)
            if on_row is not None:
                on_row()
        self.lengths.append(enc.lengths)
        self.stats.merge(enc.stats)
        for f in dataclasses.fields(EncodeStats):
            setattr(self.encode_stats, f.name,
                    getattr(self.encode_stats, f.name) + getattr(enc.encode_stats, f.name))
        self.max_label = max(self.max_label, enc.max_label)

    def finish(self, snapshot: dict) -> dict:
        """Close, write the row lengths, rename into place, then write the sidecar (a shard
        counts as complete once its sidecar is there and its files have the sizes recorded)."""
        self.writer.close()
        lengths = os.path.join(self.out, SHARD_LENGTHS_PATTERN.format(self.index))
        with open(lengths + ".tmp", "wb") as f:
            np.save(f, np.concatenate(self.lengths))
        os.replace(lengths + ".tmp", lengths)
        path = os.path.join(self.out, self.file)
        os.replace(self.tmp, path)
        sidecar = {"file": self.file, "rows": self.stats.rows, "bytes": os.path.getsize(path),
                   "lengths_bytes": os.path.getsize(lengths), **snapshot,
                   "max_label": self.max_label,
                   "encode_stats": dataclasses.asdict(self.encode_stats),
                   "stats": self.stats.to_json()}
        write_json(os.path.join(self.out, SIDECAR_PATTERN.format(self.index)), sidecar)
        log.info("prepare: %s: %d rows, %d bytes (%d input sentences read)", path,
                 sidecar["rows"], sidecar["bytes"], snapshot["consumed"])
        return sidecar


def complete_shards(out: str) -> list[dict]:
    """The sidecars of the shards already complete in ``out`` (in order, up to the first that
    is not); everything after them is removed, as are partial ``.tmp`` files."""
    done = []
    while True:
        sidecar = os.path.join(out, SIDECAR_PATTERN.format(len(done)))
        try:
            meta = _read_json(sidecar)
            lengths = os.path.join(out, SHARD_LENGTHS_PATTERN.format(len(done)))
            if (os.path.getsize(os.path.join(out, meta["file"])) != meta["bytes"]
                    or os.path.getsize(lengths) != meta["lengths_bytes"]):
                break
        except (OSError, ValueError, KeyError, TypeError):
            break
        done.append(meta)
    for name in os.listdir(out):
        stem = name.removesuffix(".tmp")
        index = stem.removeprefix("rows-").split(".")[0]
        stale = name.endswith(".tmp") or (
            name.startswith("rows-") and index.isdigit() and int(index) >= len(done))
        if stale:
            os.remove(os.path.join(out, name))
    return done


def _sum_encode_stats(sidecars: Sequence[dict]) -> dict:
    return {f.name: sum(s["encode_stats"][f.name] for s in sidecars)
            for f in dataclasses.fields(EncodeStats)}


def write_lengths(out: str, sidecars: Sequence[dict]) -> dict:
    """Concatenate the shards' row lengths into ``LENGTHS`` (one shard in memory at a time)."""
    path = os.path.join(out, LENGTHS)
    total = sum(s["rows"] for s in sidecars)
    tmp = path + ".tmp"
    lengths = np.lib.format.open_memmap(tmp, mode="w+", dtype=prepared.LENGTHS_DTYPE,
                                        shape=(total,))
    at = 0
    for i in range(len(sidecars)):
        part = np.load(os.path.join(out, SHARD_LENGTHS_PATTERN.format(i)))
        lengths[at:at + len(part)] = part
        at += len(part)
    lengths.flush()
    del lengths
    os.replace(tmp, path)
    return {"file": LENGTHS, "bytes": os.path.getsize(path)}


def manifest_of(what: dict, sidecars: Sequence[dict], end: dict, num_labels: int,
                lengths: dict) -> dict:
    """The manifest: the preparation's identity, then what the shards hold (summed over their
    sidecars, exactly) and the input's totals ``end``."""
    stats = RowStats(what["max_len"])
    for s in sidecars:
        stats.merge(RowStats.from_json(s["stats"]))
    rows = stats.to_json()
    max_label = max((s["max_label"] for s in sidecars), default=-1)
    held_out = what["held_out"]
    return {
        **{k: v for k, v in what.items() if k != "held_out"},
        "pad_id": what["tokenizer"]["pad_id"],  # as rows.MemorySource's manifest has it
        "num_labels": int(num_labels) or max_label + 1,
        "held_out": {**held_out, "rows_removed": end["held_out_removed"]} if held_out else None,
        "sentences_read": end["consumed"],
        "rows": rows["rows"],
        "shards": [{"file": s["file"], "rows": s["rows"], "bytes": s["bytes"]} for s in sidecars],
        "lengths": lengths,
        "length_histogram": rows["length_histogram"],
        "flags": rows["flags"],
        "values": rows["values"],
        "spreads": stats.spreads(),
        "encode_stats": _sum_encode_stats(sidecars),
        "bad_rows": end["bad_rows"],
    }


# --- prepare -------------------------------------------------------------------------------------

def _start_folder(out: str, what: dict) -> None:
    """Create ``out`` or check it holds this same preparation (``prepare.json``)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, PREPARE_JSON)
    if os.path.exists(path):
        try:
            have = _read_json(path)
        except ValueError as e:
            raise PreparedError(path, f"not readable ({e}): remove the folder") from None
        if have != json.loads(json.dumps(what)):
            raise PreparedError(path, "this folder was prepared from another config ("
                                      f"{differences(have, what)}): prepare into another "
                                      "folder, or empty this one")
        return
    if os.listdir(out):
        raise PreparedError(out, f"holds files but no {PREPARE_JSON}: not a folder prepare "
                                 "started; prepare into an empty or new folder")
    write_json(path, what)


def _kill_hook() -> Any:
    """The test hook's row counter: SIGKILL once the set number of rows is written."""
    limit = int(os.environ.get(_KILL_AFTER_ROWS, "0") or 0)
    if not limit:
        return None
    written = [0]

    def on_row() -> None:
        written[0] += 1
        if written[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_row


def prepare(config: ml_collections.ConfigDict, out: str, *, workers: int = 0,
            chunk_rows: int = 4096, shard_rows: int = 262144) -> dict:
    """Prepare the rows of ``config`` into the folder ``out`` and return its manifest (see the
    module docstring). Resumes a folder a killed run left; an already prepared folder of the
    same config is returned as it is.

    ``workers`` >= 1 starts that many "spawn" processes, which import the caller's main module:
    a script calling this needs the ``if __name__ == "__main__":`` guard. They pay off with
    more cores than the tokenizer's own threads use: on 2 cores, 0 was as fast (118k VADER-like
    sentences, 4,700 rows/s against 4,450 once the workers had started, ~6 s each to import
    transformers). ``chunk_rows`` sentences are encoded at a time; ``shard_rows`` rows a shard.
    """
    return _prepare(config, out, load_tokenizer(config.model.name_or_path), workers=workers,
                    chunk_rows=chunk_rows, shard_rows=shard_rows)


def _prepare(config: ml_collections.ConfigDict, out: str, tokenizer: Any, *, workers: int,
             chunk_rows: int, shard_rows: int) -> dict:
    if workers < 0 or chunk_rows < 1 or shard_rows < 1:
        raise ValueError(f"workers {workers} must be >= 0, chunk_rows {chunk_rows} and "
                         f"shard_rows {shard_rows} >= 1")
    d = config.data
    lexicon, affect = prepared.load_lexicons(d)
    what = preparation(config, tokenizer, lexicon, affect, shard_rows=shard_rows)
    _start_folder(out, what)
    if os.path.exists(os.path.join(out, MANIFEST)):
        log.info("prepare: %s is already prepared", out)
        return prepared.read_manifest(out)

    done = complete_shards(out)
    start_row = sum(s["rows"] for s in done)
    progress = Progress(BadRows(d.on_bad_row))
    kept = kept_sentences(d, held_out_texts(config), progress)
    # A last complete shard that is not full was the input's end: what it records is the
    # input read to the end (checked when the input ends again, below).
    last_was_end = bool(done) and done[-1]["rows"] < shard_rows
    if done:
        # Skip the complete shards' sentences unencoded; the input must read as it did.
        for _ in range(start_row):
            if next(kept, None) is None:
                break
        if progress.kept != start_row or not last_was_end:
            _check_same_input(out, done, progress.snapshot())
        log.info("prepare: resuming %s after %d complete shard(s), %d rows", out, len(done),
                 start_row)
    spec = EncodeSpec(resolve(config.model.name_or_path), d.lexicon, d.lexicon_words,
                      int(config.model.max_len), d.assign, float(d.neutral_band))
    items = chunks(kept, progress, start_row=start_row, chunk_rows=chunk_rows,
                   shard_rows=shard_rows)
    on_row = _kill_hook()
    sidecars, end = list(done), None
    with contextlib.ExitStack() as stack:
        pool = None
        if workers:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(spec,)))
        encode = Encoder(spec, tokenizer, (lexicon, affect)) if pool is None else None
        shard = None
        for item, enc in encoded(items, encode, pool, in_flight=2 * workers):
            if isinstance(item, End):
                if shard is not None:
                    sidecars.append(shard.finish(item.snapshot))
                elif last_was_end:
                    _check_same_input(out, done, item.snapshot)
                end = item.snapshot
                break
            if last_was_end:
                raise PreparedError(os.path.join(out, SIDECAR_PATTERN.format(len(done) - 1)),
                                    "the input ended at this shard, it now reads on: prepare "
                                    "into an empty folder")
            if shard is None:
                shard = ShardWriter(out, item.shard, what["max_len"])
            shard.add(enc, on_row)
            if item.closes is not None:
                sidecars.append(shard.finish(item.closes))
                shard = None
    if not sidecars:
        raise ValueError(f"config.data (source {d.source!r}): no sentences to prepare "
                         f"({end['consumed']} read, {end['held_out_removed']} held out for the "
                         "probe)")
    # Built from the sidecars as written, so that a resumed run computes what an uninterrupted
    # one does.
    sidecars = [_read_json(os.path.join(out, SIDECAR_PATTERN.format(i)))
                for i in range(len(sidecars))]
    manifest = manifest_of(what, sidecars, end, d.num_labels, write_lengths(out, sidecars))
    write_json(os.path.join(out, MANIFEST), manifest)
    log.info("prepare: %s: %d rows in %d shard(s); %s", out, manifest["rows"],
             len(manifest["shards"]), _summary(manifest))
    return manifest


def _check_same_input(out: str, done: Sequence[dict], now: dict) -> None:
    """The input read as far as the last complete shard must be what it was when the shard was
    written (prepare.json's hashes cover files; this covers any source)."""
    then = {k: done[-1][k] for k in now if k in done[-1]}
    if now != then:
        raise PreparedError(os.path.join(out, SIDECAR_PATTERN.format(len(done) - 1)),
                            f"the input now reads {now} up to this shard's end, it read {then}: "
                            "prepare into an empty folder")


def _summary(manifest: dict) -> str:
    held = manifest["held_out"]
    bad = manifest["bad_rows"]
    return (f"{manifest['sentences_read']} sentences read, "
            f"{held['rows_removed'] if held else 0} held out for the probe, "
            + (f"bad rows skipped: {bad}" if bad else "no bad rows"))


# --- a mixture's sources ------------------------------------------------------------------------

def source_data(data: ml_collections.ConfigDict, fields: Iterable[tuple[str, Any]]
                ) -> ml_collections.ConfigDict:
    """``data`` (a config's data section) with the (field, value) pairs of one
    ``config.data.mixture`` source entry set, and no mixture: the data section that source is
    prepared and cached from, exactly as a run of that single source would (same fields, same
    cache key). ``TypeError`` (ml_collections') for a value of another type than the field's."""
    out = data.copy_and_resolve_references()
    with out.unlocked():
        out.mixture = ()
        for k, v in fields:
            # A source entry read back from a run's config.json has lists where tuples were.
            out[k] = tuple(v) if isinstance(v, list) else v
    return out


def source_config(config: ml_collections.ConfigDict, fields: Iterable[tuple[str, Any]]
                  ) -> ml_collections.ConfigDict:
    """``config`` with its data section replaced by :func:`source_data`: what :func:`cached`
    prepares one mixture entry from (the run's tokenizer, ``max_len``, lexicon, probe split)."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.data = source_data(config.data, fields)
    return out


# --- the cache -----------------------------------------------------------------------------------

def _file_key(path: str) -> list:
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns]
            for f in _files_under(path)] or [path]


def cache_key(config: ml_collections.ConfigDict, tokenizer: Any) -> str:
    """sha256 of what decides a prepared folder's content: the preparation fields of the data
    section, tokenizer name and vocabulary hash, max_len, lexicon hash, the held-out split, and
    each input file's (absolute path, size, mtime_ns): a changed file is a new folder, without
    hashing its bytes at every start."""
    d = config.data
    lexicon, affect = prepared.load_lexicons(d)
    key = {"format": FORMAT_VERSION, "data": data_fields(d),
           "tokenizer": [config.model.name_or_path, prepared.vocab_hash(tokenizer)],
           "max_len": int(config.model.max_len),
           "lexicon": prepared.lexicon_hash(lexicon, affect),
           "held_out": prepared.held_out_settings(config),
           "files": [[role, path if isinstance(path, dict) else _file_key(path)]
                     for role, path in source_paths(d)]}
    return prepared._sha256_json(key)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` (created): a second process waits here."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("prepare: waiting for another process that holds %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(config: ml_collections.ConfigDict, cache_dir: str, *, workers: int = 0) -> str:
    """The prepared folder of ``config`` under ``cache_dir`` (``SOURCE-KEY``, :func:`cache_key`):
    reused when its manifest is there, else prepared (resuming what a killed process left)
    under a lock, so that two processes never prepare it at once."""
    tokenizer = load_tokenizer(config.model.name_or_path)
    folder = os.path.join(cache_dir, f"{config.data.source}-{cache_key(config, tokenizer)[:20]}")
    if os.path.exists(os.path.join(folder, MANIFEST)):
        log.info("prepare: reusing %s", folder)
        return folder
    os.makedirs(cache_dir, exist_ok=True)
    with _locked(folder + ".lock"):
        if not os.path.exists(os.path.join(folder, MANIFEST)):  # another process may have
            _prepare(config, folder, tokenizer, workers=workers, chunk_rows=4096,
                     shard_rows=262144)
    return folder


# --- command line --------------------------------------------------------------------------------

def _main(argv: list[str], config_flag, out_flag, workers_flag, chunk_flag, shard_flag) -> None:
    from absl import app

    from softmcl_jax.data.records import DataError
    from softmcl_jax.models import CheckpointError

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from softmcl_jax.cli_config import check_finite

    try:
        check_finite(config_flag.value)
        manifest = prepare(config_flag.value, out_flag.value, workers=workers_flag.value,
                           chunk_rows=chunk_flag.value, shard_rows=shard_flag.value)
    except (DataError, PreparedError, CheckpointError, ValueError, OSError) as e:
        # What the user must fix, said plainly: one line, no traceback, exit status 1.
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    print(f"prepared {manifest['rows']} rows in {len(manifest['shards'])} shard(s) to "
          f"{out_flag.value}: {_summary(manifest)}", flush=True)


def cli() -> None:
    """``python -m softmcl_jax.data.prepare --config=CONFIG --out=DIR [--workers=N]``."""
    from absl import app, flags
    from ml_collections import config_flags

    from softmcl_jax.cli_config import parse_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Training configuration file (its data, model and probe sections).",
        lock_config=True)
    out_flag = flags.DEFINE_string("out", None, "The prepared folder to write (or resume).")
    workers_flag = flags.DEFINE_integer("workers", 0, "Encoding processes (0: this one).")
    chunk_flag = flags.DEFINE_integer("chunk_rows", 4096, "Sentences encoded at a time.")
    shard_flag = flags.DEFINE_integer("shard_rows", 262144, "Rows per shard.")
    flags.mark_flags_as_required(["config", "out"])
    # A bad config file or override is one line and exit status 1 (softmcl_jax.cli_config).
    app.run(functools.partial(_main, config_flag=config_flag, out_flag=out_flag,
                              workers_flag=workers_flag, chunk_flag=chunk_flag,
                              shard_flag=shard_flag), flags_parser=parse_flags)


if __name__ == "__main__":
    # Through the package module, so that the worker processes unpickle the same functions.
    from softmcl_jax.data.prepare import cli as _cli

    _cli()
