"""Reading a prepared folder: its manifest, its rows by random access, and whether a run agrees
with what it was prepared from.

    src = PreparedSource("prepared/vader")         # O(1) in the corpus: no row is read
    check_compatible(src.manifest, identity(config, tokenizer), src.path)
    blobs = src.read([3, 17, 4])                   # encoded rows (rows.decode_row)

A prepared folder (``softmcl_jax.data.prepare``) holds ``rows-00000.arrayrecord`` ... (one
encoded :class:`rows.Row` per record, ArrayRecord with group size 1 so that any row is one
seek), a ``rows-NNNNN.json`` sidecar and ``rows-NNNNN.lengths.npy`` per shard, ``lengths.npy``
(every row's token count), ``prepare.json`` (what the preparation is) and, written last,
``manifest.json``. A folder without ``manifest.json`` is not finished.

:class:`PreparedSource` has the interface of ``rows.MemorySource`` (``path``, ``manifest``,
``len``, ``read``, ``lengths``), so the input pipeline reads small data held in memory and
large prepared data through one path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from softmcl_jax.data import rows as rows_lib
from softmcl_jax.data.rows import RowError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SHARD_PATTERN = "rows-{:05d}.arrayrecord"
# Every row's token count in row order, memory-mapped: packing sizes a global batch from its
# rows' lengths without reading the rows (rows.MemorySource.lengths). uint16, as rows store n.
LENGTHS = "lengths.npy"
LENGTHS_DTYPE = "<u2"


class PreparedError(ValueError):
    """A prepared folder that cannot be used as asked; the message starts with the file."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        super().__init__(f"{path}: {what}")


# --- identity: what a folder was prepared from, in hashes a run can recompute -----------------

def _sha256_json(value: Any) -> str:
    """sha256 of a canonical JSON text (sorted keys, no spaces): a content hash of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary, ``(token, id)`` pairs sorted (added tokens too)."""
    return _sha256_json(sorted(tokenizer.get_vocab().items()))


