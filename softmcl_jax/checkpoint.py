"""Checkpoints of the training state (orbax) and a SIGTERM/preemption guard for the train loop.

The loop this module is written for::

    with PreemptionGuard() as guard, Checkpointer(workdir + "/ckpt", every_steps=1000,
                                                  keep=3) as ckpt:
        state = init_state(...)                               # sharded TrainState pytree
        start = 0
        if (last := ckpt.latest_step()) is not None:
            state = ckpt.restore(last, abstract_like(state))  # same shardings as the fresh state
            start = last
        for step in range(start, total_steps):
            state, metrics = train_step(state, batch)
            done = step + 1                                   # steps completed == state.step
            if guard.should_stop(done):
                ckpt.save(done, state, force=True, meta={"data_position": ...})
                break
            ckpt.save(done, state, meta=...)                  # a no-op unless done % every == 0
    # leaving the Checkpointer's block waits for the last async save: without that wait the
    # checkpoint stays a temporary directory and the process dies in orbax's writer thread.

Conventions: a checkpoint's step is the number of completed optimiser steps, so a run resumed from
step ``s`` next executes step ``s`` (0-based) and logs it; pass ``s`` to
``MetricWriter.truncate_after``.

Restoring with shardings: give ``restore`` a pytree of ``jax.ShapeDtypeStruct`` *with*
``.sharding`` set. Without it orbax falls back to the sharding recorded at save time, which only
works on the very same devices (not after a topology change or on another host set).
``jax.eval_shape`` drops
shardings, so either build the abstract state from a concrete one (:func:`abstract_like`, cheap if
the concrete state is the freshly initialised one you would otherwise train from) or attach
shardings to ``jax.eval_shape``'s output (:func:`with_shardings`)::

    shapes = jax.eval_shape(init_state, rng)                  # no memory, no shardings
    abstract = with_shardings(shapes, state_shardings)        # the pytree of NamedShardings you
    state = ckpt.restore(step, abstract)                      # give jit(..., out_shardings=)

The target shardings need not be the ones the checkpoint was written with: orbax reshards on
read, so a run may resume on a different number of devices.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

_STATE = "state"
_META = "meta"


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (shape, dtype, sharding) for every array leaf of ``tree``."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        # numpy arrays and Python scalars are host values: orbax restores them as such.
        return x

    return jax.tree.map(leaf, tree)


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """Attach shardings to an ``jax.eval_shape`` result.

    Args:
      shapes: pytree of ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape(init_fn, ...)``).
      shardings: a pytree of ``jax.sharding.Sharding`` with the same structure (the
        ``out_shardings`` of the jitted init), or a single sharding for every leaf.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings), shapes)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def non_finite_leaves(tree: Any) -> list[str]:
    """Key paths of the floating-point leaves of ``tree`` that hold a NaN or an infinity."""
    out = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            if not bool(jax.numpy.isfinite(x).all()):
                out.append(jax.tree_util.keystr(path))
    return out


def _json_default(x: Any) -> Any:
    # numpy/jax scalars and small arrays turn up in configs and data positions; JSON has no type
    # for them, and orbax's JsonSave would fail deep inside a background thread.
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    raise TypeError(f"checkpoint meta: {type(x).__name__} is not JSON serialisable: {x!r}")


