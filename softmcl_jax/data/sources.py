"""From the ``data`` section of a config to training sentences and a word lexicon.

``data.source`` names a reader (``vader``, ``emobank``, ``goemotions``, ``sst``, ``text``, ``csv``,
``tsv``, ``jsonl``, ``hf``); ``data.path`` is its file (unused for the shipped ``vader``); the other
fields are the reader's arguments, all visible in the config. ``text`` is a plain UTF-8 file
(``.gz`` too) with one sentence per line and no ratings: the simplest large unrated corpus; a
blank line in it is a bad row (``data.on_bad_row``), and so is, in every source, a text without
a printable character (only zero-width, control or other invisible characters:
``readers.printable``), which would train as a row of special tokens alone.
:func:`iter_sentences` reads a source one sentence at a time, so a corpus of any size can be
prepared in bounded memory.

``data.lexicon`` is ``vader`` (shipped), ``none``, or a Warriner-format CSV path; only the last has
word arousal and dominance (``load_affect_lexicons``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import ml_collections

from softmcl_jax.data import readers
from softmcl_jax.data.records import DataError, Sentence
from softmcl_jax.data.vader import load_vader_lexicon, load_vader_sentences

log = logging.getLogger(__name__)

SOURCES = ("vader", "emobank", "goemotions", "sst", "text", "csv", "tsv", "jsonl", "hf")
# The affect dimensions a label may have (records.Sentence fields, encode_sentences arrays).
AFFECT_DIMS = ("valence", "arousal", "dominance")
# The mean-rating column of each dimension in the Warriner et al. norms (all on 1..9).
_WARRINER_COLUMNS = {"valence": "V.Mean.Sum", "arousal": "A.Mean.Sum", "dominance": "D.Mean.Sum"}


def _scale(d: ml_collections.ConfigDict) -> tuple[float, float] | None:
    return (float(d.scale_low), float(d.scale_high)) if d.get("scale_low") is not None else None


def load_sentences(d: ml_collections.ConfigDict) -> list[Sentence]:
    """The training sentences the config names, in file order (shuffling is the pipeline's)."""
    return list(iter_sentences(d))


def iter_sentences(d: ml_collections.ConfigDict) -> Iterator[Sentence]:
    """:func:`load_sentences` one sentence at a time: the same sentences in the same order, and
    the same errors. A bad config raises ``ValueError`` here; the file is read (one line at a
    time, except ``hf``'s memory-mapped rows, read in batches) as sentences are asked for, and
    its ``DataError``s raise when iteration reaches them."""
    src, path, bad = d.source, d.get("path", ""), d.get("on_bad_row", "raise")
    split = d.get("split") or None
    if src == "vader":
        return iter(load_vader_sentences(tuple(d.vader_sets)))  # shipped, 23,703 sentences
    if not path:
        raise ValueError(f"config.data.path is empty but data.source={src!r} needs a file")
    if src == "emobank":
        return readers.iter_emobank(path, splits=[split] if split else None, on_bad_row=bad)
    if src == "goemotions":
        sentences = readers.iter_goemotions(path, on_bad_row=bad)
        if d.get("single_label_only", False):
            return _single_label(sentences)
        return sentences
    if src == "sst":
        return readers.iter_sst(path, num_labels=d.num_labels, on_bad_row=bad)
    if src == "text":
        return readers.iter_text(path, split=split, on_bad_row=bad)
    if src in ("csv", "tsv"):
        return readers.iter_csv(
            path, text_column=d.text_column, label_column=d.get("label_column") or None,
            valence_column=d.get("valence_column") or None, scale=_scale(d),
            num_labels=d.get("num_labels") or None, delimiter="\t" if src == "tsv" else ",",
            on_bad_row=bad, pair_column=d.get("pair_column") or None)
    if src == "jsonl":
        return readers.iter_jsonl(
            path, text_key=d.text_column, label_key=d.get("label_column") or None,
            valence_key=d.get("valence_column") or None, scale=_scale(d),
            num_labels=d.get("num_labels") or None, on_bad_row=bad,
            pair_key=d.get("pair_column") or None)
    if src == "hf":
        return readers.iter_hf(
            path, split=split or "train", text_column=d.text_column,
            label_column=d.get("label_column") or None,
            valence_column=d.get("valence_column") or None, scale=_scale(d), on_bad_row=bad)
    raise ValueError(f"config.data.source={src!r} is not one of {SOURCES}")


def _single_label(sentences: Iterator[Sentence]) -> Iterator[Sentence]:
    # Retrofitting and LCL need one class per sentence: multi-label comments are left out.
    kept = total = 0
    for s in sentences:
        total += 1
        if s.label is not None:
            kept += 1
            yield s
    log.info("goemotions: kept %d single-label of %d comments", kept, total)


def load_lexicon(name: str, words: str = "") -> dict[str, float]:
    """``vader`` (shipped), ``none`` (no word valences) or a Warriner-format CSV path; with
    ``words`` (``config.data.lexicon_words``) only the words that file lists."""
    if name == "vader":
        return restrict(load_vader_lexicon(), words)
    if name in ("none", ""):
        return {}
    return restrict(readers.read_warriner(name), words)


def read_word_list(path: str) -> set[str]:
    """One word per line (blank lines skipped), as Warriner's splits/*.txt are."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return {w.strip() for w in f if w.strip()}
    except OSError as e:
        raise ValueError(f"config.data.lexicon_words={path!r}: cannot read it ({e})") from None


def restrict(lexicon: dict[str, float], words: str) -> dict[str, float]:
    """``lexicon`` limited to the words listed in the file ``words`` ("" keeps every word):
    training on some words of a lexicon keeps the others unseen for a word-level probe."""
    if not words:
        return lexicon
    listed = read_word_list(words)
    kept = {w: v for w, v in lexicon.items() if w in listed}
    log.info("lexicon: kept the %d of %d words listed in %s (%d listed words not in it)",
             len(kept), len(lexicon), words, len(listed - kept.keys()))
    return kept


def load_affect_lexicons(name: str, dims: Sequence[str], words: str = ""
                         ) -> dict[str, dict[str, float]]:
    """``{dim: {word: value in [0, 1]}}`` for each of ``dims`` other than ``"valence"``.

    ``dims`` are names among :data:`AFFECT_DIMS`; valence itself is :func:`load_lexicon`'s (the
    word lexicon that finds the words), so asking for it alone gives ``{}``. ``name`` is
    ``config.data.lexicon``: a Warriner-format CSV path gives arousal from ``A.Mean.Sum`` and
    dominance from ``D.Mean.Sum`` (1..9, mapped to [0, 1]). ``vader`` and ``none`` have valence
    only: asking them for another dimension raises ``ValueError``. ``words`` restricts each as
    :func:`load_lexicon` does.
    """
    unknown = [d for d in dims if d not in AFFECT_DIMS]
    if unknown:
        raise ValueError(f"unknown affect dimension(s) {unknown}: the known ones are {AFFECT_DIMS}")
    wanted = [d for d in dict.fromkeys(dims) if d != "valence"]
    if not wanted:
        return {}
    if name in ("vader", "none", ""):
        raise ValueError(
            f"config.data.lexicon={name!r} has valence only, but word-level {', '.join(wanted)} "
            "was asked for: set config.data.lexicon to a Warriner-format CSV (e.g. "
            "Ratings_Warriner_et_al.csv, with A.Mean.Sum and D.Mean.Sum columns)")
    return {d: restrict(readers.read_warriner(name, valence_column=_WARRINER_COLUMNS[d]), words)
            for d in wanted}


def check_labels(sentences: Sequence[Sentence], num_labels: int) -> None:
    """Every class id (single or multi-label) must lie in ``[0, num_labels)``, whatever the
    source: an id past the head's size would index outside its logits and train to NaN.

    Raises ``DataError`` at the first bad row, naming it and counting the others.
    """
    bad = [(s, y) for s in sentences
           for y in ((s.label,) if s.label is not None else ()) + tuple(s.labels)
           if not 0 <= y < num_labels]
    if bad:
        s, y = bad[0]
        path, _, line = s.where.rpartition(":")
        others = len({id(b) for b, _ in bad}) - 1
        raise DataError(path or "data", int(line) if line.isdigit() else None,
                        f"label {y} does not fit config.data.num_labels={num_labels} (ids 0.."
                        f"{num_labels - 1})" + (f"; {others} more rows like it" if others else ""))
