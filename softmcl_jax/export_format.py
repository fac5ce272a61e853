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

``write_export`` never leaves a half-written folder and never writes over what is not an export
of the same run (``check_out``):

* It writes into a temporary sibling ``OUT.tmp-<pid>`` and renames it into place; an earlier
  folder at ``OUT`` is renamed away first and deleted last. A failure mid-write leaves ``OUT`` as
  it was and removes the temporary folder.
* Every export holds ``softmcl_jax_export.json`` (``OWNER_FILE``): the workdir it came from
  (absolute path), the checkpoint step and the run's config. ``OUT`` may be replaced when it is
  missing or empty, or when it is an export *of the same run*: its recorded config equals the
  run's on every field that may not change on resume (``workdir.config_differences``: a resumed
  run with more ``total_steps`` is the same run), and it was written from the same workdir or is
  that workdir's own ``export/`` (a workdir moved elsewhere keeps its export). An ``export/``
  inside the workdir written before the owner file existed counts as the run's when it holds our
  model card. Anything else (a user's folder, another run's export) is refused unless
  ``overwrite``; a training workdir, the workdir being exported, a folder holding it, or its
  checkpoint directory are refused even then, since replacing them would delete a run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from softmcl_jax import model_card
from softmcl_jax.metrics import METRICS_FILE
from softmcl_jax.models import Pretrained, save_pretrained
from softmcl_jax.models.heads import POOLINGS
from softmcl_jax.workdir import (
    CONFIG_FILE,
    LOCK_FILE,
    checkpoint_directory,
    config_differences,
    pid_alive,
)

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # a workdir's export, written by the trainer at the end of a run
OWNER_FILE = "softmcl_jax_export.json"  # which run an export folder belongs to (check_out)
CHECKPOINTS_DIR = "checkpoints"  # a workdir's default checkpoint_dir (loop.checkpointer)
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


class ExportError(ValueError):
    """An export that may not or cannot be written where asked; the message names the folder."""


def _plain(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _as_json(config: Any) -> dict[str, Any]:
    """The config as the trainer's config.json holds it (tuples as lists): what an owner file
    records and compares."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config), default=str))


def _is_run_config(path: str) -> bool:
    """Whether ``path`` is a trainer's config.json (not a Hugging Face one)."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(cfg, dict) and "model_type" not in cfg
            and ("objective" in cfg or isinstance(cfg.get("model"), dict)))


def training_workdir_marks(folder: str) -> list[str]:
    """What in ``folder`` belongs to a training run: the trainer's config.json, checkpoints/,
    metrics.jsonl, trainer.lock; [] for none."""
    marks = []
    if _is_run_config(os.path.join(folder, CONFIG_FILE)):
        marks.append(f"{CONFIG_FILE} of a run")
    if os.path.isdir(os.path.join(folder, CHECKPOINTS_DIR)):
        marks.append(f"{CHECKPOINTS_DIR}/")
    marks += [name for name in (METRICS_FILE, LOCK_FILE)
              if os.path.exists(os.path.join(folder, name))]
    return marks


def read_owner(folder: str) -> dict[str, Any] | None:
    """``folder``'s owner file (``{"workdir", "step", "config"}``), None when it has none."""
    try:
        with open(os.path.join(folder, OWNER_FILE)) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def holds_our_card(folder: str) -> bool:
    """Whether ``folder`` is a transformers folder with our model card: how an export written
    before owner files existed is known."""
    try:
        with open(os.path.join(folder, model_card.CARD_FILE)) as f:
            card = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    return model_card.EVAL_START in card and os.path.isfile(os.path.join(folder, "config.json"))


