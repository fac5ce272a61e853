"""Small randomly initialised transformers checkpoints, made on the fly (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)

# name -> (config class, kwargs, masked-LM class); ELECTRA's masked LM is its generator.
CONFIGS = {
    "bert": (transformers.BertConfig, dict(vocab_size=1000, max_position_embeddings=64,
                                           type_vocab_size=2), transformers.BertForMaskedLM),
    "roberta": (transformers.RobertaConfig,
                dict(vocab_size=1000, max_position_embeddings=66, type_vocab_size=1,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2),
                transformers.RobertaForMaskedLM),
    "electra": (transformers.ElectraConfig,
                dict(vocab_size=1000, embedding_size=32, max_position_embeddings=64,
                     hidden_act="gelu_new"),
                transformers.ElectraForMaskedLM),
    "deberta-v3": (transformers.DebertaV2Config,
                   dict(vocab_size=1000, max_position_embeddings=64, relative_attention=True,
                        position_buckets=8, max_relative_positions=-1,
                        pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                        share_att_key=True, position_biased_input=False, type_vocab_size=0,
                        pad_token_id=0),
                   transformers.DebertaV2ForMaskedLM),
    "deberta-v2": (transformers.DebertaV2Config,
                   dict(vocab_size=1000, max_position_embeddings=64, relative_attention=True,
                        position_buckets=-1, max_relative_positions=8,
                        pos_att_type=["c2p", "p2c"], share_att_key=False,
                        position_biased_input=True, type_vocab_size=2, conv_kernel_size=3,
                        conv_act="gelu", embedding_size=48, pad_token_id=0),
                   transformers.DebertaV2ForMaskedLM),
}


def make_checkpoint(name: str, folder: str, *, seed: int = 0, model_cls=None,
                    **overrides) -> torch.nn.Module:
    """Save a random ``name`` model (its masked-LM class unless ``model_cls``) to ``folder``."""
    config_cls, kwargs, mlm_cls = CONFIGS[name]
    torch.manual_seed(seed)
    config = config_cls(**{**COMMON, **kwargs, **overrides})
    model = (model_cls or mlm_cls)(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that a swapped name cannot hide
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def batch(config, *, seed: int = 0, batch_size: int = 3, length: int = 16,
          lengths=(16, 11, 5)) -> dict[str, np.ndarray]:
    """A padded batch: padding positions hold pad_token_id and attention_mask 0."""
    rng = np.random.default_rng(seed)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = rng.integers(3, config.vocab_size, size=(batch_size, length)).astype(np.int32)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, pad).astype(np.int32)
    types = np.zeros_like(ids)
    if getattr(config, "type_vocab_size", 0) > 1:
        types = (np.arange(length)[None, :] >= np.asarray(lengths)[:, None] // 2).astype(np.int32)
        types = types * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_inputs(b: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}
