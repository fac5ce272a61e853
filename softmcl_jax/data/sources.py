"""From the ``data`` section of a config to training sentences and a word lexicon.

``data.source`` names a reader (``vader``, ``emobank``, ``goemotions``, ``sst``, ``csv``, ``jsonl``,
``hf``); ``data.path`` is its file (unused for the shipped ``vader``); the other fields are the
reader's arguments, all visible in the config. ``data.lexicon`` is ``vader`` (shipped), ``none``, or
a Warriner-format CSV path.
"""

from __future__ import annotations

import logging

import ml_collections

from softmcl_jax.data import readers
from softmcl_jax.data.records import Sentence
from softmcl_jax.data.vader import load_vader_lexicon, load_vader_sentences

log = logging.getLogger(__name__)


def _scale(d: ml_collections.ConfigDict) -> tuple[float, float] | None:
    return (float(d.scale_low), float(d.scale_high)) if d.get("scale_low") is not None else None


def load_sentences(d: ml_collections.ConfigDict) -> list[Sentence]:
    """The training sentences the config names, in file order (shuffling is the pipeline's)."""
    src, path, bad = d.source, d.get("path", ""), d.get("on_bad_row", "raise")
    split = d.get("split") or None
    if src == "vader":
        return load_vader_sentences(tuple(d.vader_sets))
    if not path:
        raise ValueError(f"config.data.path is empty but data.source={src!r} needs a file")
    if src == "emobank":
        return readers.read_emobank(path, splits=[split] if split else None, on_bad_row=bad)
    if src == "goemotions":
        sentences = readers.read_goemotions(path, on_bad_row=bad)
        if d.get("single_label_only", False):
            # Retrofitting and LCL need one class per sentence: multi-label comments are left out.
            kept = [s for s in sentences if s.label is not None]
            log.info("goemotions: kept %d single-label of %d comments", len(kept),
                     len(sentences))
            sentences = kept
        return sentences
    if src == "sst":
        return readers.read_sst(path, num_labels=d.num_labels, on_bad_row=bad)
    if src in ("csv", "tsv"):
        return readers.read_csv(
            path, text_column=d.text_column, label_column=d.get("label_column") or None,
            valence_column=d.get("valence_column") or None, scale=_scale(d),
            num_labels=d.get("num_labels") or None, delimiter="\t" if src == "tsv" else ",",
            on_bad_row=bad)
    if src == "jsonl":
        return readers.read_jsonl(
            path, text_key=d.text_column, label_key=d.get("label_column") or None,
            valence_key=d.get("valence_column") or None, scale=_scale(d),
            num_labels=d.get("num_labels") or None, on_bad_row=bad)
    if src == "hf":
        return readers.read_hf(
            path, split=split or "train", text_column=d.text_column,
            label_column=d.get("label_column") or None,
            valence_column=d.get("valence_column") or None, scale=_scale(d),
            on_bad_row=bad)
    raise ValueError(f"config.data.source={src!r} is not one of vader, emobank, goemotions, sst, "
                     "csv, tsv, jsonl, hf")


def load_lexicon(name: str) -> dict[str, float]:
    """``vader`` (shipped), ``none`` (no word valences) or a Warriner-format CSV path."""
    if name == "vader":
        return load_vader_lexicon()
    if name in ("none", ""):
        return {}
    return readers.read_warriner(name)
