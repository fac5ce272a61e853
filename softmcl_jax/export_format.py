"""The sentence-transformers files of an export folder: writing them, and reading a folder's.

An export is a transformers folder (``config.json``, ``model.safetensors``, tokenizer files) plus
the files that make ``SentenceTransformer(folder)`` rebuild *our* sentence vector instead of
guessing one (without ``modules.json`` it logs "No sentence-transformers model found" and falls
back to mean pooling, which is wrong for a CLS-pooled run):

    modules.json                      Transformer (path "") -> Pooling -> [Normalize]
    sentence_bert_config.json         max_seq_length = the run's model.max_len
    1_Pooling/config.json             mean or CLS, as model.pooling
    config_sentence_transformers.json similarity function (cosine)

The files use the layout sentence-transformers has read since version 2 (``models.Transformer``
type names, ``pooling_mode_*`` booleans), which version 6 still loads without a warning, so the
export works with old and new releases alike. Nothing here needs torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

from softmcl_jax import model_card
from softmcl_jax.models import Pretrained, save_pretrained
from softmcl_jax.models.heads import POOLINGS

EXPORT_DIR = "export"  # a workdir's export, written by the trainer at the end of a run
MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"  # the Transformer module's max_seq_length
RUN_INFO = "run_info.json"  # what a finished run measured (loop.run writes it), for the card
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
_TYPES = {"transformer": "sentence_transformers.models.Transformer",
          "pooling": "sentence_transformers.models.Pooling",
          "normalize": "sentence_transformers.models.Normalize"}
_LEGACY_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}
_OTHER_LEGACY_KEYS = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")


def sentence_transformers_files(*, hidden_size: int, pooling: str, max_len: int,
                                normalize: bool = False) -> dict[str, Any]:
    """``{relative path: JSON content}`` of the sentence-transformers files for our encoder."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    modules = [{"idx": 0, "name": "0", "path": "", "type": _TYPES["transformer"]},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _TYPES["pooling"]}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR,
                        "type": _TYPES["normalize"]})
    pool = {"word_embedding_dimension": int(hidden_size)}
    pool |= {key: how == pooling for how, key in _LEGACY_KEYS.items()}
    pool |= dict.fromkeys(_OTHER_LEGACY_KEYS, False)
    files: dict[str, Any] = {
        MODULES_FILE: modules,
        ST_CONFIG_FILE: {"max_seq_length": int(max_len), "do_lower_case": False},
        f"{POOLING_DIR}/config.json": pool,
        # Our objectives compare sentences by cosine similarity.
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine"},
    }
    return files


def write_sentence_transformers(out: str, **kwargs: Any) -> list[str]:
    """Write ``sentence_transformers_files(**kwargs)`` into ``out``; returns the paths written.

    A Normalize module has no files, but sentence-transformers expects its folder to exist.
    """
    written = []
    for rel, content in sentence_transformers_files(**kwargs).items():
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
        written.append(path)
    if kwargs.get("normalize"):
        os.makedirs(os.path.join(out, NORMALIZE_DIR), exist_ok=True)
    return written


def _pooling_of(config: dict[str, Any], where: str) -> str:
    """"mean" or "cls" from a Pooling config of either layout; anything else is refused."""
    mode = config.get("pooling_mode")  # sentence-transformers >= 5 writes one string
    if mode is None:
        modes = [how for how, key in _LEGACY_KEYS.items() if config.get(key)]
        others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v
                  and k not in _LEGACY_KEYS.values()]
        mode = modes[0] if len(modes) == 1 and not others else "+".join(modes + others)
    mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode)
    if mode not in POOLINGS:
        raise ValueError(f"{where}: pooling {mode!r} is not one softmcl_jax computes "
                         f"({', '.join(POOLINGS)})")
    return mode


def read_sentence_transformers(folder: str) -> dict[str, Any] | None:
    """What a sentence-transformers folder says: ``{"encoder": the transformers folder,
    "pooling": "mean" | "cls", "normalize": bool}``; None when ``folder`` has no modules.json.

    Raises ``ValueError`` for a pipeline softmcl_jax cannot reproduce (another pooling, a Dense
    layer after the pooling, no Transformer module).
    """
    path = os.path.join(folder, MODULES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        modules = json.load(f)
    found: dict[str, Any] = {"normalize": False}
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1].lower()
        # Most folders keep the transformer at the root (path ""): then it is ``folder`` itself.
        sub = os.path.join(folder, m["path"]) if m.get("path") else folder
        if kind == "transformer":
            found["encoder"] = sub
        elif kind == "pooling":
            with open(os.path.join(sub, "config.json")) as f:
                found["pooling"] = _pooling_of(json.load(f), os.path.join(sub, "config.json"))
        elif kind == "normalize":
            found["normalize"] = True
        else:
            raise ValueError(f"{path}: module {m['type']} is not one softmcl_jax reproduces "
                             "(Transformer, Pooling, Normalize)")
    if "encoder" not in found or "pooling" not in found:
        raise ValueError(f"{path}: needs a Transformer and a Pooling module")
    return found


def _plain(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def write_export(pretrained: Pretrained, params: Any, out: str, config: Any,
                 info: dict[str, Any] | None = None, *, with_mlm_head: bool = False) -> str:
    """Write the whole export of a run into ``out``: the transformers folder, the
    sentence-transformers files (pooling, max length, Normalize as ``config`` says) and the
    model card (``info``: what the run measured, see ``model_card.render``). Returns ``out``."""
    cfg = _plain(config)
    normalize = bool(cfg.get("export", {}).get("normalize", False))
    hidden = int(pretrained.config.hidden_size)
    save_pretrained(pretrained, params, out, with_mlm_head=with_mlm_head)
    write_sentence_transformers(out, hidden_size=hidden, pooling=cfg["model"]["pooling"],
                                max_len=cfg["model"]["max_len"], normalize=normalize)
    with open(os.path.join(out, model_card.CARD_FILE), "w") as f:
        f.write(model_card.render(cfg, info, hidden_size=hidden, normalize=normalize))
    return out


def write_run_info(workdir: str, info: dict[str, Any]) -> None:
    """Record what the run measured (steps, data count, hardware, probe) for a later export."""
    with open(os.path.join(workdir, RUN_INFO), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


def read_run_info(workdir: str) -> dict[str, Any]:
    """``WORKDIR/run_info.json``, or {} if the run never finished."""
    try:
        with open(os.path.join(workdir, RUN_INFO)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
