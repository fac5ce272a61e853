"""A workdir belongs to one run: it remembers that run's config, and one trainer at a time
holds it.

* ``check_config(config, workdir)``: on resume the stored ``config.json`` is compared with the
  new config; a difference in any field that changes the computation is refused with the fields
  listed ``old -> new``. Only the fields in :data:`MAY_CHANGE_ON_RESUME` may differ.
  ``write_config`` writes the file after every check passed, atomically (write, then rename).
* ``check_inputs(inputs, workdir, resuming)``: what the run computes from besides its config
  (``inputs.json``: each prepared folder's source files by size and sha256, tokenizer, lexicon,
  probe split and row count; the tokenizer; the probe's held-out texts) is compared the same
  way once the workdir holds progress, and ``write_inputs`` records it. A workdir from before
  ``inputs.json`` resumes with one warning.
* ``check_checkpoint_dir(config, workdir)``: a changed ``checkpoint_dir`` that holds no
  checkpoint while the run's progress is elsewhere is refused, naming both folders.
* ``WorkdirLock``: ``trainer.lock`` holds the PID and host of the trainer using the workdir. A
  second trainer is refused at once, naming them; a lock whose process is gone (a crash, a
  SIGKILL) is taken over with a warning.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
INPUTS_FILE = "inputs.json"
INPUTS_FORMAT = 1
LOCK_FILE = "trainer.lock"
# Where a run logs its steps (metrics.METRICS_FILE; not imported: metrics pulls in tqdm).
METRICS_FILE = "metrics.jsonl"

# Fields that say how long to train, how often to log and save, where checkpoints go and what to
# do at the end; none of them changes what a step computes. Everything else does: model, batch,
# objective terms, optimizer, queues, data, seed, mesh-independent numerics. (total_steps sets
# the cosine schedule's length: extending a run changes the learning rate from the resume on,
# which is what extending a run means.) A prefix ending in "." covers a whole section.
MAY_CHANGE_ON_RESUME = (
    "total_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "async_checkpointing", "checkpoint_dir", "max_skipped_steps", "data.prefetch",
    # How batches are read, not what they hold (a batch is a function of (seed, step)).
    "data.workers", "data.cache_dir", "mesh.", "export.",
    # How the probe is computed, not which sentences it holds out of training (probe.enabled,
    # n_train, n_test and seed decide that, so they may not change).
    "probe.batch_size",
    # How much of the batch each encoder pass holds at once (a memory knob, for a run that ran
    # out of memory): with dropout off the same gradients; with dropout on the masks are drawn
    # per chunk, another draw of the same distribution.
    "grad_cache.",
)


class ConfigMismatch(ValueError):
    """The workdir holds another run."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _may_change(field: str) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p))
               for p in MAY_CHANGE_ON_RESUME)


# Fields added since runs were first written, with the value that does what the code did before
# them (a field added as an unset placeholder needs no entry: None is the old behaviour).
ADDED_FIELDS = {"data.rating_unit": "scale", "data.mixture": [],
                # Fine-tuning's text pairs and regression term (off: what runs did before).
                "data.pair_column": "", "objective.regression.weight": 0.0,
                "objective.regression.of": "online/clean",
                "objective.regression.head": "regressor",
                "objective.regression.target": "valence",
                # LCL's optional projection head ("" = the pooled vectors, as before).
                "objective.lcl.head": "",
                "optimizer.decay": "cosine"}


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"field: old -> new"`` for every field that differs and may not change on resume."""
    a, b = _flatten(stored), _flatten(new)
    missing = object()
    out = []
    for field in sorted(set(a) | set(b)):
        old, now = a.get(field, missing), b.get(field, missing)
        if old is missing and (now is None or ADDED_FIELDS.get(field, missing) == now):
            continue  # a field added since the run started, at the old behaviour
        if old != now and not _may_change(field):
            show = lambda v: "(absent)" if v is missing else json.dumps(v)
            out.append(f"{field}: {show(old)} -> {show(now)}")
    return out


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _stored_config(workdir: str) -> dict[str, Any] | None:
    """The config the run in ``workdir`` recorded; None for a new workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigMismatch(f"{path}: unreadable ({e}); it should hold the config of the run "
                             "in this workdir. Use another --workdir, or remove the file if "
                             "the workdir holds no run worth keeping") from e


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse ``config`` (``ConfigMismatch``) if ``workdir`` holds a run with a different one."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = _as_json(config)
    stored = _stored_config(workdir)
    if stored is not None:
        diff = config_differences(stored, new)
        if diff:
            raise ConfigMismatch(
                f"{workdir} holds a run with another config ({path}); these fields differ "
                "(stored -> new):\n  " + "\n  ".join(diff) + "\nResume with the stored values, "
                "or train in another --workdir. Fields that may change on resume: "
                + ", ".join(MAY_CHANGE_ON_RESUME))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Record the run's config (for export.py and the record): whole or not at all."""
    _write_json(os.path.join(workdir, CONFIG_FILE), _as_json(config))


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; is {workdir} a softmcl_jax workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# --- where the run's progress is ---------------------------------------------------------------

