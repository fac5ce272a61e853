"""Where each task's data lies in a data folder, and which split is scored.

The folder has the layout of the project's ``../shared/data`` (file names and formats as there):

=====================  ======================================================================
task                   files (``[..]``: optional; the test split is used when present)
=====================  ======================================================================
sst2, sst2_fewshot,    ``sst2/stsa.binary.train``, ``.dev``, ``[.test]``
sst2_finetune
sst5 (and variants)    ``sst5/stsa.fine.train``, ``.dev``, ``[.test]``
emobank                ``emobank/emobank.csv`` (column ``split``: train / dev / [test])
warriner               ``warriner_vad/Ratings_Warriner_et_al.csv`` and
                       ``warriner_vad/splits/train.txt``, ``dev.txt``, ``[test.txt]`` (words)
semeval14_laptops,     ``semeval14_absa/{Laptops,Restaurants}_Train.xml.seg`` and
semeval14_restaurants  ``[..._Test.xml.seg]`` (or ABSA-PyTorch's ``..._Test_Gold.xml.seg``)
goemotions             ``goemotions/dev.tsv``, ``[test.tsv]``, ``[emotions.txt]``
stsb                   ``stsb/sts-dev.csv``, ``[sts-test.csv]``
=====================  ======================================================================

Split protocol, stated once for every task:

* The **evaluation split** is test when the folder has one, else dev; results say which.
* Supervised probes fit on train and choose their regularisation on a **selection split**: dev
  when the test split is scored; otherwise (dev is scored) a held-out 10% of train.
* SemEval-2014 ships no dev split: 15% of Train becomes dev. Held-out parts are chosen by
  SHA-256 of the *text* (the word, for Warriner), so every copy of a text lands on one side:
  SemEval repeats a sentence once per aspect term, and a split by example would put the same
  sentence on both sides.
* ``max_examples`` caps each split read from disk (before any held-out part is carved from
  train, after SemEval's dev is carved from Train), keeping a fixed SHA-256-ranked subset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from softmcl_jax.data.readers import (
    read_emobank,
    read_goemotions,
    read_label_names,
    read_semeval14,
    read_sst,
    read_stsb,
    read_warriner,
)
from softmcl_jax.evaluation.probe import probe_split

log = logging.getLogger(__name__)

SELECT_FRACTION = 0.10  # of train, held out for model selection when dev is the scored split
ABSA_DEV_FRACTION = 0.15  # of SemEval Train, as dev (SemEval-2014 has none)
SST_FILES = {"sst2": ("sst2", "stsa.binary", 2), "sst5": ("sst5", "stsa.fine", 5)}
ABSA_DOMAINS = {"semeval14_laptops": "Laptops", "semeval14_restaurants": "Restaurants"}


class MissingData(FileNotFoundError):
    """A task's files are not in the data folder; the message names them."""


@dataclasses.dataclass(frozen=True)
class WordItem:
    text: str  # the word
    valence: float


@dataclasses.dataclass(frozen=True)
class AspectItem:
    text: str  # the sentence with the aspect term in place
    aspect: str
    label: int  # 0 negative, 1 neutral, 2 positive
    span: tuple[int, int]  # character offsets of *this* aspect term in text


@dataclasses.dataclass
class TaskData:
    """One task's examples by role. ``train``/``select`` are empty for unsupervised tasks."""

    eval_split: str  # "test" | "dev"
    eval: list[Any]
    train: list[Any] = dataclasses.field(default_factory=list)
    select: list[Any] = dataclasses.field(default_factory=list)
    select_name: str = ""  # what the selection split is, for the report


# --- generic helpers -------------------------------------------------------------------------

def cap(items: Sequence[Any], max_examples: int | None) -> list[Any]:
    """At most ``max_examples`` items: a fixed SHA-256-ranked subset, in file order."""
    items = list(items)
    if max_examples is None or len(items) <= max_examples:
        return items
    _, keep = probe_split(len(items), 0, max_examples, seed=0)
    return [items[i] for i in keep]


