"""One training row as stored in a prepared folder: unpadded, tokenised once, every supervision
the terms may read; and the padded batch arrays rebuilt from such rows.

    blobs = rows_from_encoded(encode_sentences(chunk, tokenizer, lexicon, max_len=64).arrays)
    rows = [decode_row(b) for b in blobs]
    arrays = pad_rows(rows, max_len=64, pad_id=0)   # == the encode_sentences arrays of the chunk

**Why unpadded and sparse.** A VADER sentence is ~25 MiniLM tokens of 64 and has ~2 lexicon
words: padded dense arrays (ids, masks, three token ratings) are ~1.4 KiB a sentence, this row is
~130 bytes. Padding is a property of the step (``max_len``, packing), not of the data.

**Fields** (:class:`Row`): ``input_ids`` (n,) int32, the real tokens as encoded ([CLS] ...
[SEP]); ``special`` (n,) bool, the special tokens among them; ``word_pos`` (k,) int32, the
tokens that carry a lexicon word (``token_valence_mask``), with ``word_valence``,
``word_arousal``, ``word_dominance`` (k,) float32 (-1 where the affect lexicon lacks the word);
``sentence`` (3,) float32, valence / arousal / dominance of the sentence (-1 where absent);
``label`` the single class id (-1 where none); ``labels`` (m,) int32 the multi-label ids;
``flags``: which supervision the row has (:data:`RATED`, :data:`WORDS`, :data:`CLASS`), what a
mixture's per-term row masks are built from. A text pair (``data.pair_column``) also stores
``token_type`` (n,) uint8, the segment of each token (0 = A, 1 = B), and sets the :data:`PAIR`
bit; rows of single texts store nothing more, so folders prepared before pairs existed read
as they always did.

**Encoding.** A little-endian header ``<BBHHHi`` (format version, flags, n, k, m, label), then
the arrays' bytes in field order (``token_type`` last, when the PAIR bit is set). No pickle
(a prepared folder is data, never code) and no per-row schema: decoding is a few
``np.frombuffer`` views.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence

import numpy as np

ROW_FORMAT = 1
# Flags: what supervision a row carries.
RATED = 1  # a sentence-level valence (sentence[0] >= 0)
WORDS = 2  # at least one lexicon word (word_pos non-empty)
CLASS = 4  # a class id (label >= 0 or labels non-empty)
FLAG_NAMES = {RATED: "rated", WORDS: "words", CLASS: "class"}
# A layout bit, not supervision (so not among the counted FLAG_NAMES): the row is a text pair
# and stores its tokens' segment (token_type) after the other fields.
PAIR = 8

_HEADER = struct.Struct("<BBHHHi")
SENTENCE_DIMS = ("valence", "arousal", "dominance")


class RowError(ValueError):
    """A stored row that cannot be decoded (a corrupt or foreign record)."""


@dataclasses.dataclass(frozen=True)
class Row:
    input_ids: np.ndarray  # (n,) int32
    special: np.ndarray  # (n,) bool
    word_pos: np.ndarray  # (k,) int32
    word_valence: np.ndarray  # (k,) float32
    word_arousal: np.ndarray  # (k,) float32, -1 absent
    word_dominance: np.ndarray  # (k,) float32, -1 absent
    sentence: np.ndarray  # (3,) float32, -1 absent
    label: int = -1
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    token_type: np.ndarray | None = None  # (n,) uint8 segment of each token; None: one text

    @property
    def flags(self) -> int:
        return ((RATED if self.sentence[0] >= 0 else 0) | (WORDS if len(self.word_pos) else 0)
                | (CLASS if self.label >= 0 or len(self.labels) else 0)
                | (PAIR if self.token_type is not None else 0))


def encode_row(row: Row) -> bytes:
    n, k, m = len(row.input_ids), len(row.word_pos), len(row.labels)
    if n > 0xFFFF or k > 0xFFFF or m > 0xFFFF:
        raise ValueError(f"row too long to store: {n} tokens, {k} words, {m} labels")
    return b"".join((
        _HEADER.pack(ROW_FORMAT, row.flags, n, k, m, int(row.label)),
        np.asarray(row.input_ids, "<i4").tobytes(),
        np.asarray(row.special, np.uint8).tobytes(),
        np.asarray(row.word_pos, "<i4").tobytes(),
        np.asarray(row.word_valence, "<f4").tobytes(),
        np.asarray(row.word_arousal, "<f4").tobytes(),
        np.asarray(row.word_dominance, "<f4").tobytes(),
        np.asarray(row.sentence, "<f4").reshape(3).tobytes(),
        np.asarray(row.labels, "<i4").tobytes(),
        b"" if row.token_type is None else np.asarray(row.token_type, np.uint8).tobytes(),
    ))


def row_flags(blob: bytes) -> int:
    """The flags of an encoded row, read from its header alone."""
    return blob[1]


def decode_row(blob: bytes) -> Row:
    """The :class:`Row` of :func:`encode_row`'s bytes; ``RowError`` if they are not one."""
    if len(blob) < _HEADER.size:
        raise RowError(f"a row of {len(blob)} bytes is shorter than its header")
    version, flags, n, k, m, label = _HEADER.unpack_from(blob)
    if version != ROW_FORMAT:
        raise RowError(f"row format {version}, expected {ROW_FORMAT}")
    size = _HEADER.size + 5 * n + 16 * k + 12 + 4 * m + (n if flags & PAIR else 0)
    if len(blob) != size:
        raise RowError(f"a row of {len(blob)} bytes, its header says {size}")
    o = _HEADER.size

    def take(count: int, dtype: str) -> np.ndarray:
        nonlocal o
        a = np.frombuffer(blob, dtype, count, o)
        o += a.nbytes
        return a

    ids = take(n, "<i4").astype(np.int32)
    special = take(n, np.uint8).astype(bool)
    pos = take(k, "<i4").astype(np.int32)
    wv, wa, wd = (take(k, "<f4").astype(np.float32) for _ in range(3))
    sentence = take(3, "<f4").astype(np.float32)
    labels = take(m, "<i4").astype(np.int32)
    token_type = take(n, np.uint8).astype(np.uint8) if flags & PAIR else None
    row = Row(ids, special, pos, wv, wa, wd, sentence, int(label), labels, token_type)
    if row.flags != flags:
        raise RowError(f"row flags {flags} disagree with its contents ({row.flags})")
    if k and (pos.min() < 0 or pos.max() >= n):
        raise RowError(f"word positions {pos.tolist()} outside the row's {n} tokens")
    return row


