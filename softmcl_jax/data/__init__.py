"""Data: records and readers, word-level valence, stored rows, MLM masking and the input pipeline
(prepared folders read through Grain, and their mixtures)."""

from softmcl_jax.data.masking import IGNORE_INDEX, MaskingConfig, mask_tokens
from softmcl_jax.data.mixture import Mixture
from softmcl_jax.data.packing import (
    choose_rows,
    choose_rows_from_histograms,
    pack,
    pack_one_per_row,
    segment_positions,
    unpack,
)
from softmcl_jax.data.pipeline import Pipeline, epoch_permutation
from softmcl_jax.data.readers import (
    read_csv,
    read_emobank,
    read_glue_sst2,
    read_goemotions,
    read_hf,
    read_jsonl,
    read_label_names,
    read_semeval14,
    read_sst,
    read_stsb,
    read_tfds,
    read_vader_lexicon,
    read_vader_sentences,
    read_warriner,
)
from softmcl_jax.data.records import (
    AspectExample,
    BadRows,
    DataError,
    Sentence,
    SentencePair,
    scale_to_unit,
)
from softmcl_jax.data.vader import load_vader_lexicon, load_vader_sentences
from softmcl_jax.data.valence import (
    Encoded,
    EncodeStats,
    WordValence,
    encode_sentences,
    lemma_candidates,
    lookup,
    word_valences,
)

__all__ = [
    "IGNORE_INDEX",
    "EncodeStats",
    "Encoded",
    "MaskingConfig",
    "Pipeline",
    "Mixture",
    "WordValence",
    "choose_rows",
    "choose_rows_from_histograms",
    "encode_sentences",
    "epoch_permutation",
    "lemma_candidates",
    "lookup",
    "mask_tokens",
    "pack",
    "pack_one_per_row",
    "segment_positions",
    "unpack",
    "word_valences",
    # records, readers and the shipped VADER data
    "AspectExample",
    "BadRows",
    "DataError",
    "Sentence",
    "SentencePair",
    "scale_to_unit",
    "load_vader_lexicon",
    "load_vader_sentences",
    "read_csv",
    "read_emobank",
    "read_glue_sst2",
    "read_goemotions",
    "read_hf",
    "read_jsonl",
    "read_label_names",
    "read_semeval14",
    "read_sst",
    "read_stsb",
    "read_tfds",
    "read_vader_lexicon",
    "read_vader_sentences",
    "read_warriner",
]
