"""What ``--checkpoint`` names: an encoder folder to load and the pooling that goes with it.

* a Hugging Face folder (``config.json`` with ``model_type``), a hub id or "minilm": itself,
  with no pooling of its own (the caller's default applies);
* a sentence-transformers folder (``modules.json``): its Transformer module's folder, with the
  pooling of its ``1_Pooling/config.json``;
* a training workdir (the trainer's ``config.json``, or a ``checkpoints/`` folder): its
  ``export/``, with the export's sentence-transformers pooling, else the run's ``model.pooling``.

``max_seq_length`` reads the sequence length a sentence-transformers folder (or a workdir's
export) declares, which is what ``SentenceTransformer`` truncates at; ``export_again`` says how to
write a broken export of ours again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from softmcl_jax.export_format import (
    EXPORT_DIR,
    ST_CONFIG_FILE,
    holds_our_card,
    read_owner,
    read_sentence_transformers,
)
from softmcl_jax.models.heads import POOLINGS
from softmcl_jax.models.hf import resolve_name

log = logging.getLogger(__name__)


def _trainer_config(folder: str) -> dict[str, Any] | None:
    """``folder``'s config.json if the trainer wrote it (not a transformers config), else None."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = None
    if isinstance(cfg, dict) and "model_type" in cfg:
        return None  # a Hugging Face folder
    if isinstance(cfg, dict) and ("objective" in cfg or isinstance(cfg.get("model"), dict)):
        return cfg
    if os.path.isdir(os.path.join(folder, "checkpoints")):
        return cfg if isinstance(cfg, dict) else {}
    return None


def resolve_checkpoint(checkpoint: str) -> tuple[str, str | None]:
    """The encoder that ``--checkpoint`` names: (folder or hub id to load, the run's pooling).

    A training workdir (its ``config.json`` is the trainer's, with keys such as ``objective``
    and ``model``, or it has a ``checkpoints/`` folder) stands for its exported encoder,
    ``WORKDIR/export``, which a finished run writes; the pooling returned is the export's
    sentence-transformers pooling, else the run's ``model.pooling`` when its config says. A
    workdir without ``export/`` raises ``FileNotFoundError`` saying how to write one. A
    sentence-transformers folder gives its Transformer folder and its pooling (``ValueError`` for
    a pooling we do not compute). Anything else (a Hugging Face folder, a hub id, "minilm")
    resolves as ``models.hf.resolve_name`` does, with pooling None.
    """
    if not os.path.isdir(checkpoint):
        return resolve_name(checkpoint), None
    cfg = _trainer_config(checkpoint)
    if cfg is None:
        return _encoder_folder(checkpoint)
    export = os.path.join(checkpoint, EXPORT_DIR)
    if not os.path.isfile(os.path.join(export, "config.json")):
        workdir = checkpoint.rstrip("/") or checkpoint
        raise FileNotFoundError(
            f"{checkpoint} is a training workdir, not an encoder folder, and it has no exported "
            f"encoder ({export}/config.json is missing; a run writes it when it finishes with "
            f"export.enabled). Write one with: python -m softmcl_jax.export "
            f"--workdir={workdir} --out={os.path.join(workdir, EXPORT_DIR)}")
    model = cfg.get("model")
    pooling = model.get("pooling") if isinstance(model, dict) else None
    if pooling not in POOLINGS:
        pooling = None
    log.info("%s is a training workdir: evaluating its exported encoder %s", checkpoint, export)
    path, st_pooling = _encoder_folder(export)
    return path, st_pooling or pooling


def max_seq_length(checkpoint: str) -> int | None:
    """The ``max_seq_length`` of ``checkpoint``'s ``sentence_bert_config.json`` (of its
    ``export/`` for a training workdir, of the resolved folder for a hub id or "minilm"); None
    when there is none. Raises ``ValueError`` naming the file when the value is not a positive
    integer."""
    folder = checkpoint if os.path.isdir(checkpoint) else resolve_name(checkpoint)
    if not os.path.isdir(folder):
        return None
    if _trainer_config(folder) is not None:
        folder = os.path.join(folder, EXPORT_DIR)
    path = os.path.join(folder, ST_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        value = json.load(f).get("max_seq_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: max_seq_length={value!r} is not a positive integer")
    return value


def _encoder_folder(folder: str) -> tuple[str, str | None]:
    """(transformers folder, pooling) of a sentence-transformers folder; (folder, None) else."""
    st = read_sentence_transformers(folder)
    if st is None:
        return folder, None
    if st["normalize"]:
        log.info("%s normalises its vectors (a Normalize module); the suite uses the pooled "
                 "vectors as they are (scale does not change cosine similarities)", folder)
    return st["encoder"], st["pooling"]


def export_again(folder: str) -> str:
    """The command that writes ``folder`` again when it is an export of a softmcl_jax run (its
    owner file names the run's workdir; an export from before owner files, known by its card,
    gets ``WORKDIR``); "" for anyone else's folder."""
    owner = read_owner(folder)
    if owner is None and not holds_our_card(folder):
        return ""
    workdir = (owner or {}).get("workdir")
    if not (isinstance(workdir, str) and os.path.isdir(workdir)):
        workdir = "WORKDIR"  # the run was trained elsewhere, or its folder is gone
    return f"python -m softmcl_jax.export --workdir={workdir} --out={folder}"