class Checkpointer:
    """A directory of step checkpoints, each holding the train state and a small JSON "meta".

    A thin layer over ``orbax.checkpoint.CheckpointManager`` that fixes the policy: save exactly
    when ``step % every_steps == 0`` (or when forced, or at a multi-host preemption sync point),
    keep the newest ``keep``. Unlike orbax's default policy it does *not* also save the first
    step it sees: a resumed or fresh run saves at the same steps an uninterrupted run would.

    With ``async_save`` the device-to-host copy happens in ``save`` and the file writing in a
    background thread, so the next train steps overlap with the write; a following ``save``,
    ``wait`` or ``close`` waits for it. Call ``wait``/``close`` before the process exits, or the
    last checkpoint stays an unfinalised temporary directory that is ignored on restart.

    All methods must be called on every process of a multi-host job (orbax synchronises them).
    """

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps < 1 or keep < 1:
            raise ValueError(f"every_steps ({every_steps}) and keep ({keep}) must be >= 1")
        # orbax refuses relative paths on some file systems; a local one is made absolute here.
        if "://" not in directory:
            directory = os.path.abspath(directory)
        self.directory = directory
        self.every_steps = every_steps
        policy = ocp.checkpoint_managers.AnySavePolicy([
            ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
            ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
        ])
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,  # overridden by the policy; kept for the record
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            save_decision_policy=policy,
            create=True,
            # A crash mid-write leaves a temporary directory behind (ignored by restore, but a
            # full state's worth of disk); remove it on start.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(directory, options=options,
                                              item_names=(_STATE, _META))
        # orbax removes the temporary directories in a background thread that neither close()
        # nor process exit waits for; a short-lived process (a resume probe, a tool reading
        # latest_step) then dies with "cannot schedule new futures after shutdown". Wait here.
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()

    # --- queries ---------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest finalised (or in-flight, in this process) checkpoint step; None if none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every checkpoint step present, ascending."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would save (to skip building an expensive ``meta``)."""
        return self._manager.should_save(step)

    # --- save / restore --------------------------------------------------------------------

    def save(self, step: int, state: Any, *, force: bool = False,
             meta: Mapping[str, Any] | None = None) -> bool:
        """Save ``state`` and ``meta`` as checkpoint ``step`` if the interval says so or ``force``.

        Returns whether a save was started. A step that already has a checkpoint is skipped
        (returns False) rather than raising as orbax does, so the preemption path may force a
        save at a step the interval has just saved.
        """
        if step in self._manager.all_steps():
            return False
        meta_json = json.loads(json.dumps(dict(meta or {}), default=_json_default))
        return self._manager.save(
            step,
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(meta_json),
            }),
            force=force,
        )

    def restore(self, step: int | None, abstract_state: Any) -> Any:
        """The state saved at ``step`` (None: the latest), laid out as ``abstract_state`` says.

        ``abstract_state`` is the state's pytree with ``jax.ShapeDtypeStruct`` leaves carrying
        ``.sharding`` (see :func:`abstract_like`, :func:`with_shardings`); host leaves (numpy,
        Python scalars) may stay concrete. The result has exactly that pytree structure (flax
        struct dataclasses included) and dtypes.
        """
        step = self._resolve(step)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state)}))
        return restored[_STATE]

    def restore_newest_good(self, abstract_state: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores and holds only finite values;
        None when there is none.

        A checkpoint is trusted only after that verification. One that fails (a deleted
        ``_METADATA``, a truncated data file, a NaN) is reported with its step and the reason,
        moved aside (:meth:`set_aside`), and the next older one is tried; a ``RuntimeError``
        naming the directory and every step tried comes only when none restores. Orbax's
        temporary folders of a killed save are never candidates (they are removed on start).
        """
        tried = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, abstract_state)
                bad = non_finite_leaves(state)
                if bad:
                    raise ValueError(f"non-finite values in {', '.join(bad[:3])}")
                return step, state
            except Exception as e:  # noqa: BLE001 -- whatever the failure, the step is not trusted
                reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                tried.append(f"{step} ({reason})")
                log.warning("checkpoint %d in %s cannot be restored (%s); falling back to the "
                            "next older one", step, self.directory, reason)
                self.set_aside(step)
        if tried:
            raise RuntimeError(f"{self.directory}: no checkpoint could be restored; tried "
                               + "; ".join(tried))
        return None

    def set_aside(self, step: int) -> None:
        """Move a bad checkpoint out of the manager's sight (so a later save of that step is not
        skipped as existing), keeping it for inspection in ``<directory>.bad/``; on remote
        storage it is deleted."""
        if jax.process_index() == 0:
            if "://" in self.directory:
                self._manager.delete(step)
            else:
                aside = f"{self.directory}.bad"
                os.makedirs(aside, exist_ok=True)
                target = os.path.join(aside, f"{step}-{int(time.time())}")
                os.rename(os.path.join(self.directory, str(step)), target)
                log.warning("checkpoint %d moved to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set_aside {step}")
        self._manager.reload()

    def restore_subtree(self, step: int | None, target: dict[str, Any]) -> dict[str, Any]:
        """Only the part of the saved state that ``target`` names, e.g. ``{"params":
        {"encoder": abstract}}`` (dicts keyed like the state's fields, ``jax.ShapeDtypeStruct``
        leaves with ``.sharding``); nothing else is read from storage."""
        step = self._resolve(step)
        path = os.path.join(self.directory, str(step), _STATE)
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
        with ocp.PyTreeCheckpointer() as reader:
            return reader.restore(path, args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON meta saved with ``step`` (None: the latest); {} for none saved."""
        step = self._resolve(step)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        return dict(restored[_META] or {})

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        return step

    # --- lifecycle -------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until any async save has been written and finalised."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreemptionGuard:
    """Turns SIGTERM (how TPU VMs and most schedulers announce preemption) into a flag.

    ::

        with PreemptionGuard() as guard:
            for step in ...:
                ...
                if guard.should_stop(done):
                    ckpt.save(done, state, force=True); ckpt.wait(); break

    On entry a SIGTERM handler is installed that only sets :attr:`requested`, so the signal never
    interrupts a step or a checkpoint write half way; the previous handler is put back on exit.
    Python runs signal handlers between bytecodes of the main thread, so the guard must be
    entered there. Enter it early (before the restore and the first compile, which take minutes
    on big models): a SIGTERM before that kills the process with the default action.

    Multi-host: hosts may get the signal at different steps, and one host leaving the loop while
    the others run into a collective (or orbax's save barrier) deadlocks. JAX's preemption
    service (started by ``jax.distributed.initialize``) agrees on a common step:
    ``jax.experimental.multihost_utils.reached_preemption_sync_point(step)`` turns True on every
    host at the same step. :meth:`should_stop` therefore uses only that when
    ``jax.process_count() > 1`` and ignores the local flag. It must be called at *every* step with
    the same step numbers on all hosts.

    That service catches SIGTERM itself, with a C-level ``signal(SIGTERM, ...)``, and a Python
    handler installed afterwards would replace it (the process-wide handler is last-writer-wins),
    hiding the preemption from the service. So when a non-Python SIGTERM handler is already in
    place, the guard leaves it alone and relies on the sync point (``install=None``, the default;
    ``install=True``/``False`` forces either way).
    """

    def __init__(self, *, signum: int = signal.SIGTERM, install: bool | None = None):
        self._signum = signum
        self._install = install
        self._event = threading.Event()
        self._previous: Any = None
        self._installed = False

    @property
    def requested(self) -> bool:
        """Whether the signal arrived since the guard was entered (or :meth:`request` ran)."""
        return self._event.is_set()

    @property
    def installed(self) -> bool:
        """Whether this guard's signal handler is the active one."""
        return self._installed

    def request(self) -> None:
        """Raise the flag by hand (tests, a max-runtime watchdog)."""
        self._event.set()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        del frame
        # Logging from a signal handler can deadlock on the logging lock; just set the flag.
        self._event.set()

    def __enter__(self) -> PreemptionGuard:
        current = signal.getsignal(self._signum)
        # getsignal() is None exactly when the handler was installed outside Python (JAX's
        # preemption notifier); do not clobber it unless asked to.
        install = self._install if self._install is not None else current is not None
        if install:
            self._previous = signal.signal(self._signum, self._handler)
            self._installed = True
        else:
            log.info("PreemptionGuard: a non-Python %s handler is installed (JAX's preemption "
                     "service?); leaving it in place and relying on the preemption sync point",
                     signal.Signals(self._signum).name)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None would mean "installed outside Python", which cannot be put back from Python;
            # the default action is the closest.
            signal.signal(self._signum,
                          self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint ``step`` now and leave the loop.

        Single process: the local flag. Multi-process: JAX's preemption sync point only (see the
        class docstring); if the preemption service is not running (``RuntimeError``), falls back
        to the local flag, which is then only safe if every host gets the signal at the same step.
        """
        if jax.process_count() > 1 or not self._installed:
            try:
                from jax.experimental import multihost_utils

                if multihost_utils.reached_preemption_sync_point(step):
                    self._event.set()
                    return True
                if jax.process_count() > 1:
                    return False
            except RuntimeError:  # preemption service not initialised / disabled
                pass
        return self.requested
