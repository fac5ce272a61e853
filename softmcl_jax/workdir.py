"""A workdir belongs to one run: it remembers that run's config, and one trainer at a time
holds it.

* ``check_config(config, workdir)``: on resume the stored ``config.json`` is compared with the
  new config; a difference in any field that changes the computation is refused with the fields
  listed ``old -> new``. Only the fields in :data:`MAY_CHANGE_ON_RESUME` may differ.
  ``write_config`` writes the file after every check passed, atomically (write, then rename).
* ``WorkdirLock``: ``trainer.lock`` holds the PID and host of the trainer using the workdir. A
  second trainer is refused at once, naming them; a lock whose process is gone (a crash, a
  SIGKILL) is taken over with a warning.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from typing import Any

import ml_collections

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOCK_FILE = "trainer.lock"

# Fields that say how long to train, how often to log and save, where checkpoints go and what to
# do at the end; none of them changes what a step computes. Everything else does: model, batch,
# objective terms, optimizer, queues, data, seed, mesh-independent numerics. (total_steps sets
# the cosine schedule's length: extending a run changes the learning rate from the resume on,
# which is what extending a run means.) A prefix ending in "." covers a whole section.
MAY_CHANGE_ON_RESUME = (
    "total_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "async_checkpointing", "checkpoint_dir", "max_skipped_steps", "data.prefetch",
    # How batches are read, not what they hold (a batch is a function of (seed, step)).
    "data.workers", "data.cache_dir", "mesh.", "probe.", "export.",
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
ADDED_FIELDS = {"data.rating_unit": "scale", "data.mixture": []}


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


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse ``config`` (``ConfigMismatch``) if ``workdir`` holds a run with a different one."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = _as_json(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigMismatch(f"{path}: unreadable ({e}); it should hold the config of the run "
                                 "in this workdir. Use another --workdir, or remove the file if "
                                 "the workdir holds no run worth keeping") from e
        diff = config_differences(stored, new)
        if diff:
            raise ConfigMismatch(
                f"{workdir} holds a run with another config ({path}); these fields differ "
                "(stored -> new):\n  " + "\n  ".join(diff) + "\nResume with the stored values, "
                "or train in another --workdir. Fields that may change on resume: "
                + ", ".join(MAY_CHANGE_ON_RESUME))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Record the run's config (for export.py and the record): whole or not at all."""
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_as_json(config), f, indent=2)
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; is {workdir} a softmcl_jax workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _alive(pid: int) -> bool:
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
        if host == me["host"] and isinstance(pid, int) and _alive(pid):
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
