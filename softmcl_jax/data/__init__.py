"""Data: records and readers, word-level valence, MLM masking and the input pipeline."""

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
    "EncodeStats",
    "Encoded",
    "WordValence",
    "encode_sentences",
    "lemma_candidates",
    "lookup",
    "word_valences",
]
