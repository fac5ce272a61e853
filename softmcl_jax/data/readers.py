"""Readers: one function per source format, each turning a file into records (``records.py``).

Shared behaviour, so that no reader drops anything silently:

* Every reader takes ``on_bad_row``: ``"raise"`` (default), ``"skip"``, or a ``BadRows`` object
  (pass the same one to several readers to collect all skips). A bad row raises ``DataError``
  whose message starts ``PATH:LINE:`` (the line where the record starts, or for bad UTF-8 the
  line holding the bad bytes) and says what is wrong; with ``"skip"`` the row is left out,
  counted, logged, and each reader logs its count at the end.
  Problems with the file as a whole (missing file, empty file, a header without a needed column)
  always raise: skipping them would skip everything.
* Bad rows are: a wrong number of columns, an empty line, an empty text (no printable
  character: see :func:`printable`), a valence (arousal,
  dominance) that is not a number or lies outside the scale the caller states, an unknown label
  id, a line that is not valid UTF-8 (files are read as bytes and decoded line by line so that
  the line is known), and, in lexicons, a word listed twice with different values (twice with
  the same value is fine and kept once).
* Files may start with a UTF-8 BOM and use CRLF or LF line ends; ``.gz`` files are decompressed.
* Files are read one line at a time, never whole, so memory does not grow with the file. The
  sentence readers a large corpus comes in have a generator form, ``iter_*`` (``iter_csv``,
  ``iter_jsonl``, ``iter_text``, ``iter_hf``, ...), that holds one record at a time; ``read_*``
  is ``list(iter_*(...))``. An ``iter_*`` checks its arguments when called, and raises a file's
  or a row's ``DataError`` when iteration reaches it. Lexicons are dicts, built whole.
* Valences (arousal, dominance) are mapped to [0, 1] from the ``scale=(low, high)`` the caller
  states (``records.scale_to_unit``); each reader's default is its source's documented scale.
* Texts are returned as in the file, except where a format's docstring says it strips them.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import numbers
import os
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from softmcl_jax.data.records import (
    AspectExample,
    BadRows,
    DataError,
    Sentence,
    SentencePair,
    scale_to_unit,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
OnBadRow = str | BadRows

_BOM = b"\xef\xbb\xbf"
EMOBANK_SPLITS = ("train", "dev", "test")
# Rating columns of the Warriner norms and EmoBank, named in error messages.
_WARRINER_RATINGS = {"V.Mean.Sum": "valence", "A.Mean.Sum": "arousal", "D.Mean.Sum": "dominance"}
_EMOBANK_RATINGS = {"V": "valence", "A": "arousal", "D": "dominance"}
GOEMOTIONS_NUM_LABELS = 28  # 27 emotions + neutral, the order of GoEmotions' emotions.txt


# ---------------------------------------------------------------------------------------------
# Shared plumbing


def _policy(on_bad_row: OnBadRow) -> BadRows:
    return on_bad_row if isinstance(on_bad_row, BadRows) else BadRows(on_bad_row)


def _scale(scale: Any, what: str = "scale") -> tuple[float, float]:
    # A wrong scale is the caller's mistake, not the data's: ValueError, not DataError.
    try:
        low, high = (float(x) for x in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (low, high), got {scale!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{what} must be finite with low < high, got {scale!r}")
    return low, high


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Physical lines of the file, numbered from 1, without their LF or CRLF end.

    Read one line at a time from the open file (a ``.gz`` file is decompressed as it is read),
    so memory holds one line whatever the file's size. The BOM is dropped from line 1; a file
    with no bytes after it is empty, which always raises.
    """
    packed = path.endswith(".gz")
    # Opening (missing file, no permission) raises as it is; only reading a .gz is checked.
    with (gzip.open(path, "rb") if packed else open(path, "rb")) as f:
        lines = iter(f)
        number = 0
        while True:
            try:
                raw = next(lines, None)
            except (OSError, EOFError, zlib.error) as e:
                if not packed:
                    raise
                # A corrupt or truncated .gz shows only when reading reaches the bad bytes.
                raise DataError(path, None, f"not a readable gzip file: {e}") from None
            if raw is None:
                break
            number += 1
            if number == 1:
                raw = raw.removeprefix(_BOM)
                if not raw:
                    raise DataError(path, 1, "the file is empty")
            # Iterating splits after each LF only, so a lone CR inside a line stays in it.
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            yield number, raw[:-1] if raw.endswith(b"\r") else raw
    if number == 0:
        raise DataError(path, 1, "the file is empty")


def _utf8_error(path: str, line: int, raw: bytes, e: UnicodeDecodeError) -> DataError:
    return DataError(
        path, line, f"invalid UTF-8 at byte {e.start} ({raw[e.start : e.start + 4]!r}): {e.reason}"
    )


def _lines(path: str, bad: BadRows) -> Iterator[tuple[int, str]]:
    """Decoded lines; one that is not UTF-8 is a bad row, the others still get read."""
    for number, raw in _raw_lines(path):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.handle(_utf8_error(path, number, raw, e))