def _workdir_above(real: str) -> str | None:
    """The training workdir whose ``export/`` ``real`` is (how the trainer calls
    ``write_export``), else None."""
    above = os.path.dirname(real)
    if os.path.basename(real) == EXPORT_DIR and training_workdir_marks(above):
        return above
    return None


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _listing(folder: str, shown: int = 4) -> str:
    names = sorted(n + "/" if os.path.isdir(os.path.join(folder, n)) else n
                   for n in os.listdir(folder))
    more = f", ... ({len(names)} entries)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _other_owner(owner: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    """Why an export of ours is another run's, for the refusal."""
    if owner is None:
        return ""
    stored = owner.get("config")
    diff = config_differences(stored, cfg) if isinstance(stored, dict) else ["(no config)"]
    if diff:
        return (f"; it is an export of another run ({owner.get('workdir')}; "
                f"{', '.join(diff[:3])}{', ...' if len(diff) > 3 else ''})")
    return f"; it is an export of the run in {owner.get('workdir')}, not of this workdir"


def check_out(out: str, config: Any, *, workdir: str | None = None,
              overwrite: bool = False) -> str | None:
    """Return when an export of ``config``'s run (trained in ``workdir``; None: the workdir
    whose ``export/`` ``out`` is, if any) may be written to ``out``, with what ``overwrite``
    will delete (None: nothing but an earlier export of the run); else raise ``ExportError``
    saying what is there and what to do (the rules: the module docstring)."""
    real = os.path.realpath(out)
    cfg = _as_json(config)
    workdir = workdir if workdir is not None else _workdir_above(real)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise ExportError(f"{out} is a file, not a folder; export elsewhere")
    if workdir is not None:
        run = os.path.realpath(workdir)
        ckpt = checkpoint_directory(cfg.get("checkpoint_dir"), run)
        ckpt = None if "://" in ckpt else os.path.realpath(ckpt)
        if _within(run, real) or (ckpt and (_within(ckpt, real) or _within(real, ckpt))):
            what = (f"is or holds the workdir of the run being exported ({workdir})"
                    if _within(run, real) else
                    f"is, holds or is inside the run's checkpoint directory ({ckpt})")
            raise ExportError(
                f"{out} {what}; replacing it would delete the run, "
                f"so it is refused even with --overwrite: export elsewhere, e.g. "
                f"{os.path.join(workdir, EXPORT_DIR)}")
    if not os.path.isdir(real):
        parent = os.path.dirname(real)
        if os.path.isdir(parent) and not os.access(parent, os.W_OK):
            raise ExportError(f"cannot write {out}: Permission denied (its folder {parent} is "
                              "read-only)")
        return None
    if not os.access(real, os.W_OK) or not os.access(os.path.dirname(real), os.W_OK):
        raise ExportError(f"cannot write {out}: Permission denied")
    if not os.listdir(real):
        return None
    marks = training_workdir_marks(real)
    if marks:
        raise ExportError(
            f"{out} is a training workdir ({', '.join(marks)}); replacing it would delete "
            f"that run, so it is refused even with --overwrite: export elsewhere, e.g. "
            f"{os.path.join(out, EXPORT_DIR)}")
    own_export = workdir is not None and real == os.path.realpath(
        os.path.join(workdir, EXPORT_DIR))
    owner = read_owner(real)
    if owner is None:
        same = own_export and holds_our_card(real)
    else:
        stored, recorded = owner.get("config"), owner.get("workdir")
        here = os.path.realpath(workdir) if workdir is not None else None
        same = (isinstance(stored, dict) and not config_differences(stored, cfg)
                and (own_export or recorded == here))
    if same:
        return None
    if overwrite:
        return f"deleting {_listing(real)}"
    raise ExportError(
        f"{out} is not empty and is not an earlier export of this run: it holds "
        f"{_listing(real)}{_other_owner(owner, cfg)}; export elsewhere, or replace that folder "
        "with python -m softmcl_jax.export --overwrite (everything in it is deleted)")