def _rank(key: str, salt: str) -> bytes:
    return hashlib.sha256(f"softmcl-eval:{salt}:{key}".encode()).digest()


def holdout(items: Sequence[Any], key: Callable[[Any], str], fraction: float, salt: str
            ) -> tuple[list[Any], list[Any]]:
    """(kept, held out): ``round(fraction * distinct keys)`` keys (at least 1) held out, ranked
    by SHA-256 of the key, with all items sharing a key on the same side. File order is kept."""
    keys = list(dict.fromkeys(key(x) for x in items))
    if len(keys) < 2:
        raise ValueError(f"cannot hold out part of {len(items)} items with {len(keys)} "
                         f"distinct texts")
    n_held = min(len(keys) - 1, max(1, round(fraction * len(keys))))
    held_keys = set(sorted(keys, key=lambda k: _rank(k, salt))[:n_held])
    kept = [x for x in items if key(x) not in held_keys]
    held = [x for x in items if key(x) in held_keys]
    return kept, held


def supervised(train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any] | None,
               key: Callable[[Any], str], max_examples: int | None, salt: str) -> TaskData:
    """The split protocol of the module docstring for a task with train and dev (and test)."""
    train, dev = cap(train, max_examples), cap(dev, max_examples)
    if test is not None:
        return TaskData("test", cap(test, max_examples), train, dev, "dev")
    fit, select = holdout(train, key, SELECT_FRACTION, f"select:{salt}")
    return TaskData("dev", dev, fit, select,
                    f"{SELECT_FRACTION:.0%} of train held out")


def _need(*paths: str) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MissingData("missing: " + ", ".join(missing))


def _optional(path: str) -> str | None:
    return path if os.path.exists(path) else None


# --- per data set ----------------------------------------------------------------------------

def load_sst(data_dir: str, name: str, max_examples: int | None) -> tuple[TaskData, int]:
    """SST-2 / SST-5 sentences (``Sentence``, label set) and the number of classes."""
    folder, stem, num_labels = SST_FILES[name]
    base = os.path.join(data_dir, folder, stem)
    _need(base + ".train", base + ".dev")
    test = _optional(base + ".test")

    def read(path: str, split: str) -> list[Any]:
        return read_sst(path, num_labels=num_labels, split=split)

    data = supervised(read(base + ".train", "train"), read(base + ".dev", "dev"),
                      read(test, "test") if test else None, lambda s: s.text, max_examples, name)
    return data, num_labels


def load_emobank(data_dir: str, max_examples: int | None) -> TaskData:
    path = os.path.join(data_dir, "emobank", "emobank.csv")
    _need(path)
    rows = read_emobank(path)
    by = {s: [r for r in rows if r.split == s] for s in ("train", "dev", "test")}
    if not by["train"] or not by["dev"]:
        raise MissingData(f"{path}: needs rows with split=train and split=dev")
    return supervised(by["train"], by["dev"], by["test"] or None, lambda s: s.text,
                      max_examples, "emobank")


def _word_list(path: str, lexicon: dict[str, float]) -> list[WordItem]:
    with open(path, encoding="utf-8-sig") as f:
        words = [w.strip() for w in f if w.strip()]
    unknown = [w for w in words if w not in lexicon]
    if unknown:
        log.warning("%s: %d words not in the norms, skipped (first: %r)", path, len(unknown),
                    unknown[0])
    return [WordItem(w, lexicon[w]) for w in dict.fromkeys(words) if w in lexicon]


def load_warriner(data_dir: str, max_examples: int | None) -> TaskData:
    folder = os.path.join(data_dir, "warriner_vad")
    norms = os.path.join(folder, "Ratings_Warriner_et_al.csv")
    splits = os.path.join(folder, "splits")
    _need(norms, os.path.join(splits, "train.txt"), os.path.join(splits, "dev.txt"))
    lexicon = read_warriner(norms)
    test = _optional(os.path.join(splits, "test.txt"))
    return supervised(_word_list(os.path.join(splits, "train.txt"), lexicon),
                      _word_list(os.path.join(splits, "dev.txt"), lexicon),
                      _word_list(test, lexicon) if test else None, lambda w: w.text,
                      max_examples, "warriner")