def _groups(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` items; the last one is shorter when the items run out."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _csv_table(
    path: str, bad: BadRows, required: Iterable[str], delimiter: str = ","
) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """A CSV file with a header: (column -> index, iterator of (start line, fields)).

    Quoted fields may span lines, so records are numbered by the line they start on; the csv
    module is strict, so a stray quote is a bad row instead of a silently merged one. Records
    whose field count differs from the header's are bad rows.
    """
    broken: dict[int, DataError] = {}

    def text_lines() -> Iterator[str]:
        for number, raw in _raw_lines(path):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                # Keep feeding the csv module so that the records after this one still parse.
                broken[number] = _utf8_error(path, number, raw, e)
                text = raw.decode("utf-8", "replace")
            yield text + "\n"

    reader = csv.reader(text_lines(), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, 1, "the file is empty") from None
    except csv.Error as e:
        raise DataError(path, 1, f"malformed CSV header: {e}") from None
    if 1 in broken:
        raise broken[1]
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        columns.setdefault(name, index)
    for name in required:
        if name not in columns:
            raise DataError(path, 1, f"no column {name!r} in the header {header!r}")
        if header.count(name) > 1:
            raise DataError(path, 1, f"column {name!r} appears {header.count(name)} times")

    def records() -> Iterator[tuple[int, list[str]]]:
        end = reader.line_num
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                end = reader.line_num
                for n in range(start, end + 1):
                    broken.pop(n, None)
                bad.handle(DataError(path, start, f"malformed CSV record: {e}"))
                continue
            end = reader.line_num
            # Popped, not looked up: ``broken`` holds only the lines of the record being read.
            errors = [broken.pop(n) for n in range(start, end + 1) if n in broken]
            if errors:
                bad.handle(errors[0])
            elif not fields:
                bad.handle(DataError(path, start, "empty line"))
            elif len(fields) != len(header):
                bad.handle(
                    DataError(
                        path, start, f"expected {len(header)} columns, got {len(fields)}"
                    )
                )
            else:
                yield start, fields

    return columns, records()


def _number(raw: Any, path: str, line: int, what: str) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(path, line, f"missing {what}")
    if isinstance(raw, bool):
        raise DataError(path, line, f"{what} {raw!r} is not a number")
    if isinstance(raw, numbers.Real):
        value = float(raw)
    else:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise DataError(path, line, f"{what} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, line, f"{what} {raw!r} is not a finite number")
    return value


def _valence(raw: Any, scale: tuple[float, float], path: str, line: int,
             what: str = "valence") -> float:
    return scale_to_unit(_number(raw, path, line, what), *scale, path=path, line=line, what=what)


def _label_id(raw: Any, num_labels: int | None, path: str, line: int) -> int:
    if isinstance(raw, numbers.Integral) and not isinstance(raw, bool):
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw.strip())
    elif raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(path, line, "missing label")
    else:
        raise DataError(path, line, f"label {raw!r} is not an integer id")
    if value < 0 or (num_labels is not None and value >= num_labels):
        known = f"0..{num_labels - 1}" if num_labels is not None else "0 or more"
        raise DataError(path, line, f"unknown label id {value} (ids are {known})")
    return value


def _label_ids(
    raw: Any, num_labels: int | None, path: str, line: int
) -> tuple[int | None, tuple[int, ...]]:
    """(label, labels): a list gives multi-label ids, ``label`` set when there is exactly one."""
    if isinstance(raw, (list, tuple)) or (hasattr(raw, "tolist") and getattr(raw, "ndim", 0)):
        ids = [_label_id(x, num_labels, path, line) for x in list(raw)]
        if not ids:
            raise DataError(path, line, "no label ids")
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise DataError(path, line, f"label id(s) {twice} listed twice")
        return (ids[0] if len(ids) == 1 else None), tuple(ids)
    return _label_id(raw, num_labels, path, line), ()


# Unicode general categories of the characters that are text by themselves: letters,
# numbers, punctuation and symbols (emoji are symbols, So). Not: separators (Z*: spaces, line and
# paragraph separators), controls (Cc), format characters (Cf: zero-width spaces and joiners,
# the BOM, bidi marks, soft hyphens), surrogates, private use and unassigned code points (Cs,
# Co, Cn: no agreed glyph), and marks (M*), which draw on a base character and are nothing
# without one. A text of only those trains as a row of special tokens alone: a BERT tokenizer
# deletes controls, format, private-use and unassigned characters and the replacement
# character, splits on separators, and an uncased one strips combining marks.
_PRINTABLE_CATEGORIES = frozenset("LNPS")
# U+FFFD stands for bytes a decoder could not read: a symbol by category, but no text, and
# tokenizers delete it.
_REPLACEMENT = "\ufffd"


def printable(char: str) -> bool:
    """Whether ``char`` is text by itself: a letter, number, punctuation or symbol (emoji
    included); whitespace, control, format (zero-width), private-use and unassigned
    characters, combining marks (text only on a base character) and U+FFFD are not."""
    return char != _REPLACEMENT and unicodedata.category(char)[0] in _PRINTABLE_CATEGORIES


# What Unicode calls the characters unicodedata.name has no name for.
_UNNAMED = {"Cc": "<control>", "Cs": "<surrogate>", "Co": "<private use>",
            "Cn": "<unassigned>"}


def _char_names(text: str, most: int = 4) -> str:
    """``U+200B ZERO WIDTH SPACE, U+0007 <control>`` for the distinct characters of ``text``
    other than whitespace, in order of first appearance, at most ``most`` of them."""
    chars = [c for c in dict.fromkeys(text) if not c.isspace()]  # spaces are no news
    named = [f"U+{ord(c):04X} "
             + unicodedata.name(c, _UNNAMED.get(unicodedata.category(c), "<unnamed>"))
             for c in chars[:most]]
    more = f" and {len(chars) - most} more" if len(chars) > most else ""
    return ", ".join(named) + more


def empty_text(text: str, what: str = "text") -> str | None:
    """Why ``text`` is empty (the bad row's message, ``empty {what}...``), or None if it has a
    printable character (:func:`printable`). A blank text is ``empty text``; one of invisible
    characters names them, since the file shows nothing to find."""
    if not text.strip():
        return f"empty {what}"
    if any(printable(c) for c in text):
        return None
    if all(unicodedata.category(c)[0] in "CZ" for c in text):
        return f"empty {what} (only invisible characters: {_char_names(text)})"
    return f"empty {what} (no printable character, only {_char_names(text)})"


def _text(raw: Any, path: str, line: int) -> str:
    if isinstance(raw, bytes):  # tensorflow-datasets gives bytes
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _utf8_error(path, line, raw, e) from None
    if not isinstance(raw, str):
        raise DataError(path, line, f"text is not a string: {raw!r}")
    why = empty_text(raw)
    if why is not None:
        raise DataError(path, line, why)
    return raw


def _finish(path: str, count: int, what: str, bad: BadRows) -> None:
    skipped = sum(1 for e in bad.skipped if e.path == path)
    if skipped:
        log.warning("%s: read %d %s, skipped %d bad rows (%s)", path, count, what, skipped,
                    bad.report())
    else:
        log.info("%s: read %d %s, no bad rows", path, count, what)


def _add_word(
    lexicon: dict[str, float],
    seen: dict[str, tuple[int, str]],
    word: str,
    value: float,
    raw: str,
    path: str,
    line: int,
    duplicates: str,
) -> bool:
    """Add a lexicon entry; True when it overrode a different earlier value.

    ``seen`` keeps (line, value as written) per word so that a conflict names both rows.
    """
    if word in lexicon and lexicon[word] != value:
        if duplicates != "last":
            first, written = seen[word]
            raise DataError(
                path,
                line,
                f"word {word!r} listed twice with different values: {written.strip()} on line "
                f"{first}, {raw.strip()} here",
            )
        lexicon[word] = value
        seen[word] = (line, raw)
        return True
    lexicon.setdefault(word, value)
    seen.setdefault(word, (line, raw))
    return False


# ---------------------------------------------------------------------------------------------
# Lexicons


def read_warriner(
    path: PathLike,
    *,
    scale: tuple[float, float] = (1.0, 9.0),
    word_column: str = "Word",
    valence_column: str = "V.Mean.Sum",
    on_bad_row: OnBadRow = "raise",
) -> dict[str, float]:
    """Warriner, Kuperman & Brysbaert (2013) word norms -> ``{word: valence in [0, 1]}``.

    Format: CSV with a header (``Ratings_Warriner_et_al.csv``: an unnamed index column, then
    ``Word, V.Mean.Sum, V.SD.Sum, V.Rat.Sum, A.Mean.Sum, ...``, 65 columns). Only ``Word`` and
    ``V.Mean.Sum`` (mean valence, 1 = unhappy .. 9 = happy) are read; every row must have as many
    fields as the header. A word listed twice with different valences is a bad row; listed twice
    with the same valence it is kept once. Words are kept as written (Warriner's are lower case).

    ``valence_column`` reads another rating the same way, on the same 1..9 scale:
    ``A.Mean.Sum`` (arousal, 1 = calm .. 9 = excited) or ``D.Mean.Sum`` (dominance, 1 =
    controlled .. 9 = in control), as ``sources.load_affect_lexicons`` does.
    """
    path, bad = str(path), _policy(on_bad_row)
    low_high = _scale(scale)
    what = _WARRINER_RATINGS.get(valence_column, "valence")
    columns, rows = _csv_table(path, bad, (word_column, valence_column))
    lexicon: dict[str, float] = {}
    seen: dict[str, tuple[int, str]] = {}
    for line, fields in rows:
        try:
            word = fields[columns[word_column]]
            if not word.strip():
                raise DataError(path, line, "empty word")
            raw = fields[columns[valence_column]]
            value = _valence(raw, low_high, path, line, what)
            _add_word(lexicon, seen, word, value, raw, path, line, "raise")
        except DataError as e:
            bad.handle(e)
    _finish(path, len(lexicon), "words", bad)
    return lexicon


def read_vader_lexicon(
    path: PathLike,
    *,
    scale: tuple[float, float] = (-4.0, 4.0),
    duplicates: str = "raise",
    on_bad_row: OnBadRow = "raise",
) -> dict[str, float]:
    """VADER lexicon (``vader_lexicon.txt``) -> ``{token: valence in [0, 1]}``.

    Format: no header; 4 tab-separated fields per line: token, mean rating, standard deviation,
    and the ten raters' integer ratings as ``[r1, ..., r10]``; ratings are on -4 (extremely
    negative) .. +4 (extremely positive). Only token and mean are read. Tokens may contain spaces
    (``can't stand``) and are kept exactly (``:D`` and ``:d`` differ).

    ``duplicates``: a token listed twice with different means is a bad row with ``"raise"``; with
    ``"last"`` the later row wins, as in vaderSentiment itself (its 3.3.2 lexicon has 14 such
    tokens: see ``resources/README.md``), and each override is logged. Twice with the same mean
    is always fine.
    """
    if duplicates not in ("raise", "last"):
        raise ValueError(f"duplicates must be 'raise' or 'last', got {duplicates!r}")
    path, bad = str(path), _policy(on_bad_row)
    low_high = _scale(scale)
    lexicon: dict[str, float] = {}
    seen: dict[str, tuple[int, str]] = {}
    overridden: list[str] = []
    for line, text in _lines(path, bad):
        try:
            fields = text.split("\t")
            if not text.strip():
                raise DataError(path, line, "empty line")
            if len(fields) != 4:
                raise DataError(path, line, f"expected 4 tab-separated fields, got {len(fields)}")
            if not fields[0].strip():
                raise DataError(path, line, "empty token")
            value = _valence(fields[1], low_high, path, line)
            if _add_word(lexicon, seen, fields[0], value, fields[1], path, line, duplicates):
                overridden.append(fields[0])
        except DataError as e:
            bad.handle(e)
    if overridden:
        log.info("%s: %d tokens listed twice with different means, the later row kept (as "
                 "vaderSentiment does): %s", path, len(overridden), " ".join(overridden))
    _finish(path, len(lexicon), "tokens", bad)
    return lexicon


def read_label_names(path: PathLike) -> list[str]:
    """A label-name list such as GoEmotions' ``emotions.txt``: one name per line, id = line - 1.

    Names must be non-empty and distinct; any problem raises (there is nothing to skip).
    """
    path, bad = str(path), BadRows("raise")
    names: list[str] = []
    for line, text in _lines(path, bad):
        name = text.strip()
        if not name:
            raise DataError(path, line, "empty label name")
        if name in names:
            raise DataError(path, line, f"label name {name!r} listed twice")
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# Sentences with valence or labels (and plain text)
#
# Each ``iter_*`` checks its arguments when called and returns an inner generator, so that a
# caller's mistake raises at once while the file is opened only when the first row is asked for.


def iter_vader_sentences(
    path: PathLike,
    *,
    scale: tuple[float, float] = (-4.0, 4.0),
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """:func:`read_vader_sentences`' sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)
    low_high = _scale(scale)

    def sentences() -> Iterator[Sentence]:
        count = 0
        for line, text in _lines(path, bad):
            try:
                fields = text.split("\t")
                if not text.strip():
                    raise DataError(path, line, "empty line")
                if len(fields) != 3:
                    raise DataError(path, line,
                                    f"expected 3 tab-separated fields, got {len(fields)}")
                valence = _valence(fields[1], low_high, path, line)
                sentence = Sentence(_text(fields[2], path, line), valence=valence, split=split,
                                    where=f"{path}:{line}")
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield sentence
        _finish(path, count, "sentences", bad)

    return sentences()


def read_vader_sentences(
    path: PathLike,
    *,
    scale: tuple[float, float] = (-4.0, 4.0),
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """VADER's human-rated sentence sets (``*_GroundTruth.txt``, Hutto & Gilbert 2014).

    Format: no header; 3 tab-separated fields: id, mean rating, text. The mean is over 15-99
    raters' integer ratings on -4 .. +4 (the lexicon's scale). The text is kept as written
    (a few have surrounding spaces) and may not contain a tab.
    """
    return list(iter_vader_sentences(path, scale=scale, split=split, on_bad_row=on_bad_row))


def iter_emobank(
    path: PathLike,
    *,
    scale: tuple[float, float] = (1.0, 5.0),
    column: str = "V",
    splits: Iterable[str] | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """:func:`read_emobank`'s sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)
    low_high = _scale(scale)
    wanted = None if splits is None else set(splits)
    if wanted is not None and not wanted <= set(EMOBANK_SPLITS):
        raise ValueError(f"splits must be among {EMOBANK_SPLITS}, got {sorted(wanted)}")
    # The valence column first, so that a file without it is reported as such.
    required = tuple(dict.fromkeys(("split", column, "A", "D", "text")))

    def sentences() -> Iterator[Sentence]:
        columns, rows = _csv_table(path, bad, required)
        count = 0
        for line, fields in rows:
            try:
                split = fields[columns["split"]]
                if split not in EMOBANK_SPLITS:
                    raise DataError(path, line,
                                    f"unknown split {split!r} (expected {EMOBANK_SPLITS})")
                valence, arousal, dominance = (
                    _valence(fields[columns[name]], low_high, path, line,
                             _EMOBANK_RATINGS.get(name, "valence"))
                    for name in (column, "A", "D"))
                text = _text(fields[columns["text"]], path, line)
            except DataError as e:
                bad.handle(e)
                continue
            # Rows of the splits not asked for are still checked: a bad one is still reported.
            if wanted is None or split in wanted:
                count += 1
                yield Sentence(text, valence=valence, arousal=arousal, dominance=dominance,
                               split=split, where=f"{path}:{line}")
        _finish(path, count, "sentences", bad)

    return sentences()


def read_emobank(
    path: PathLike,
    *,
    scale: tuple[float, float] = (1.0, 5.0),
    column: str = "V",
    splits: Iterable[str] | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """EmoBank (Buechel & Hahn 2017) -> sentences with valence, arousal, dominance and split.

    Format: CSV with header ``id,split,V,A,D,text``; V/A/D are means on a 1..5 SAM scale (5 = most
    positive / excited / in control). ``split`` is ``train``, ``dev`` or ``test`` (anything else
    is a bad row). Texts are CSV-quoted and may contain commas, doubled quotes and line breaks,
    so a record can span lines; ``where`` names the line it starts on. ``column`` picks V
    (default), A or D as the ``valence``; ``arousal`` is always column A and ``dominance`` column
    D, on the same ``scale``, so all three columns are required and a bad value in any of them
    makes the row bad. ``splits`` keeps only those splits (others are not errors, just not asked
    for).
    """
    return list(iter_emobank(path, scale=scale, column=column, splits=splits,
                             on_bad_row=on_bad_row))


def iter_goemotions(
    path: PathLike,
    *,
    num_labels: int = GOEMOTIONS_NUM_LABELS,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """:func:`read_goemotions`' sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)

    def sentences() -> Iterator[Sentence]:
        count = 0
        for line, text in _lines(path, bad):
            try:
                fields = text.split("\t")
                if not text.strip():
                    raise DataError(path, line, "empty line")
                if len(fields) != 3:
                    raise DataError(path, line,
                                    f"expected 3 tab-separated fields, got {len(fields)}")
                body = _text(fields[0], path, line)
                if not fields[1].strip():
                    raise DataError(path, line, "no label ids")
                label, labels = _label_ids(fields[1].split(","), num_labels, path, line)
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield Sentence(body, label=label, labels=labels, split=split, where=f"{path}:{line}")
        _finish(path, count, "sentences", bad)

    return sentences()


def read_goemotions(
    path: PathLike,
    *,
    num_labels: int = GOEMOTIONS_NUM_LABELS,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """GoEmotions (Demszky et al. 2020) ``train.tsv``/``dev.tsv`` -> multi-label sentences.

    Format: TSV without header, exactly 3 fields: text, comma-separated emotion ids (e.g.
    ``3,27``), Reddit comment id. Ids index ``emotions.txt`` (28 names, 27 = neutral; pass
    ``num_labels=len(read_label_names(...))`` for another list); an id outside
    ``0..num_labels-1``, a repeated id or an empty id list is a bad row. ``labels`` keeps the
    file's order; ``label`` is set when there is exactly one id. Texts are kept as written.
    ``split`` is stored in each record (the file does not say).
    """
    return list(iter_goemotions(path, num_labels=num_labels, split=split,
                                on_bad_row=on_bad_row))


def iter_sst(
    path: PathLike,
    *,
    num_labels: int,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """:func:`read_sst`'s sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)

    def sentences() -> Iterator[Sentence]:
        count = 0
        for line, text in _lines(path, bad):
            try:
                parts = text.split(None, 1)
                if not parts:
                    raise DataError(path, line, "empty line")
                label = _label_id(parts[0], num_labels, path, line)
                body = _text(parts[1] if len(parts) == 2 else "", path, line).strip()
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield Sentence(body, label=label, split=split, where=f"{path}:{line}")
        _finish(path, count, "sentences", bad)

    return sentences()


def read_sst(
    path: PathLike,
    *,
    num_labels: int,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """SST-2 / SST-5 in the ``stsa.binary.*`` / ``stsa.fine.*`` layout -> labelled sentences.

    Format: one example per line, ``<label> <sentence>``: the first whitespace-separated token is
    the label (SST-2: 0 negative, 1 positive, ``num_labels=2``; SST-5: 0 very negative .. 4 very
    positive, ``num_labels=5``), the rest, stripped, is the (lower-cased, tokenised) sentence.
    """
    return list(iter_sst(path, num_labels=num_labels, split=split, on_bad_row=on_bad_row))


def iter_glue_sst2(
    path: PathLike,
    *,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """:func:`read_glue_sst2`'s sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)

    def sentences() -> Iterator[Sentence]:
        lines = _lines(path, bad)
        # A header that is not UTF-8 was skipped (with "skip"): the next line is not a header.
        line, text = next(lines, (None, ""))
        if line != 1:
            raise DataError(path, 1, "the header line is not valid UTF-8")
        header = text.split("\t")
        for name in ("sentence", "label"):
            if name not in header:
                raise DataError(path, 1, f"no column {name!r} in the header {header!r}")
        text_at, label_at = header.index("sentence"), header.index("label")
        count = 0
        for line, text in lines:
            try:
                fields = text.split("\t")
                if not text.strip():
                    raise DataError(path, line, "empty line")
                if len(fields) != len(header):
                    raise DataError(path, line, f"expected {len(header)} tab-separated fields, "
                                                f"got {len(fields)}")
                label = _label_id(fields[label_at], 2, path, line)
                body = _text(fields[text_at], path, line).strip()
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield Sentence(body, label=label, split=split, where=f"{path}:{line}")
        _finish(path, count, "sentences", bad)

    return sentences()


def read_glue_sst2(
    path: PathLike,
    *,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """GLUE SST-2 ``train.tsv``/``dev.tsv`` -> labelled sentences (phrases, for train).

    Format: tab-separated with a header naming ``sentence`` and ``label`` columns (in any order;
    GLUE's unlabelled ``test.tsv`` has none and is refused); label 0 negative, 1 positive. Fields
    are not quoted (a ``"`` is just a character). Sentences are stripped (GLUE's end in a space).
    """
    return list(iter_glue_sst2(path, split=split, on_bad_row=on_bad_row))


def iter_text(
    path: PathLike,
    *,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> Iterator[Sentence]:
    """Plain text, one sentence per line -> sentences without ratings or labels, one at a time.

    Format: UTF-8 (``.gz`` decompressed), no header, each line one sentence, kept as written
    (without its line end): the simplest large unrated corpus. A blank or whitespace-only line
    is a bad row (``empty line``), so a corpus with blank separator lines needs
    ``on_bad_row="skip"``, which counts them; so is a line without a printable character
    (``empty text (only invisible characters: ...)``, :func:`printable`). ``split`` is stored
    in each record.
    """
    path, bad = str(path), _policy(on_bad_row)

    def sentences() -> Iterator[Sentence]:
        count = 0
        for line, text in _lines(path, bad):
            if not text.strip():
                bad.handle(DataError(path, line, "empty line"))
                continue
            why = empty_text(text)
            if why is not None:
                bad.handle(DataError(path, line, why))
                continue
            count += 1
            yield Sentence(text, split=split, where=f"{path}:{line}")
        _finish(path, count, "sentences", bad)

    return sentences()


def read_text(
    path: PathLike,
    *,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """:func:`iter_text`'s sentences as a list."""
    return list(iter_text(path, split=split, on_bad_row=on_bad_row))


# ---------------------------------------------------------------------------------------------
# Aspects and sentence pairs


def read_semeval14(path: PathLike, *, on_bad_row: OnBadRow = "raise") -> list[AspectExample]:
    """SemEval-2014 Task 4 aspect-term data in the ABSA-PyTorch ``*.xml.seg`` layout.

    Format: 3 lines per example: (1) the tokenised sentence with the aspect term replaced by
    ``$T$`` (exactly once), (2) the aspect term, (3) polarity ``-1``/``0``/``1``, stored as
    label 0 (negative) / 1 (neutral) / 2 (positive). ``text`` is the sentence with the stripped
    aspect put back (one aspect in the real data ends in a no-break space). A bad example is
    skipped as a whole (3 lines); ``where`` is its first line. A trailing incomplete example is
    a bad row.
    """
    path, bad = str(path), _policy(on_bad_row)
    out: list[AspectExample] = []
    for group in _groups(_raw_lines(path), 3):
        start = group[0][0]
        try:
            if len(group) < 3:
                raise DataError(path, start, f"incomplete example: {len(group)} of 3 lines")
            texts = []
            for number, raw in group:
                try:
                    texts.append(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise _utf8_error(path, number, raw, e) from None
            sentence, aspect, polarity = texts
            if sentence.count("$T$") != 1:
                raise DataError(path, start, f"the sentence has {sentence.count('$T$')} '$T$' "
                                             f"placeholders, expected 1")
            why = empty_text(aspect, "aspect term")
            if why is not None:
                raise DataError(path, start + 1, why)
            if polarity.strip() not in ("-1", "0", "1"):
                raise DataError(path, start + 2, f"polarity {polarity!r} is not -1, 0 or 1")
            text = sentence.replace("$T$", aspect.strip())
            out.append(AspectExample(text.strip(), aspect.strip(), int(polarity) + 1,
                                     where=f"{path}:{start}"))
        except DataError as e:
            bad.handle(e)
    _finish(path, len(out), "aspect examples", bad)
    return out


def read_stsb(path: PathLike, *, on_bad_row: OnBadRow = "raise") -> list[SentencePair]:
    """STS Benchmark ``sts-{train,dev,test}.csv`` -> sentence pairs with their 0..5 score.

    Format: tab-separated despite the name, no header, no quoting (sentences contain unbalanced
    ``"``). Columns: genre, file, year, id, score (0..5), sentence 1, sentence 2. Some rows carry
    extra columns after these (source attributions); they are ignored. Fewer than 7 columns, a
    score outside 0..5 or an empty sentence is a bad row. The score stays on 0..5.
    """
    path, bad = str(path), _policy(on_bad_row)
    out: list[SentencePair] = []
    for line, text in _lines(path, bad):
        try:
            fields = text.split("\t")
            if not text.strip():
                raise DataError(path, line, "empty line")
            if len(fields) < 7:
                raise DataError(path, line, f"expected at least 7 tab-separated fields, "
                                            f"got {len(fields)}")
            score = _number(fields[4], path, line, "score")
            if not 0.0 <= score <= 5.0:
                raise DataError(path, line, f"score {score:g} is outside 0..5")
            out.append(SentencePair(_text(fields[5], path, line), _text(fields[6], path, line),
                                    score, where=f"{path}:{line}"))
        except DataError as e:
            bad.handle(e)
    _finish(path, len(out), "sentence pairs", bad)
    return out


# ---------------------------------------------------------------------------------------------
# Generic sources: CSV, JSON Lines, Hugging Face datasets, tensorflow-datasets


def _generic_sentence(
    row: Any,
    get: Any,
    *,
    text: str,
    label: str | None,
    valence: str | None,
    split: str | None,
    split_column: str | None,
    scale: tuple[float, float] | None,
    num_labels: int | None,
    path: str,
    line: int,
    pair: str | None = None,
) -> Sentence:
    label_id, label_ids = (None, ())
    if label is not None:
        label_id, label_ids = _label_ids(get(row, label), num_labels, path, line)
    value = None
    if valence is not None:
        value = _valence(get(row, valence), scale, path, line)
    if split_column is not None:
        split = get(row, split_column)
        if not isinstance(split, str) or not split.strip():
            raise DataError(path, line, f"missing split name: {split!r}")
        split = split.strip()
    second = _text(get(row, pair), path, line) if pair is not None else None
    return Sentence(_text(get(row, text), path, line), valence=value, label=label_id,
                    labels=label_ids, split=split, where=f"{path}:{line}", pair=second)


def _generic_args(valence: str | None, scale: Any) -> tuple[float, float] | None:
    if valence is None:
        return None
    if scale is None:
        raise ValueError("a valence column needs scale=(low, high): the scale its values are on")
    return _scale(scale)


def iter_csv(
    path: PathLike,
    *,
    text_column: str,
    label_column: str | None = None,
    valence_column: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split_column: str | None = None,
    split: str | None = None,
    delimiter: str = ",",
    on_bad_row: OnBadRow = "raise",
    pair_column: str | None = None,
) -> Iterator[Sentence]:
    """:func:`read_csv`'s sentences one at a time, the file read as they are."""
    path, bad = str(path), _policy(on_bad_row)
    low_high = _generic_args(valence_column, scale)
    wanted = [c for c in (text_column, label_column, valence_column, split_column, pair_column)
              if c]

    def sentences() -> Iterator[Sentence]:
        columns, rows = _csv_table(path, bad, wanted, delimiter=delimiter)
        count = 0
        for line, fields in rows:
            try:
                sentence = _generic_sentence(
                    fields, lambda r, c: r[columns[c]], text=text_column, label=label_column,
                    valence=valence_column, split=split, split_column=split_column,
                    scale=low_high, num_labels=num_labels, path=path, line=line,
                    pair=pair_column)
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield sentence
        _finish(path, count, "sentences", bad)

    return sentences()


def read_csv(
    path: PathLike,
    *,
    text_column: str,
    label_column: str | None = None,
    valence_column: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split_column: str | None = None,
    split: str | None = None,
    delimiter: str = ",",
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """Any CSV (or, with ``delimiter="\\t"``, TSV) with a header -> sentences.

    Format: the first record names the columns; fields follow CSV quoting (``"`` quotes, ``""`` is
    a quote, quoted fields may span lines). ``text_column`` is required; ``label_column`` holds
    an integer class id (checked against ``num_labels`` when given); ``valence_column`` a number
    on ``scale`` (required with it); ``split_column`` a split name (else ``split`` is stored).
    """
    return list(iter_csv(
        path, text_column=text_column, label_column=label_column, valence_column=valence_column,
        scale=scale, num_labels=num_labels, split_column=split_column, split=split,
        delimiter=delimiter, on_bad_row=on_bad_row))


def _get_key(row: dict, key: str, path: str, line: int) -> Any:
    if key not in row:
        raise DataError(path, line, f"no key {key!r} (keys: {sorted(row)})")
    return row[key]


def iter_jsonl(
    path: PathLike,
    *,
    text_key: str,
    label_key: str | None = None,
    valence_key: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split_key: str | None = None,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
    pair_key: str | None = None,
) -> Iterator[Sentence]:
    """:func:`read_jsonl`'s sentences one at a time, the file read as they are; ``pair_key``
    names a second text per row (``Sentence.pair``, a pair's segment B)."""
    path, bad = str(path), _policy(on_bad_row)
    low_high = _generic_args(valence_key, scale)

    def sentences() -> Iterator[Sentence]:
        count = 0
        for line, text in _lines(path, bad):
            try:
                if not text.strip():
                    raise DataError(path, line, "empty line")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, line, f"invalid JSON: {e}") from None
                if not isinstance(row, dict):
                    raise DataError(path, line,
                                    f"expected a JSON object, got {type(row).__name__}")
                sentence = _generic_sentence(
                    row, lambda r, k, line=line: _get_key(r, k, path, line), text=text_key,
                    label=label_key, valence=valence_key, split=split, split_column=split_key,
                    scale=low_high, num_labels=num_labels, path=path, line=line, pair=pair_key)
            except DataError as e:
                bad.handle(e)
                continue
            count += 1
            yield sentence
        _finish(path, count, "sentences", bad)

    return sentences()


def read_jsonl(
    path: PathLike,
    *,
    text_key: str,
    label_key: str | None = None,
    valence_key: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split_key: str | None = None,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """JSON Lines -> sentences: one JSON object per line.

    ``text_key`` names the text; ``label_key`` an integer id or a list of ids (multi-label:
    ``labels``, with ``label`` set when the list has one id); ``valence_key`` a number on
    ``scale``; ``split_key`` a split name (else ``split`` is stored). A missing key, invalid
    JSON, a non-object or an empty line is a bad row.
    """
    return list(iter_jsonl(
        path, text_key=text_key, label_key=label_key, valence_key=valence_key, scale=scale,
        num_labels=num_labels, split_key=split_key, split=split, on_bad_row=on_bad_row))


def _class_count(feature: Any) -> int | None:
    """num_classes of a ClassLabel feature, or of the ClassLabel inside a list feature."""
    for candidate in (feature, getattr(feature, "feature", None)):
        if getattr(candidate, "num_classes", None) is not None:
            return int(candidate.num_classes)
    return None


def iter_hf(
    source: Any,
    *,
    text_column: str,
    label_column: str | None = None,
    valence_column: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
    **load_kwargs: Any,
) -> Iterator[Sentence]:
    """:func:`read_hf`'s sentences one at a time.

    The data set is loaded (memory-mapped Arrow, not read into memory) and its columns are
    checked when this is called; rows are then read 1,024 at a time as sentences are asked for.
    """
    import datasets  # a heavy import; only this reader needs it

    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        if split is None:
            raise ValueError(f"read_hf({name!r}) needs split=... to load")
        source = datasets.load_dataset(name, split=split, **load_kwargs)
    else:
        name = getattr(getattr(source, "info", None), "dataset_name", None) or "Dataset"
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in source:
            raise ValueError(f"name the split to read: split= one of {sorted(source)}")
        source = source[split]
    path, bad = f"hf:{name}[{split}]" if split else f"hf:{name}", _policy(on_bad_row)
    low_high = _generic_args(valence_column, scale)
    wanted = [c for c in (text_column, label_column, valence_column) if c]
    features = source.features or {}
    for column in wanted:
        if column not in features:
            raise DataError(path, None, f"no column {column!r} (columns: {sorted(features)})")
    if label_column is not None and num_labels is None:
        num_labels = _class_count(features[label_column])

    def sentences() -> Iterator[Sentence]:
        count = index = 0
        for batch in source.select_columns(wanted).iter(batch_size=1024):
            for row in zip(*(batch[c] for c in wanted), strict=True):
                try:
                    sentence = _generic_sentence(
                        dict(zip(wanted, row, strict=True)), lambda r, c: r[c],
                        text=text_column, label=label_column, valence=valence_column,
                        split=split, split_column=None, scale=low_high, num_labels=num_labels,
                        path=path, line=index)
                except DataError as e:
                    bad.handle(e)
                else:
                    count += 1
                    yield sentence
                index += 1
        _finish(path, count, "sentences", bad)

    return sentences()


def read_hf(
    source: Any,
    *,
    text_column: str,
    label_column: str | None = None,
    valence_column: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    split: str | None = None,
    on_bad_row: OnBadRow = "raise",
    **load_kwargs: Any,
) -> list[Sentence]:
    """A Hugging Face ``datasets.Dataset`` -> sentences.

    ``source`` is a ``Dataset``, a ``DatasetDict`` (then ``split`` picks one), or a name or path
    for ``datasets.load_dataset(source, split=split, **load_kwargs)`` (``split`` required). The
    columns are as in ``read_jsonl``; a ``ClassLabel`` label column gives ``num_labels`` when it
    is not passed. ``split`` is stored in each record. Errors name ``hf:SOURCE[SPLIT]`` and the
    0-based row index (``dataset[index]``) in place of PATH and LINE.
    """
    return list(iter_hf(
        source, text_column=text_column, label_column=label_column,
        valence_column=valence_column, scale=scale, num_labels=num_labels, split=split,
        on_bad_row=on_bad_row, **load_kwargs))


def read_tfds(
    name: str,
    *,
    split: str,
    text_key: str,
    label_key: str | None = None,
    valence_key: str | None = None,
    scale: tuple[float, float] | None = None,
    num_labels: int | None = None,
    data_dir: str | None = None,
    on_bad_row: OnBadRow = "raise",
) -> list[Sentence]:
    """A tensorflow-datasets data set (``tfds.load(name, split=split)``) -> sentences.

    Optional: needs ``pip install 'softmcl_jax[tfds]'`` (tensorflow-datasets and TensorFlow);
    without it this raises ``ImportError`` saying so. Keys are as in ``read_jsonl``; text bytes
    are decoded as UTF-8; a ``ClassLabel`` label gives ``num_labels`` when not passed. Errors
    name ``tfds:NAME[SPLIT]`` and the 0-based example index.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "read_tfds needs tensorflow-datasets, which is not installed: "
            "pip install 'softmcl_jax[tfds]' (or tensorflow-datasets and tensorflow), or use "
            "read_hf / read_csv / read_jsonl instead"
        ) from e
    path, bad = f"tfds:{name}[{split}]", _policy(on_bad_row)
    low_high = _generic_args(valence_key, scale)
    data, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True)
    if label_key is not None and num_labels is None:
        num_labels = _class_count(info.features[label_key])
    out: list[Sentence] = []
    for index, example in enumerate(tfds.as_numpy(data)):
        try:
            row = {k: v.item() if getattr(v, "ndim", None) == 0 else v for k, v in example.items()}
            out.append(_generic_sentence(
                row, lambda r, k, index=index: _get_key(r, k, path, index), text=text_key,
                label=label_key, valence=valence_key, split=split, split_column=None,
                scale=low_high, num_labels=num_labels, path=path, line=index))
        except DataError as e:
            bad.handle(e)
    _finish(path, len(out), "sentences", bad)
    return out
