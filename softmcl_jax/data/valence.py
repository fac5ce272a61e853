"""Word-level valence: sentences -> fixed-shape token arrays with a valence on sentiment words.

    arrays = encode_sentences(sentences, tokenizer, lexicon, max_len=128).arrays
    arrays["token_valence"][i, t]       # valence of the word that token t belongs to
    arrays["token_valence_mask"][i, t]  # whether token t carries one

Everything is tokenised once, up front, with the fast tokenizer's batch call; the input pipeline
then only slices these arrays.

**Words.** Our own segmentation, the same whatever the tokenizer (BERT's pre-tokenizer splits
"don't" into three words, RoBERTa's into two, a sentencepiece tokenizer into one, so their
``word_ids()`` would give every model a different notion of "word"). The text is split on
whitespace into chunks; a chunk whose lower-cased form is in the lexicon is one word (this is how
emoticons such as ``:)`` or ``<3`` are found); otherwise the chunk's words are the runs matched by
``\\w+(?:['’-]\\w+)*`` (letters/digits with inner apostrophes and hyphens, so surrounding
punctuation is not part of the word). Sub-tokens are then tied to words through the fast
tokenizer's character offsets: a token belongs to a word when their character spans overlap.

**Lookup** (see :func:`lookup`): the lower-cased word (``’`` read as ``'``); only when that is
missing, the candidates of :func:`lemma_candidates`, a small rule-based English suffix stripper
(no dictionary: nltk's WordNet cannot be downloaded offline), first hit wins; a hyphenated word
that still has no valence is looked up part by part.

**Assignment.** ``assign="first"`` puts the word's valence on its first sub-token,
``assign="all"`` on every sub-token. Words with ``|v - 0.5| < neutral_band`` are skipped (the
default band 0 skips nothing). Special tokens ([CLS], [SEP], ...) and padding never carry a
valence. A token that overlaps several valenced words (only tokenizers that merge across
punctuation make such tokens, e.g. a sentencepiece "▁self-loathing") takes the most polar one's
(largest ``|v - 0.5|``, the first on ties); the others are counted in
``EncodeStats.num_words_sharing_token``.

**Truncation.** Texts longer than ``max_len`` tokens (special tokens included) are cut by the
tokenizer; the valences of words that fall past the cut are dropped with their tokens. No row is
dropped: :class:`EncodeStats` counts the truncated examples and the valenced words lost, and
``Encoded.truncated`` says which examples.

**Arousal and dominance.** Words are found with the valence ``lexicon`` alone; ``affect_lexicons``
(e.g. ``sources.load_affect_lexicons``) only add, on each token that carries a word's valence, the
arousal / dominance of the same lexicon entry (:attr:`WordValence.entry`), -1.0 where that lexicon
has no such entry. So the tokens of a word-level term over valence and arousal are
``token_valence_mask & (token_arousal >= 0)``.

**Absent supervision.** ``labels`` is -1 where a sentence has no single label;
``sentence_valence`` is -1.0 where it has no valence (``sentence_valence_mask`` False), likewise
``sentence_arousal`` / ``sentence_dominance`` (no mask arrays: ``>= 0`` is the mask), and
``token_arousal`` / ``token_dominance`` are -1.0 on every token without a value. A finite
sentinel rather than NaN, because a NaN that a loss masks out with ``where`` still poisons the
gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from softmcl_jax.data.records import Sentence

log = logging.getLogger(__name__)

ASSIGN_MODES = ("first", "all")
# The dimensions besides valence that encode_sentences emits (sentence_* and token_* arrays).
AFFECT_ARRAY_DIMS = ("arousal", "dominance")

_CHUNK = re.compile(r"\S+")
_WORD = re.compile(r"\w+(?:['’\-]\w+)*")
_VOWELS = frozenset("aeiouy")
# Stems shorter than this are never tried: "us" -> "u", "bed" -> "b" would only find noise.
_MIN_STEM = 3


@dataclasses.dataclass(frozen=True)
class WordValence:
    """A word found in a text: character span [start, end), the lexicon entry hit, its valence."""

    start: int
    end: int
    entry: str
    valence: float
    lemma: bool  # True when found through lemma_candidates, not as written


@dataclasses.dataclass
class EncodeStats:
    """What encoding did to the data; nothing is dropped without being counted here."""

    num_sentences: int = 0
    num_truncated: int = 0  # examples with tokens cut at max_len
    num_words_valenced: int = 0  # words with a lexicon valence outside the neutral band
    num_words_lemma: int = 0  # ... of which found through the suffix stripper
    num_words_neutral: int = 0  # words skipped because |v - 0.5| < neutral_band
    num_words_truncated: int = 0  # valenced words that fell past the max_len cut
    num_words_sharing_token: int = 0  # words whose only tokens carry another word's valence
    num_tokens_valenced: int = 0  # tokens with token_valence_mask set
    num_sentences_without_valenced_word: int = 0

    def summary(self) -> str:
        return (
            f"{self.num_sentences} sentences, {self.num_truncated} truncated at max_len "
            f"({self.num_words_truncated} valenced words lost); {self.num_words_valenced} "
            f"valenced words ({self.num_words_lemma} via lemma fallback, "
            f"{self.num_words_neutral} more skipped as neutral, {self.num_words_sharing_token} "
            f"sharing a token with a more polar word) on {self.num_tokens_valenced} tokens; "
            f"{self.num_sentences_without_valenced_word} sentences without any")


@dataclasses.dataclass
class Encoded:
    """Encoded sentences: ``arrays`` (the pipeline's input) plus what encoding cost.

    ``arrays`` (N examples, L = max_len):
      input_ids (N, L) int32, attention_mask (N, L) int32,
      special_tokens_mask (N, L) bool: special tokens and padding (never masked for MLM),
      token_valence (N, L) float32 (0 where no valence), token_valence_mask (N, L) bool,
      sentence_valence (N,) float32 (-1 where absent), sentence_valence_mask (N,) bool,
      sentence_arousal, sentence_dominance (N,) float32 (-1 where absent),
      token_arousal, token_dominance (N, L) float32: the ``affect_lexicons`` value of the word on
        tokens with token_valence_mask set, -1 where that lexicon lacks it and on all other tokens,
      labels (N,) int32 (-1 where absent),
      multi_labels (N, num_labels) int32 multi-hot, only when ``num_labels`` is given.
    """

    arrays: dict[str, np.ndarray]
    stats: EncodeStats
    truncated: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.truncated)


def lemma_candidates(word: str) -> list[str]:
    """Base forms to try, in order, for an English inflected form (lower-case in, lower-case out).

    Rules (each only if the remaining stem has >= 3 letters): possessive ``'s``; ``-ies/-ied/
    -ier/-iest/-ily`` -> ``-y`` (worries, worried, happier, happiest, happily -> happy);
    ``-es``, ``-s`` (not ``-ss``); ``-ed`` / ``-d`` / doubled consonant (stopped -> stop,
    loved -> love); ``-ing`` / ``-ing`` -> ``-e`` / doubled consonant (loving -> love,
    hugging -> hug); ``-er``/``-est`` likewise (greater, nicer, bigger); ``-ly`` and ``-bly`` ->
    ``-ble`` (sadly -> sad, horribly -> horrible). A heuristic: it can hit a wrong entry
    ("goods" -> "good"), which is why it is tried only when the word itself is missing.
    """
    out: list[str] = []

    def add(stem: str, suffix: str = "") -> None:
        if len(stem) >= _MIN_STEM and stem + suffix != word:
            out.append(stem + suffix)

    def undouble(stem: str) -> None:
        # hugging -> hug, stopped -> stop, bigger -> big
        if len(stem) >= 2 and stem[-1] == stem[-2] and stem[-1] not in _VOWELS:
            add(stem[:-1])

    w = word
    for apos in ("'s", "’s"):
        if w.endswith(apos):
            add(w[: -len(apos)])
    for suf in ("ies", "ied", "ier", "iest", "ily"):
        if w.endswith(suf):
            add(w[: -len(suf)], "y")
    if w.endswith("es"):
        add(w[:-2])
    if w.endswith("s") and not w.endswith("ss"):
        add(w[:-1])
    for suf in ("ed", "er", "est"):
        if w.endswith(suf):
            stem = w[: -len(suf)]
            add(stem)
            add(stem, "e")
            undouble(stem)
    if w.endswith("ing"):
        stem = w[:-3]
        add(stem)
        add(stem, "e")
        undouble(stem)
    if w.endswith("bly"):
        add(w[:-3], "ble")
    if w.endswith("ly"):
        add(w[:-2])
    return list(dict.fromkeys(out))  # first occurrence wins, order kept


# Most words of a corpus are missing from a sentiment lexicon and recur: cache their candidates.
_lemma_candidates = functools.lru_cache(maxsize=1 << 16)(lambda w: tuple(lemma_candidates(w)))


def lookup(word: str, lexicon: Mapping[str, float], *, lemma: bool = True
           ) -> tuple[str, float, bool] | None:
    """(entry, valence, via_lemma) for a word, or None. ``lexicon`` keys must be lower-case."""
    key = word.lower().replace("’", "'")
    v = lexicon.get(key)
    if v is not None:
        return key, v, False
    if lemma:
        for cand in _lemma_candidates(key):
            v = lexicon.get(cand)
            if v is not None:
                return cand, v, True
    return None


def word_valences(text: str, lexicon: Mapping[str, float], *, neutral_band: float = 0.0,
                  lemma: bool = True, stats: EncodeStats | None = None) -> list[WordValence]:
    """The words of ``text`` that have a valence outside the neutral band, in text order."""
    found: list[WordValence] = []

    def take(start: int, end: int, hit: tuple[str, float, bool]) -> None:
        entry, v, via_lemma = hit
        if abs(v - 0.5) < neutral_band:
            if stats is not None:
                stats.num_words_neutral += 1
            return
        found.append(WordValence(start, end, entry, float(v), via_lemma))

    for chunk in _CHUNK.finditer(text):
        # Whole chunk first: emoticons (":)", ":-(") are chunks of punctuation.
        hit = lexicon.get(chunk.group().lower())
        if hit is not None:
            take(chunk.start(), chunk.end(), (chunk.group().lower(), hit, False))
            continue
        base = chunk.start()
        for m in _WORD.finditer(chunk.group()):
            hit = lookup(m.group(), lexicon, lemma=lemma)
            if hit is not None:
                take(base + m.start(), base + m.end(), hit)
            elif "-" in m.group():
                # "self-loathing": no entry for the compound, so each part on its own.
                offset = base + m.start()
                for part in re.finditer(r"[^-]+", m.group()):
                    hit = lookup(part.group(), lexicon, lemma=lemma)
                    if hit is not None:
                        take(offset + part.start(), offset + part.end(), hit)
    return found


def _check_lexicon(lexicon: Mapping[str, float], what: str = "valence") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in lexicon.items():
        v = float(v)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"lexicon {what} of {k!r} is {v}; {what} values must be in [0, 1]")
        # Affect lexicons are keyed the same way, so that a WordValence.entry finds their values.
        out.setdefault(k.lower().replace("’", "'"), v)
    return out


def _check_affect_lexicons(affect_lexicons: Mapping[str, Mapping[str, float]] | None
                           ) -> dict[str, dict[str, float]]:
    affect_lexicons = affect_lexicons or {}
    unknown = sorted(set(affect_lexicons) - set(AFFECT_ARRAY_DIMS))
    if unknown:
        raise ValueError(f"affect_lexicons has {unknown}; its keys are among {AFFECT_ARRAY_DIMS} "
                         "(word valences come from `lexicon`)")
    return {d: _check_lexicon(lex, d) for d, lex in affect_lexicons.items()}


def encode_sentences(
    sentences: Sequence[Sentence],
    tokenizer: Any,
    lexicon: Mapping[str, float],
    *,
    max_len: int = 128,
    assign: str = "first",
    neutral_band: float = 0.0,
    lemma: bool = True,
    num_labels: int | None = None,
    affect_lexicons: Mapping[str, Mapping[str, float]] | None = None,
) -> Encoded:
    """Tokenise ``sentences`` once and attach word valences; see the module docstring.

    Args:
      sentences: records from the readers (``text``, optional ``valence``/``label``/``labels``).
      tokenizer: a transformers *fast* tokenizer (character offsets are needed).
      lexicon: word -> valence in [0, 1] (e.g. ``load_vader_lexicon()``); keys are lower-cased.
      max_len: every row is padded or truncated to this many tokens, special tokens included.
      assign: "first" (valence on a word's first sub-token) or "all" (on all of them).
      neutral_band: skip words with ``|v - 0.5| < neutral_band``.
      lemma: try :func:`lemma_candidates` when a word is not in the lexicon as written.
      num_labels: if given, also emit ``multi_labels`` (N, num_labels) from ``Sentence.labels``
        (or from ``Sentence.label`` where ``labels`` is empty).
      affect_lexicons: optional ``{"arousal": {word: a}, "dominance": {word: d}}`` (either key),
        values in [0, 1], keyed like ``lexicon``'s entries; they fill ``token_arousal`` /
        ``token_dominance`` on the valenced tokens and find no words of their own.
    Returns:
      :class:`Encoded` with numpy arrays of fixed shape and the encoding statistics.
    """
    if assign not in ASSIGN_MODES:
        raise ValueError(f"assign must be one of {ASSIGN_MODES}, got {assign!r}")
    if not 0.0 <= neutral_band <= 0.5:
        raise ValueError(f"neutral_band must be in [0, 0.5], got {neutral_band}")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encode_sentences needs a fast tokenizer (character offsets); got "
                        f"{type(tokenizer).__name__}")
    lex = _check_lexicon(lexicon)
    affect = _check_affect_lexicons(affect_lexicons)
    n = len(sentences)
    enc = tokenizer(
        [s.text for s in sentences], max_length=max_len, truncation=True, padding="max_length",
        return_offsets_mapping=True, return_special_tokens_mask=True, return_attention_mask=True,
        return_token_type_ids=False)
    # Lists to arrays here: transformers' return_tensors="np" flattens element by element in
    # Python, 10x slower than the tokenisation itself.
    input_ids = np.asarray(enc["input_ids"], np.int32).reshape(n, max_len)
    attention = np.asarray(enc["attention_mask"], np.int32).reshape(n, max_len)
    offsets = np.asarray(enc["offset_mapping"], np.int64).reshape(n, max_len, 2)
    special = (np.asarray(enc["special_tokens_mask"]).reshape(n, max_len) > 0) | (attention == 0)
    # The Rust encoding keeps what truncation cut off, whether or not it was asked to return it.
    truncated = np.array([bool(e.overflowing) for e in enc.encodings], dtype=bool)
    # Tokens that can carry a word's valence: real, non-special, with a non-empty span.
    eligible = ~special & (offsets[..., 1] > offsets[..., 0])

    stats = EncodeStats(num_sentences=n, num_truncated=int(truncated.sum()))
    token_valence = np.zeros((n, max_len), np.float32)
    token_mask = np.zeros((n, max_len), bool)
    token_affect = {d: np.full((n, max_len), -1.0, np.float32) for d in AFFECT_ARRAY_DIMS}
    for i, s in enumerate(sentences):
        words = word_valences(s.text, lex, neutral_band=neutral_band, lemma=lemma, stats=stats)
        if not words:
            stats.num_sentences_without_valenced_word += 1
            continue
        ws = np.array([w.start for w in words])
        we = np.array([w.end for w in words])
        wv = np.array([w.valence for w in words], np.float32)
        stats.num_words_valenced += len(words)
        stats.num_words_lemma += sum(w.lemma for w in words)
        ts, te = offsets[i, :, 0], offsets[i, :, 1]
        # Words are disjoint and sorted: the words a token overlaps are j0..j1, the first one
        # ending after the token starts to the last one starting before it ends.
        j0 = np.searchsorted(we, ts, side="right")
        j1 = np.searchsorted(ws, te, side="left") - 1
        pos = np.flatnonzero(eligible[i] & (j0 <= j1))
        j = j0[pos]
        covered = np.zeros(len(words), bool)
        covered[j] = True
        for k in np.flatnonzero(j1[pos] > j0[pos]):
            # One token over several words ("▁self-loathing"): the most polar one.
            lo, hi = j0[pos[k]], j1[pos[k]] + 1
            covered[lo:hi] = True
            j[k] = lo + int(np.argmax(np.abs(wv[lo:hi] - 0.5)))
        if assign == "first":
            _, first = np.unique(j, return_index=True)
            pos, j = pos[first], j[first]
        token_valence[i, pos] = wv[j]
        token_mask[i, pos] = True
        for d, values in affect.items():
            wa = np.array([values.get(w.entry, -1.0) for w in words], np.float32)
            token_affect[d][i, pos] = wa[j]
        stats.num_words_sharing_token += int(covered.sum()) - len(np.unique(j))
        lost = len(words) - int(covered.sum())
        if lost and not truncated[i]:
            # Should not happen with offset-reporting tokenizers; say so rather than hide it.
            log.warning("%s: %d valenced word(s) matched no token", s.where or f"#{i}", lost)
        stats.num_words_truncated += lost if truncated[i] else 0
    stats.num_tokens_valenced = int(token_mask.sum())

    sentence_valence = np.full(n, -1.0, np.float32)
    sentence_affect = {d: np.full(n, -1.0, np.float32) for d in AFFECT_ARRAY_DIMS}
    labels = np.full(n, -1, np.int32)
    for i, s in enumerate(sentences):
        for d, out in (("valence", sentence_valence), *sentence_affect.items()):
            value = getattr(s, d)
            if value is not None:
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{s.where or f'sentence #{i}'}: {d} {value} is not in "
                                     "[0, 1]")
                out[i] = value
        if s.label is not None:
            labels[i] = s.label
    arrays = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "special_tokens_mask": special,
        "token_valence": token_valence,
        "token_valence_mask": token_mask,
        "sentence_valence": sentence_valence,
        "sentence_valence_mask": sentence_valence >= 0,
        **{f"sentence_{d}": sentence_affect[d] for d in AFFECT_ARRAY_DIMS},
        **{f"token_{d}": token_affect[d] for d in AFFECT_ARRAY_DIMS},
        "labels": labels,
    }
    if num_labels is not None:
        multi = np.zeros((n, num_labels), np.int32)
        for i, s in enumerate(sentences):
            ids = s.labels or ((s.label,) if s.label is not None else ())
            for c in ids:
                if not 0 <= c < num_labels:
                    raise ValueError(f"{s.where or f'sentence #{i}'}: label {c} is not in "
                                     f"[0, {num_labels})")
                multi[i, c] = 1
        arrays["multi_labels"] = multi
    if stats.num_truncated:
        log.info("encode_sentences: %s", stats.summary())
    return Encoded(arrays=arrays, stats=stats, truncated=truncated)