def checkpoint_directory(checkpoint_dir: str, workdir: str) -> str:
    """The checkpoint folder of a run: ``checkpoint_dir``, else ``WORKDIR/checkpoints``; a local
    path made absolute, as ``Checkpointer`` makes it."""
    directory = checkpoint_dir or os.path.join(workdir, "checkpoints")
    return directory if "://" in directory else os.path.abspath(directory)


def checkpoint_steps(directory: str) -> list[int]:
    """The checkpoint steps in ``directory`` (orbax names each step's folder by its number),
    read without creating anything; [] for a missing folder."""
    if "://" in directory:
        from etils import epath

        path = epath.Path(directory)
        names = [p.name for p in path.iterdir()] if path.exists() else []
    else:
        names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def metric_steps(workdir: str) -> list[int]:
    """The steps ``metrics.jsonl`` logged (a torn or foreign line is passed over: this only asks
    whether the workdir has progress)."""
    steps = []
    try:
        with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
            for line in f:
                try:
                    steps.append(int(json.loads(line)["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        return []
    return steps


def has_progress(workdir: str, directory: str) -> bool:
    """Whether a run has trained here: checkpoints in ``directory`` or steps in the metrics."""
    return bool(checkpoint_steps(directory) or metric_steps(workdir))


def _steps(steps: list[int]) -> str:
    if len(steps) > 4 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]}"
    return ", ".join(map(str, steps[:6])) + (f" (and {len(steps) - 6} more)" if len(steps) > 6
                                             else "")


def check_checkpoint_dir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse (``ConfigMismatch``) a ``checkpoint_dir`` that holds no checkpoint when the run in
    ``workdir`` has progress elsewhere: its stored checkpoint folder holds checkpoints, or
    ``metrics.jsonl`` has steps. Training would start again from step 0 and rewrite the
    metrics. A new folder that holds the checkpoints (they were moved there) is fine."""
    stored = _stored_config(workdir)
    if stored is None:
        return
    old_dir = checkpoint_directory(stored.get("checkpoint_dir") or "", workdir)
    new_dir = checkpoint_directory(config.checkpoint_dir, workdir)
    if old_dir == new_dir or checkpoint_steps(new_dir):
        return
    old, logged = checkpoint_steps(old_dir), metric_steps(workdir)
    if not old and not logged:
        return
    found = []
    if old:
        found.append(f"{old_dir} holds checkpoint(s) {_steps(old)}")
    if logged:
        found.append(f"{os.path.join(workdir, METRICS_FILE)} has steps {_steps(sorted(logged))}")
    back = (f"--config.checkpoint_dir={stored['checkpoint_dir']}" if stored.get("checkpoint_dir")
            else "no --config.checkpoint_dir")
    raise ConfigMismatch(
        f"{workdir}: config.checkpoint_dir is now {new_dir}, which holds no checkpoint, but the "
        f"run in this workdir checkpointed to {old_dir}: {' and '.join(found)}. Resuming would "
        f"start again from step 0 and rewrite the metrics. Move the checkpoints into {new_dir}, "
        f"or resume with {back}, or train in another --workdir")


# --- what the run computes from, besides its config --------------------------------------------

def tokenizer_fingerprint(name_or_path: str, vocab_hash: str) -> dict[str, str]:
    return {"name_or_path": name_or_path, "vocab_hash": vocab_hash}


def probe_fingerprint(train_texts: Sequence[str], test_texts: Sequence[str]) -> dict[str, Any]:
    """The probe's held-out texts (kept out of training): their count and a content hash."""
    text = json.dumps({"train": list(train_texts), "test": list(test_texts)},
                      ensure_ascii=False, separators=(",", ":"))
    return {"texts": len(train_texts) + len(test_texts),
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


# A folder's data fields whose value is a path: the hashes stand for their contents.
_PATH_FIELDS = ("path", "lexicon", "lexicon_words")


def folder_fingerprint(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a prepared folder's rows are made from, from its manifest: the source files (size
    and sha256, the shipped ones by name), the preparation's data settings, the tokenizer,
    ``max_len``, the lexicon's hashes, the probe split held out, and the row count. Not where
    the folder is: a cache folder moves whenever an input file changes."""
    data = dict(manifest.get("data") or {})
    lexicon = manifest.get("lexicon") or {}
    tokenizer = manifest.get("tokenizer") or {}
    return {
        # Names the folder in a message; not compared.
        "source": data.get("source"), "path": data.get("path"),
        "files": [{k: f[k] for k in ("role", "path", "resource", "name", "bytes", "sha256")
                   if k in f} for f in manifest.get("source_files") or ()],
        "settings": {k: v for k, v in data.items() if k not in ("source", *_PATH_FIELDS)},
        "tokenizer": tokenizer.get("vocab_hash"),
        "max_len": manifest.get("max_len"),
        "lexicon": {"hash": lexicon.get("hash"), "words_hash": lexicon.get("words_hash")},
        "assign": manifest.get("assign"),
        "neutral_band": manifest.get("neutral_band"),
        "held_out": manifest.get("held_out"),
        "rows": manifest.get("rows"),
    }


def inputs_fingerprint(tokenizer: Mapping[str, str], probe: Mapping[str, Any] | None,
                       manifests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``inputs.json``: the tokenizer (:func:`tokenizer_fingerprint`), the probe's held-out
    texts (:func:`probe_fingerprint`, None with the probe off) and each prepared folder the run
    reads (:func:`folder_fingerprint`, in the run's order)."""
    return {"format": INPUTS_FORMAT, "tokenizer": dict(tokenizer),
            "probe": dict(probe) if probe is not None else None,
            "data": [folder_fingerprint(m) for m in manifests]}


def _short(sha: Any) -> str:
    return f"{sha[:12]}" if isinstance(sha, str) else json.dumps(sha)


def _show(value: Any) -> str:
    """A value in a difference: JSON, a sha256 cut to its first 12 digits."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                           for c in value):
        return _short(value)
    return json.dumps(value)


def _file_label(f: Mapping[str, Any]) -> str:
    where = f.get("path") or f.get("resource") or f.get("name")
    return f"{f.get('role', 'data')} file {where}"


def _file_content(f: Mapping[str, Any]) -> str:
    if "sha256" in f:
        return f"sha256 {_short(f['sha256'])} ({f.get('bytes')} bytes)"
    return "shipped with the package" if "resource" in f else "read by name"


def _file_differences(stored: Sequence[Mapping], new: Sequence[Mapping]) -> list[str]:
    """Files changed, no longer read or newly read. A file with the same role and bytes as one
    on the other side is the same input wherever it lies (the rows are made from its bytes)."""
    def content(f: Mapping) -> str:
        return json.dumps({k: v for k, v in f.items() if k != "path"}, sort_keys=True)

    a, b = list(stored), list(new)
    for f in list(a):
        match = next((g for g in b if content(g) == content(f)), None)
        if match is not None:
            a.remove(f)
            b.remove(match)
    out = []
    for f in a:
        g = next((g for g in b if _file_label(g) == _file_label(f)), None)
        if g is None:
            out.append(f"{_file_label(f)}: {_file_content(f)} -> not read now")
        else:
            b.remove(g)
            out.append(f"{_file_label(f)}: {_file_content(f)} -> {_file_content(g)}")
    out += [f"{_file_label(g)}: not read before -> {_file_content(g)}" for g in b]
    return out


def _folder_name(fp: Mapping[str, Any], k: int, n: int) -> str:
    what = " ".join(str(x) for x in (fp.get("source"), fp.get("path")) if x)
    return f"data source {k + 1} of {n} ({what})" if n > 1 else f"data ({what})"


def input_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"what: stored -> new"`` for every difference between two :func:`inputs_fingerprint`s:
    each changed file by name with its sha256 and size, then each folder's other fields (its
    row count, the probe rows it held out, ...), the tokenizer and the probe split."""
    out = []
    st, nt = stored.get("tokenizer") or {}, new.get("tokenizer") or {}
    if st != nt:
        show = lambda t: (f"{t.get('name_or_path')} (vocabulary sha256 "
                          f"{_short(t.get('vocab_hash'))})")
        out.append(f"tokenizer: {show(st)} -> {show(nt)}")
    sp, np_ = stored.get("probe"), new.get("probe")
    if sp != np_:
        show = lambda p: (f"{p.get('texts')} texts, sha256 {_short(p.get('sha256'))}" if p
                          else "none (probe off)")
        out.append(f"the probe's held-out VADER texts: {show(sp)} -> {show(np_)}")
    sd, nd = list(stored.get("data") or ()), list(new.get("data") or ())
    if len(sd) != len(nd):
        out.append(f"data: {len(sd)} -> {len(nd)} prepared folder(s)")
    # A folder added or dropped is a changed data.mixture, which the config check names.
    for k, (a, b) in enumerate(zip(sd, nd, strict=False)):
        name = _folder_name(b, k, len(nd))
        out += _file_differences(a.get("files") or (), b.get("files") or ())
        for key in sorted((set(a) | set(b)) - {"source", "path", "files"}):
            old, now = a.get(key), b.get(key)
            if old == now:
                continue
            if isinstance(old, dict) and isinstance(now, dict):
                fa, fb = _flatten(old, f"{key}."), _flatten(now, f"{key}.")
                out += [f"{name}: {f} {_show(fa.get(f))} -> {_show(fb.get(f))}"
                        for f in sorted(set(fa) | set(fb)) if fa.get(f) != fb.get(f)]
            else:
                out.append(f"{name}: {key} {_show(old)} -> {_show(now)}")
    return out


def check_inputs(inputs: Mapping[str, Any], workdir: str, resuming: bool) -> None:
    """Refuse (``ConfigMismatch``) to resume the run in ``workdir`` on other inputs than it
    recorded in ``inputs.json``, listing every difference (:func:`input_differences`).

    Only a run with progress (``resuming``) is held to its inputs: before its first step a
    workdir may start over on new data. A run recorded before ``inputs.json`` existed resumes
    with one warning (nothing to compare with); ``write_inputs`` then records the inputs."""
    if not resuming:
        return
    path = os.path.join(workdir, INPUTS_FILE)
    if not os.path.exists(path):
        log.warning("%s: no %s (the run started before inputs were recorded): its data files, "
                    "tokenizer and probe split could not be compared with this run's; they are "
                    "recorded now and compared from the next resume on", workdir, INPUTS_FILE)
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigMismatch(f"{path}: unreadable ({e}); it should hold what the run in this "
                             "workdir was trained on. Use another --workdir, or remove the file "
                             "to resume without comparing the inputs") from e
    if not isinstance(stored, dict) or stored.get("format") != INPUTS_FORMAT:
        log.warning("%s: format %r, this code writes format %d: the inputs could not be "
                    "compared; they are recorded again", path,
                    stored.get("format") if isinstance(stored, dict) else None, INPUTS_FORMAT)
        return
    diff = input_differences(stored, inputs)
    if diff:
        raise ConfigMismatch(
            f"{workdir} holds a run trained on other inputs than this run's ({path}); these "
            "differ (stored -> new):\n  " + "\n  ".join(diff) + "\nResume on the data the run "
            "was trained on (restore the files), or train in another --workdir")


def write_inputs(inputs: Mapping[str, Any], workdir: str) -> None:
    """Record what the run computes from (``inputs.json``): whole or not at all."""
    _write_json(os.path.join(workdir, INPUTS_FILE), dict(inputs))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a lock's or a temporary folder's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirBusy(RuntimeError):
    """Another trainer holds the workdir."""


class WorkdirLock:
    """``with WorkdirLock(workdir): ...``: at most one trainer per workdir (see the module doc).

    The lock is taken with an exclusive create, so two trainers starting at once cannot both
    win. A PID can only be checked on its own host: a lock from another host is refused, and
    the message says to remove the file if that trainer is gone.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(3):  # a stale lock removed under us by another starting trainer: retry
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return
        raise WorkdirBusy(f"{self.path}: could not take the lock (another trainer is starting?)")

    def _handle_existing(self, me: dict[str, Any]) -> None:
        try:
            with open(self.path) as f:
                other = json.load(f)
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, json.JSONDecodeError):
            other = {}  # torn by a crash mid-write: treat as stale
        pid, host = other.get("pid"), other.get("host")
        if host == me["host"] and isinstance(pid, int) and pid_alive(pid):
            raise WorkdirBusy(f"{os.path.dirname(self.path)} is in use by another trainer: PID "
                              f"{pid} on {host}, since {other.get('since')} ({self.path})")
        if host not in (None, me["host"]):
            raise WorkdirBusy(f"{os.path.dirname(self.path)} is in use by a trainer on host "
                              f"{host} (PID {pid}, since {other.get('since')}); its liveness "
                              f"cannot be checked from {me['host']}: remove {self.path} if it "
                              "is gone")
        log.warning("%s: stale lock of PID %s on %s (since %s), whose process is gone; taking "
                    "over", self.path, pid, host, other.get("since"))
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
