"""Training metrics: a JSON-lines log, TensorBoard event files, and a progress line.

    writer = MetricWriter(workdir)                 # workdir/metrics.jsonl, workdir/tb/
    writer.truncate_after(start_step)              # on resume: drop what the rerun will re-log
    writer.write(step, {"loss": 0.12, "lr": 1e-5})
    writer.close()
    rows = read_metrics(workdir)                   # [{"step": ..., "loss": ..., ...}, ...]

TensorBoard goes through ``tensorboardX`` (pure Python; needs only numpy, packaging, protobuf). If
it is not installed, TensorBoard is skipped with one log line and the JSON log is still written.

Why a JSON-lines file of our own beside TensorBoard: it is what code reads back (``read_metrics``:
tests, benchmarks, the reproduction) without the tensorboard package, and a resumed run's file
is made equal to an uninterrupted run's (``truncate_after``); event files cannot be edited, only
masked with a purge step. clu's metric writers add no JSON-lines writer and no truncation, and
their TensorBoard writer needs TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"

# tensorboardX names event files by the second and host and opens them with "wb": a writer
# reopened within the same second (truncate_after, a fast crash/restart) would clobber the
# previous file. A pid and a counter make every file name unique.
_WRITER_IDS = itertools.count()


def _import_tensorboardx() -> Any | None:
    """``tensorboardX`` or None; never drags torch into the process.

    tensorboardX imports torch at import time whenever torch is installed (only to accept torch
    tensors); that costs seconds and a second BLAS thread pool in a JAX trainer. Hiding torch for
    the duration of the import makes tensorboardX fall back to numpy, which is all we pass it.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import tensorboardX
    except ImportError:
        return None
    finally:
        if hide:
            del sys.modules["torch"]
    return tensorboardX


def _to_json_number(name: str, value: Any) -> int | float:
    # jax/numpy scalars and 0-d arrays arrive from train_step; JSON needs Python numbers.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {name!r} is not a scalar: shape {arr.shape}")
    return arr.item() if arr.dtype.kind in "iub" else float(arr)