def rows_from_encoded(arrays: Mapping[str, np.ndarray],
                      multi_labels: Sequence[Sequence[int]] | None = None) -> list[bytes]:
    """Encoded rows of ``encode_sentences``' padded arrays (right padding; attention_mask).

    ``multi_labels``: the ``Sentence.labels`` of each row (GoEmotions' multi-label ids), stored
    as they are; None stores none. ``token_type_ids`` among the arrays (text pairs) is stored as
    each row's ``token_type``.
    """
    attn = np.asarray(arrays["attention_mask"]).astype(bool)
    lens = attn.sum(-1)
    n_rows, max_len = attn.shape
    if not np.array_equal(np.arange(max_len)[None] < lens[:, None], attn):
        raise ValueError("rows_from_encoded needs right padding: attention_mask ones then zeros")
    none = np.full((n_rows, max_len), -1.0, np.float32)
    ta = np.asarray(arrays.get("token_arousal", none))
    td = np.asarray(arrays.get("token_dominance", none))
    sentence = np.stack([np.asarray(arrays.get(f"sentence_{d}", none[:, 0]), np.float32)
                         for d in SENTENCE_DIMS], -1)
    types = arrays.get("token_type_ids")
    out = []
    for i in range(n_rows):
        n = int(lens[i])
        pos = np.flatnonzero(arrays["token_valence_mask"][i, :n]).astype(np.int32)
        out.append(encode_row(Row(
            input_ids=arrays["input_ids"][i, :n], special=arrays["special_tokens_mask"][i, :n],
            word_pos=pos, word_valence=arrays["token_valence"][i, pos],
            word_arousal=ta[i, pos], word_dominance=td[i, pos], sentence=sentence[i],
            label=int(arrays["labels"][i]),
            labels=np.asarray(multi_labels[i] if multi_labels is not None else (), np.int32),
            token_type=None if types is None else np.asarray(types[i, :n], np.uint8))))
    return out


