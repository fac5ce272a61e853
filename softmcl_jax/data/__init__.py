"""Data: records and readers, word-level valence, MLM masking and the input pipeline."""

from softmcl_jax.data.masking import IGNORE_INDEX, MaskingConfig, mask_tokens
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
    "WordValence",
    "encode_sentences",
    "lemma_candidates",
    "lookup",
    "mask_tokens",
    "word_valences",
]
