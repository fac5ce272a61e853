"""Shared by the benchmark scripts: machine/version facts and BENCHMARKS.md section writing."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def machine() -> str:
    """One line: CPU model, cores, memory, and the accelerator JAX sees."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    import jax

    dev = jax.devices()[0]
    accel = "" if dev.platform == "cpu" else f"; JAX device: {dev.device_kind}"
    return f"{cpu}, {os.cpu_count()} cores{mem}{accel}"


def versions(*packages: str) -> str:
    out = []
    for p in packages:
        try:
            out.append(f"{p} {metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(f"{p} (not installed)")
    return ", ".join(out)


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (sorted)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_section(title: str, body: str, path: str = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md, leaving the others alone."""
    header = f"## {title}"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    section = f"{header}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
