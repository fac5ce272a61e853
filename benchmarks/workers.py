"""A measurement in a fresh process: the worker prints one ``RESULT {json}`` line, the parent
reads it back. A fresh process per measurement keeps one side's compiled programs, allocator and
peak memory out of the next side's figures."""

from __future__ import annotations

import json
import subprocess
from typing import Any

RESULT = "RESULT "  # prefix of a worker's one JSON line on stdout


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), in MiB; NaN where /proc has none.

    Not ``getrusage().ru_maxrss``: Linux carries that over fork+exec, so a worker would report
    its parent's peak whenever that is larger.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def emit(result: dict[str, Any]) -> None:
    """The worker's side: its one result line."""
    print(RESULT + json.dumps(result), flush=True)


def run_worker(cmd: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    """The parent's side: run ``cmd`` to the end and return its result line's JSON. Raises
    ``RuntimeError`` naming ``what`` with the worker's stderr when it fails or prints none."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT)), None)
    if proc.returncode or line is None:
        why = f"exit status {proc.returncode}" if proc.returncode else "no result line"
        raise RuntimeError(f"{what} failed ({why}):\n{proc.stderr[-4000:]}")
    return json.loads(line[len(RESULT):])