def pad_rows(rows: Sequence[Row], *, max_len: int, pad_id: int,
             num_labels: int | None = None, token_types: bool = False
             ) -> dict[str, np.ndarray]:
    """The padded (B, max_len) arrays of ``encode_sentences`` for ``rows``: equal, key for key
    and value for value, to encoding their texts with the same tokenizer and lexicon at
    ``max_len``. ``num_labels`` adds ``multi_labels`` (B, num_labels) multi-hot (from
    ``labels``, else ``label``). A row longer than ``max_len`` is an error: the folder was
    prepared for another ``max_len`` (the manifest check says which). ``token_types`` adds
    ``token_type_ids`` (B, max_len) int32: each pair row's segments, 0 elsewhere (padding and
    single texts)."""
    b = len(rows)
    ids = np.full((b, max_len), pad_id, np.int32)
    attn = np.zeros((b, max_len), np.int32)
    special = np.ones((b, max_len), bool)
    tv = np.zeros((b, max_len), np.float32)
    tmask = np.zeros((b, max_len), bool)
    ta = np.full((b, max_len), -1.0, np.float32)
    td = np.full((b, max_len), -1.0, np.float32)
    sent = np.full((b, 3), -1.0, np.float32)
    labels = np.full(b, -1, np.int32)
    multi = np.zeros((b, num_labels or 0), np.int32)
    types = np.zeros((b, max_len), np.int32)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        if n > max_len:
            raise ValueError(f"a row of {n} tokens does not fit max_len {max_len}")
        ids[i, :n], attn[i, :n], special[i, :n] = r.input_ids, 1, r.special
        tv[i, r.word_pos], tmask[i, r.word_pos] = r.word_valence, True
        ta[i, r.word_pos], td[i, r.word_pos] = r.word_arousal, r.word_dominance
        sent[i], labels[i] = r.sentence, r.label
        if r.token_type is not None:
            types[i, :n] = r.token_type
        if num_labels:
            multi[i, r.labels if len(r.labels) else ([r.label] if r.label >= 0 else [])] = 1
    out = {
        "input_ids": ids, "attention_mask": attn, "special_tokens_mask": special,
        "token_valence": tv, "token_valence_mask": tmask,
        "sentence_valence": sent[:, 0].copy(), "sentence_valence_mask": sent[:, 0] >= 0,
        "sentence_arousal": sent[:, 1].copy(), "sentence_dominance": sent[:, 2].copy(),
        "token_arousal": ta, "token_dominance": td, "labels": labels,
    }
    if num_labels:
        out["multi_labels"] = multi
    if token_types:
        out["token_type_ids"] = types
    return out


# The rating arrays a spread is measured for (rating_units' keys), from a row's fields.
RATING_KEYS = ("sentence_valence", "sentence_arousal", "sentence_dominance",
               "token_valence", "token_arousal", "token_dominance")


def _ratings(row: Row) -> dict[str, np.ndarray]:
    """The present ratings of a row, per rating key (absent ones are < 0; word valences are
    present wherever there is a word)."""
    words = {"token_valence": row.word_valence, "token_arousal": row.word_arousal,
             "token_dominance": row.word_dominance}
    out = {f"sentence_{d}": row.sentence[i:i + 1] for i, d in enumerate(SENTENCE_DIMS)}
    out.update(words)
    return {k: v if k == "token_valence" else v[v >= 0] for k, v in out.items()}