def lexicon_hash(lexicon: Mapping[str, float],
                 affect: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """sha256 of a word lexicon's sorted ``(word, value)`` entries and, per affect dimension,
    its lexicon's: equal hashes, equal word labels."""
    return _sha256_json({"valence": sorted(lexicon.items()),
                         **{d: sorted(v.items()) for d, v in sorted((affect or {}).items())}})


def words_hash(words: str) -> str | None:
    """sha256 of the sorted word list ``config.data.lexicon_words`` names; None without one."""
    if not words:
        return None
    from softmcl_jax.data.sources import read_word_list

    return _sha256_json(sorted(read_word_list(words)))


def affect_dims(lexicon: str) -> tuple[str, ...]:
    """The word-level dimensions besides valence that ``config.data.lexicon`` has: a
    Warriner-format CSV has arousal and dominance (both are always stored, so that any term may
    read them), ``vader`` and ``none`` have valence only."""
    return () if lexicon in ("vader", "none", "") else ("arousal", "dominance")


def load_lexicons(d: ml_collections.ConfigDict
                  ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(valence lexicon, affect lexicons) of ``config.data``, as a prepared folder stores them."""
    from softmcl_jax.data import sources

    lexicon = sources.load_lexicon(d.lexicon, d.lexicon_words)
    affect = sources.load_affect_lexicons(d.lexicon, affect_dims(d.lexicon), d.lexicon_words)
    return lexicon, affect


def held_out_settings(config: ml_collections.ConfigDict) -> dict[str, int] | None:
    """The probe split whose VADER texts are left out of the rows, or None (probe off)."""
    p = config.probe
    if not p.enabled:
        return None
    return {"n_train": int(p.n_train), "n_test": int(p.n_test), "seed": int(p.seed)}


def identity(config: ml_collections.ConfigDict, tokenizer: Any) -> dict:
    """What a run needs a prepared folder to agree with (``check_compatible``): the tokenizer
    (name, vocabulary hash), ``max_len``, the lexicon (name, entries' hash, word list hash),
    ``assign``, ``neutral_band`` and the probe's held-out split. Loads the lexicon (small)."""
    d = config.data
    lexicon, affect = load_lexicons(d)
    return {
        "tokenizer": {"name_or_path": config.model.name_or_path,
                      "vocab_hash": vocab_hash(tokenizer)},
        "max_len": int(config.model.max_len),
        "lexicon": {"name": d.lexicon, "hash": lexicon_hash(lexicon, affect),
                    "words": d.lexicon_words, "words_hash": words_hash(d.lexicon_words)},
        "assign": d.assign,
        "neutral_band": float(d.neutral_band),
        "held_out": held_out_settings(config),
    }


# Every field check_compatible compares: (key path in the identity and the manifest, what it
# is, the config field that sets it, the key path of the setting to show for a hash).
_CHECKED = (
    (("tokenizer", "name_or_path"), "tokenizer", "config.model.name_or_path", None),
    (("tokenizer", "vocab_hash"), "tokenizer vocabulary", "config.model.name_or_path",
     ("tokenizer", "name_or_path")),
    (("max_len",), "max_len", "config.model.max_len", None),
    (("lexicon", "name"), "lexicon", "config.data.lexicon", None),
    # The word list before the entries: restricting a lexicon changes its entries too.
    (("lexicon", "words_hash"), "lexicon word list", "config.data.lexicon_words",
     ("lexicon", "words")),
    (("lexicon", "hash"), "lexicon", "config.data.lexicon", ("lexicon", "name")),
    (("assign",), "assign", "config.data.assign", None),
    (("neutral_band",), "neutral_band", "config.data.neutral_band", None),
)


def _get(d: Mapping, path: Sequence[str]) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, Mapping) else None
    return d


def _lexicon_kind(name: Any) -> Any:
    """A lexicon file may be named by another path to it (relative, moved): its entries' hash
    decides; the name only tells "vader", "none" and a file apart."""
    return name if name in ("vader", "none", "") else os.path.basename(str(name))


def check_compatible(manifest: Mapping, expected: Mapping, path: str) -> None:
    """Refuse a prepared folder whose manifest disagrees with ``expected`` (:func:`identity`).

    Raises ``PreparedError`` naming ``path``'s manifest, the first field that differs, both
    values, and the command line option that prepares a folder that agrees.
    """
    where = os.path.join(path, MANIFEST)
    for key, what, field, setting in _CHECKED:
        have, want = _get(manifest, key), _get(expected, key)
        same = (_lexicon_kind(have) == _lexicon_kind(want) if key == ("lexicon", "name")
                else have == want)
        if same:
            continue
        if setting is None:
            raise PreparedError(where, f"prepared with {what} {have}, but the run has "
                                       f"{field}={want}: prepare it again with --{field}={want}")
        name = _get(expected, setting)
        raise PreparedError(where, f"prepared with a {what} of hash {have}, but the run's "
                                   f"{field}={name} has hash {want} (another one, or its files "
                                   f"changed): prepare it again with --{field}={name}")
    have, want = manifest.get("held_out"), expected.get("held_out")
    have = {k: have[k] for k in ("n_train", "n_test", "seed")} if have else None
    if have != want:
        # Rows that hold probe texts would let the probe measure memorisation; rows short of
        # texts another split holds out are merely fewer, but say so rather than guess.
        fix = ("--config.probe.enabled=False" if not want else
               " ".join(f"--config.probe.{k}={v}" for k, v in want.items()))
        raise PreparedError(where, f"prepared with the probe's held-out split {have}, but the "
                                   f"run has config.probe {want or 'disabled'}: prepare it "
                                   f"again with {fix}")


# --- the manifest and the rows -----------------------------------------------------------------

def read_manifest(path: str) -> dict:
    """The manifest of the prepared folder ``path``; ``PreparedError`` if there is none (not a
    prepared folder, or an unfinished preparation) or it is not a format this code reads."""
    where = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise PreparedError(path, "no such folder: prepare it first (python -m "
                                  "softmcl_jax.data.prepare --config=... --out=...)")
    try:
        with open(where, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise PreparedError(path, f"no {MANIFEST}: not a prepared folder, or prepare did not "
                                  "finish (run it again: it resumes)") from None
    except (OSError, ValueError) as e:
        raise PreparedError(where, f"not readable as JSON ({e}): prepare it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        version = manifest.get("format") if isinstance(manifest, dict) else None
        raise PreparedError(where, f"format {version!r}, this code reads format "
                                   f"{FORMAT_VERSION}: prepare it again")
    return manifest


class PreparedSource:
    """The rows of a prepared folder by random access: ``len(src)``, ``src.read(indices)`` ->
    encoded rows (bytes, ``rows.decode_row``), ``src.manifest``; as ``rows.MemorySource``.

    Construction reads the manifest and stats the shards and ``lengths.npy`` (each must have
    its recorded size), nothing else: start-up does not grow with the corpus. Reads go through
    Grain's ``ArrayRecordDataSource`` (opened lazily, per process: the source pickles without
    its open readers, for Grain's worker processes). A corrupt or foreign record raises
    ``PreparedError`` naming the shard and the row. ``lengths(indices)``: the rows' token
    counts, from the memory-mapped ``lengths.npy``, without reading the rows.
    """

    def __init__(self, path: str):
        self.path = path
        self.manifest = read_manifest(path)
        shards = self.manifest["shards"]
        for shard in (*shards, self.manifest["lengths"]):
            _check_shard(path, shard)
        self._files = [os.path.join(path, s["file"]) for s in shards]
        # Global index of each shard's first row: names the shard and row of a bad record.
        self._starts = [0]
        for s in shards:
            self._starts.append(self._starts[-1] + int(s["rows"]))
        self._rows = self._starts[-1]
        if self._rows != int(self.manifest["rows"]):
            raise PreparedError(os.path.join(path, MANIFEST),
                                f"its shards hold {self._rows} rows, it says "
                                f"{self.manifest['rows']}: prepare it again")
        self._source = None
        self._lengths = None

    def __len__(self) -> int:
        return self._rows

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # Open readers and the memory map do not travel (a memmap would pickle as a copy of
        # the whole array); both are reopened lazily where used.
        state["_source"] = state["_lengths"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _open(self):
        if self._source is None:
            import grain

            # "file[0:n]": the row count from the manifest, so that no shard is opened here.
            self._source = grain.sources.ArrayRecordDataSource(
                [f"{f}[0:{s['rows']}]" for f, s in zip(self._files, self.manifest["shards"],
                                                         strict=True)])
        return self._source

    def lengths(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices),) int32: the token counts of those rows, without reading them."""
        if self._lengths is None:
            self._lengths = np.load(os.path.join(self.path, LENGTHS), mmap_mode="r")
        return self._lengths[np.asarray(indices, np.int64)].astype(np.int32)

    def _where(self, index: int) -> tuple[str, int]:
        """(shard file, row within it) of global row ``index``."""
        import bisect

        k = bisect.bisect_right(self._starts, index) - 1
        return self._files[k], index - self._starts[k]

    def _bad(self, index: int, why: str) -> PreparedError:
        file, row = self._where(index)
        return PreparedError(file, f"row {row} (row {index} of {self.path}): {why}; the folder "
                                   "is damaged: prepare it again")

    def _fetch(self, indices: Sequence[int]) -> tuple[list[int], list[bytes]]:
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < self._rows:
                raise IndexError(f"{self.path}: row {i} outside its {self._rows} rows")
        source = self._open()
        try:
            blobs = list(source.__getitems__(indices))
        except RuntimeError:
            # The batch read names no record: read them one by one to name the bad one.
            blobs = [self._read_one(source, i) for i in indices]
        return indices, blobs

    def _decode(self, indices: list[int], blobs: list[bytes]) -> list[rows_lib.Row]:
        out = []
        for i, blob in zip(indices, blobs, strict=True):
            try:
                out.append(rows_lib.decode_row(blob))
            except RowError as e:
                raise self._bad(i, f"not a row ({e})") from None
        return out

    def read_rows(self, indices: Sequence[int]) -> list[rows_lib.Row]:
        """The decoded rows at ``indices`` (global row numbers, any order, repeats allowed): a
        record that is not a row is a ``PreparedError`` naming its shard and row."""
        return self._decode(*self._fetch(indices))

    def read(self, indices: Sequence[int]) -> list[bytes]:
        """The encoded rows at ``indices``, each checked as :meth:`read_rows` checks it."""
        indices, blobs = self._fetch(indices)
        self._decode(indices, blobs)
        return blobs

    def _read_one(self, source, index: int) -> bytes:
        try:
            return source[index]
        except RuntimeError as e:  # riegeli: "Corrupted Riegeli/records file ..."
            raise self._bad(index, f"unreadable record ({str(e).splitlines()[0][:200]})"
                            ) from None


def _check_shard(path: str, shard: Mapping) -> None:
    """A shard must exist with the byte size the manifest records (one stat, no read)."""
    file = os.path.join(path, shard["file"])
    try:
        size = os.path.getsize(file)
    except OSError:
        raise PreparedError(file, f"missing (the manifest lists it with {shard['bytes']} "
                                  "bytes): prepare the folder again") from None
    if size != int(shard["bytes"]):
        raise PreparedError(file, f"{size} bytes, the manifest records {shard['bytes']}: "
                                  "truncated or replaced; prepare the folder again")