class MetricWriter:
    """Appends ``{"step": s, **scalars}`` lines to ``workdir/metrics.jsonl``, and TensorBoard
    scalars to ``workdir/tb/``.

    Every line is flushed as written, so a crash loses at most the line being written (a torn
    last line is ignored by :func:`read_metrics` and removed by :meth:`truncate_after`).

    Resuming: call :meth:`truncate_after` with the first step the resumed run will log before
    writing anything; lines with ``step >= that`` are removed, so the file of a resumed run is
    the file of an uninterrupted one. TensorBoard event files cannot be edited; the new event
    file carries a purge marker at that step instead, and TensorBoard hides older events at or
    after it.

    ``active=False`` makes every method a no-op: pass ``jax.process_index() == 0`` so that only
    one host of a multi-host job writes.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, active: bool = True):
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb_dir = os.path.join(workdir, TB_DIR)
        self.active = active
        self._file: IO[str] | None = None
        self._tb: Any | None = None
        self._purge_step: int | None = None
        self._tbx = None
        if active:
            os.makedirs(workdir, exist_ok=True)
        if active and tensorboard:
            self._tbx = _import_tensorboardx()
            if self._tbx is None:
                log.warning("tensorboardX is not installed: no TensorBoard events, only %s "
                            "(pip install tensorboardX)", self.path)

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are being written."""
        return self._tbx is not None

    def truncate_after(self, step: int) -> int:
        """Drop logged lines with ``step >= step`` (and a torn last line); returns how many.

        ``step`` is the first step the resumed run will log, i.e. the restored checkpoint's step
        when steps are logged 0-based by loop index.
        """
        if not self.active:
            return 0
        self._close_files()
        self._purge_step = step
        if not os.path.exists(self.path):
            return 0
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [ln for ln in lines if ln.endswith("\n") and _line_step(ln) is not None
                and _line_step(ln) < step]
        if len(kept) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: a crash now leaves the old or the new file
        return len(lines) - len(kept)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Log ``scalars`` at ``step``: one JSON line, flushed, and one TensorBoard scalar each."""
        if not self.active:
            return
        if "step" in scalars:
            raise ValueError("'step' is reserved for the step number")
        row = {"step": int(step)} | {k: _to_json_number(k, v) for k, v in scalars.items()}
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # kept open: one flush per line
        # NaN/inf are written as NaN/Infinity (Python's json reads them back): a diverged run
        # should show the NaN, not fail to log it.
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tbx is not None:
            if self._tb is None:
                self._tb = self._tbx.SummaryWriter(
                    self.tb_dir, purge_step=self._purge_step, flush_secs=30,
                    filename_suffix=f".{os.getpid()}.{next(_WRITER_IDS)}")
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, global_step=row["step"])

    def flush(self) -> None:
        """Push TensorBoard's buffered events to disk (the JSON lines already are)."""
        if self._tb is not None:
            self._tb.flush()

    def _close_files(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def close(self) -> None:
        """Flush and close both outputs; a later :meth:`write` reopens them."""
        self._close_files()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The rows of a metrics file (or of ``path/metrics.jsonl`` for a workdir), in file order.

    A torn last line (the process died mid-write) is skipped; a malformed line elsewhere is an
    error naming the file and line.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                break
            raise ValueError(f"{path}:{i}: not a JSON line: {e}") from e
    return rows


# --- progress --------------------------------------------------------------------------------

def _format_scalars(scalars: Mapping[str, Any] | None) -> str:
    if not scalars:
        return ""
    parts = []
    for k, v in scalars.items():
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            parts.append(f"{k}={int(v)}")  # a count (sentences, rows/<term>) in full
            continue
        try:
            parts.append(f"{k}={float(v):.4g}")
        except (TypeError, ValueError):
            parts.append(f"{k}={v}")
    return " ".join(parts)


def _format_eta(seconds: float) -> str:
    return tqdm.format_interval(int(seconds)) if math.isfinite(seconds) else "?"


class ProgressBar:
    """Steps/s, ETA and the latest losses for a train loop.

    On a terminal: a tqdm bar. Otherwise (a log file, a batch job) one log line every
    ``log_every`` steps, with the rate measured over those steps only, so the first line's
    compile time does not skew later ones. tqdm has no such mode: off a terminal it either
    disables itself (``disable=None``) or writes ``\r``-separated redraws into the file.

    ``update(step, scalars)`` takes the number of completed steps, not an increment, so it can be
    called at any cadence and after a resume (``initial`` = the restored step).
    """

    def __init__(self, total: int, *, initial: int = 0, log_every: int = 100,
                 stream: IO[str] | None = None, enabled: bool = True):
        self.total = total
        self.log_every = max(1, log_every)
        self.enabled = enabled
        self._n = initial
        self._last_log_n = initial
        self._last_log_t = time.perf_counter()
        stream = stream if stream is not None else sys.stderr
        self._tqdm = (tqdm(total=total, initial=initial, file=stream, unit="step",
                           dynamic_ncols=True, smoothing=0.1)
                      if enabled and _isatty(stream) else None)

    def update(self, step: int, scalars: Mapping[str, Any] | None = None) -> None:
        """Advance to ``step`` completed steps, showing ``scalars`` (latest losses)."""
        if not self.enabled:
            return
        if self._tqdm is not None:
            if scalars:
                self._tqdm.set_postfix_str(_format_scalars(scalars), refresh=False)
            self._tqdm.update(step - self._n)
        elif step - self._last_log_n >= self.log_every or step >= self.total:
            now = time.perf_counter()
            dt = now - self._last_log_t
            rate = (step - self._last_log_n) / dt if dt > 0 else math.nan
            eta = (self.total - step) / rate if rate > 0 else math.nan
            pct = 100.0 * step / self.total if self.total else 100.0
            log.info("step %d/%d (%.1f%%) %.2f step/s ETA %s %s", step, self.total, pct, rate,
                     _format_eta(eta), _format_scalars(scalars))
            self._last_log_n, self._last_log_t = step, now
        self._n = step

    def close(self) -> None:
        """End the bar (leaves the final line on the terminal)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