class RowStats:
    """What a prepared folder's manifest says about its rows, accumulated row by row and merged
    across shards (exactly: integer counts and the multiset of every rating value).

    ``length_histogram[t]``: rows of ``t`` tokens (what packing sizes its rows from);
    ``flags``: rows with each supervision; ``values[key]``: ``{rating: count}``, the exact
    multiset of each rating key's values, from which :meth:`spreads` is Gini's mean difference
    (``rating_units``). Memory is the number of distinct values, not of rows: ratings come from
    lexicons and rating scales.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.rows = 0
        self.length_histogram = np.zeros(max_len + 1, np.int64)
        self.flags = {name: 0 for name in FLAG_NAMES.values()}
        self.values: dict[str, dict[float, int]] = {k: {} for k in RATING_KEYS}

    def add(self, row: Row) -> None:
        self.rows += 1
        self.length_histogram[len(row.input_ids)] += 1
        for bit, name in FLAG_NAMES.items():
            self.flags[name] += bool(row.flags & bit)
        for key, vals in _ratings(row).items():
            counts = self.values[key]
            for v in vals.tolist():
                counts[v] = counts.get(v, 0) + 1

    def merge(self, other: RowStats) -> None:
        self.rows += other.rows
        self.length_histogram += other.length_histogram
        for name, n in other.flags.items():
            self.flags[name] += n
        for key, counts in other.values.items():
            mine = self.values[key]
            for v, n in counts.items():
                mine[v] = mine.get(v, 0) + n

    def to_json(self) -> dict:
        return {"rows": self.rows, "length_histogram": self.length_histogram.tolist(),
                "flags": dict(self.flags),
                "values": {k: [[float(v), int(n)] for v, n in sorted(c.items())]
                           for k, c in self.values.items()}}

    @classmethod
    def from_json(cls, d: Mapping) -> RowStats:
        s = cls(len(d["length_histogram"]) - 1)
        s.rows = int(d["rows"])
        s.length_histogram = np.asarray(d["length_histogram"], np.int64)
        s.flags = {k: int(v) for k, v in d["flags"].items()}
        s.values = {k: {float(np.float32(v)): int(n) for v, n in pairs}
                    for k, pairs in d["values"].items()}
        return s

    def spreads(self) -> dict[str, float]:
        """``{key: spread}`` of every rating key with two or more values (``rating_units``)."""
        out = {}
        for key, counts in self.values.items():
            if sum(counts.values()) >= 2:
                out[key] = gini_mean_difference(counts)
        return out


def gini_mean_difference(counts: Mapping[float, int]) -> float:
    """Mean |x_i - x_j| over i != j of the multiset ``{value: count}``: with values sorted, the
    ``c`` copies of ``v`` taking ranks ``a .. a + c - 1`` of ``n`` add ``v c (2a + c - n)`` to
    ``sum_{i<j} (x_j - x_i) = sum_k (2k - n + 1) x_k`` (``rating_units.mean_abs_difference``)."""
    v = np.array(sorted(counts), np.float64)
    c = np.array([counts[x] for x in sorted(counts)], np.float64)
    n = c.sum()
    if n < 2:
        raise ValueError(f"a mean difference needs 2 or more values, got {int(n)}")
    a = np.concatenate([[0.0], np.cumsum(c)[:-1]])
    return float(2.0 * np.sum(v * c * (2.0 * a + c - n)) / (n * (n - 1)))


class MemorySource:
    """Rows held in memory, with the interface of a prepared folder's source
    (``len``, ``read(indices) -> list[bytes]``, ``lengths(indices)``, ``manifest``): small data
    in tests and notebooks; training reads prepared folders.

    ``lengths(indices)`` gives the rows' token counts without reading the rows (a prepared folder
    keeps them in a memory-mapped ``lengths.npy``): every process can then decide the packing
    of the whole global batch while reading only its own rows.
    """

    def __init__(self, blobs: Sequence[bytes], *, max_len: int, pad_id: int, name: str = "memory"):
        self.blobs = list(blobs)
        self._lengths = np.array([_HEADER.unpack_from(b)[2] for b in self.blobs], np.int32)
        stats = RowStats(max_len)
        for b in self.blobs:
            stats.add(decode_row(b))
        self.path = name
        self.manifest = {"max_len": max_len, "pad_id": pad_id, **stats.to_json(),
                         "spreads": stats.spreads()}

    def __len__(self) -> int:
        return len(self.blobs)

    def read(self, indices: Sequence[int]) -> list[bytes]:
        return [self.blobs[int(i)] for i in indices]

    def lengths(self, indices: Sequence[int]) -> np.ndarray:
        return self._lengths[np.asarray(indices, np.int64)]