def _remove_stale_temporaries(real: str) -> None:
    """Remove ``OUT.tmp-<pid>`` folders of ours (with an owner file) whose export was killed:
    a model's worth of disk each."""
    parent, prefix = os.path.dirname(real), os.path.basename(real) + ".tmp-"
    for name in os.listdir(parent):
        pid = name[len(prefix):]
        path = os.path.join(parent, name)
        if (name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid()
                and not pid_alive(int(pid)) and os.path.isfile(os.path.join(path, OWNER_FILE))):
            log.warning("removing %s, left by an export that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: str, real: str) -> None:
    """Put the finished folder ``tmp`` at ``real``: the old folder is renamed away before and
    deleted after, so ``real`` is never half-written."""
    if not os.path.lexists(real):
        os.rename(tmp, real)
        return
    old = f"{real}.old-{os.getpid()}"
    if os.path.lexists(old):
        shutil.rmtree(old)
    os.rename(real, old)
    try:
        os.rename(tmp, real)
    except BaseException:
        os.rename(old, real)
        raise
    try:
        shutil.rmtree(old)
    except OSError as e:  # the new export is in place; only the old copy is left over
        log.warning("the previous export is at %s: it could not be removed (%s)", old, e)


def _cannot_write(out: str, tmp: str, e: OSError) -> str:
    """``cannot write OUT: <reason>``, naming the file inside the export that failed, if any."""
    name = os.fspath(e.filename) if e.filename else ""
    if not name or name == tmp:
        detail = ""
    elif _within(name, tmp):
        detail = f" ({os.path.relpath(name, tmp)})"
    else:
        detail = f" ({name})"
    return f"cannot write {out}: {e.strerror or e}{detail}"


def write_export(pretrained: Pretrained, params: Any, out: str, config: Any,
                 info: dict[str, Any] | None = None, *, with_mlm_head: bool = False,
                 workdir: str | None = None, overwrite: bool = False) -> str:
    """Write the whole export of a run into ``out``: the transformers folder, the
    sentence-transformers files (pooling, max length, Normalize as ``config`` says), the
    model card (``info``: what the run measured, see ``model_card.render``) and the owner file
    (the run: ``workdir``, None for the workdir whose ``export/`` ``out`` is). Returns ``out``.

    Written into a temporary sibling and renamed into place (the module docstring). Raises
    ``ExportError`` when ``out`` holds what is not an earlier export of this run (unless
    ``overwrite``; ``check_out``), or cannot be written (``cannot write OUT: Permission
    denied``); ``out`` is then as it was.
    """
    replacing = check_out(out, config, workdir=workdir, overwrite=overwrite)
    if replacing:
        log.warning("--overwrite: replacing %s (%s)", out, replacing)
    real = os.path.realpath(out)
    workdir = workdir if workdir is not None else _workdir_above(real)
    cfg = _plain(config)
    normalize = bool(cfg.get("export", {}).get("normalize", False))
    hidden = int(pretrained.config.hidden_size)
    owner = {"written_by": "softmcl_jax.export_format.write_export",
             "workdir": os.path.realpath(workdir) if workdir is not None else None,
             "step": (info or {}).get("steps"), "config": _as_json(config)}
    tmp = f"{real}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        _remove_stale_temporaries(real)
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        try:
            # The owner file first: a killed export's temporary folder is then known as ours.
            with open(os.path.join(tmp, OWNER_FILE), "w") as f:
                json.dump(owner, f, indent=2)
                f.write("\n")
            save_pretrained(pretrained, params, tmp, with_mlm_head=with_mlm_head)
            write_sentence_transformers(tmp, hidden_size=hidden, pooling=cfg["model"]["pooling"],
                                        max_len=cfg["model"]["max_len"], normalize=normalize)
            with open(os.path.join(tmp, model_card.CARD_FILE), "w") as f:
                f.write(model_card.render(cfg, info, hidden_size=hidden, normalize=normalize))
            _swap_in(tmp, real)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise ExportError(_cannot_write(out, tmp, e)) from e
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