@functools.lru_cache(maxsize=8)
def _raw_lines(path: str) -> tuple[str, ...]:
    with open(path, encoding="utf-8-sig") as f:
        return tuple(line.rstrip("\r\n") for line in f)


def aspect_span(text: str, aspect: str, where: str) -> tuple[int, int]:
    """Character span of the aspect term that the example is about.

    The reader puts the term back in place of ``$T$``, so a term that occurs twice in the
    sentence ("the battery ... battery life") is ambiguous in ``text`` alone (135 of the 2,328
    laptop examples). The ``$T$`` line named by ``where`` ("PATH:LINE") gives the occurrence;
    without it, the first occurrence is used.
    """
    path, _, line = where.rpartition(":")
    if path and line.isdigit() and os.path.exists(path):
        lines = _raw_lines(path)
        number = int(line)
        if 1 <= number <= len(lines) and lines[number - 1].count("$T$") == 1:
            raw = lines[number - 1]
            start = raw.index("$T$") - (len(raw) - len(raw.lstrip()))
            if text[start:start + len(aspect)] == aspect:
                return start, start + len(aspect)
    start = text.find(aspect)
    if start < 0:
        raise ValueError(f"{where}: aspect {aspect!r} is not in {text!r}")
    return start, start + len(aspect)


def _aspects(path: str) -> list[AspectItem]:
    return [AspectItem(e.text, e.aspect, e.label, aspect_span(e.text, e.aspect, e.where))
            for e in read_semeval14(path)]


def load_semeval14(data_dir: str, task: str, max_examples: int | None) -> TaskData:
    domain = ABSA_DOMAINS[task]
    folder = os.path.join(data_dir, "semeval14_absa")
    train_path = os.path.join(folder, f"{domain}_Train.xml.seg")
    _need(train_path)
    test_path = (_optional(os.path.join(folder, f"{domain}_Test.xml.seg"))
                 or _optional(os.path.join(folder, f"{domain}_Test_Gold.xml.seg")))
    train, dev = holdout(_aspects(train_path), lambda a: a.text, ABSA_DEV_FRACTION,
                         f"dev:{task}")
    return supervised(train, dev, _aspects(test_path) if test_path else None,
                      lambda a: a.text, max_examples, task)


def _eval_only(dev: str, test: str | None, read: Callable[[str, str], list[Any]],
               max_examples: int | None) -> TaskData:
    split, path = ("test", test) if test else ("dev", dev)
    return TaskData(split, cap(read(path, split), max_examples))


def load_goemotions(data_dir: str, max_examples: int | None, drop_neutral: bool = False
                    ) -> TaskData:
    """Single-label comments of the scored split (``Sentence.label`` set)."""
    folder = os.path.join(data_dir, "goemotions")
    dev = os.path.join(folder, "dev.tsv")
    _need(dev)
    names_path = _optional(os.path.join(folder, "emotions.txt"))
    names = read_label_names(names_path) if names_path else None
    neutral = names.index("neutral") if names and "neutral" in names else 27

    def read(path: str, split: str) -> list[Any]:
        kw = {"num_labels": len(names)} if names else {}
        rows = [s for s in read_goemotions(path, split=split, **kw) if s.label is not None]
        return [s for s in rows if not (drop_neutral and s.label == neutral)]

    return _eval_only(dev, _optional(os.path.join(folder, "test.tsv")), read, max_examples)


def load_stsb(data_dir: str, max_examples: int | None) -> TaskData:
    folder = os.path.join(data_dir, "stsb")
    dev = os.path.join(folder, "sts-dev.csv")
    _need(dev)
    return _eval_only(dev, _optional(os.path.join(folder, "sts-test.csv")),
                      lambda path, split: read_stsb(path), max_examples)
