"""Flax encoders that load and export Hugging Face checkpoints.

    pretrained = from_pretrained("path/or/hub-id")           # BERT, RoBERTa, ELECTRA, DeBERTa-v2/v3
    hidden = pretrained.encode(pretrained.params, ids, mask)  # (B, L, H)
    save_pretrained(pretrained, params, "out/")               # transformers.AutoModel loads it
"""

from softmcl_jax.models.hf import (
    ARCHITECTURES,
    DTYPES,
    Architecture,
    CheckpointError,
    Pretrained,
    from_pretrained,
    save_pretrained,
)

__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "Architecture",
    "CheckpointError",
    "Pretrained",
    "from_pretrained",
    "save_pretrained",
]
