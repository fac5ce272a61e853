"""benchmarks/grad_cache.py --tiny end to end on the CPU: every point, the interleaved timing and
the compile-only search come back from their workers, the chunked step's XLA estimate grows less
with the batch than the unchunked one's (what gradient caching is for), and the section and the
figure are written where we say (a temporary folder), not into the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests import train_utils as tu

SCRIPT = os.path.join(tu.ROOT, "benchmarks", "grad_cache.py")
TITLE = "## Gradient caching: memory and step time vs batch, CPU (benchmarks/grad_cache.py)"


def _env() -> dict[str, str]:
    e = tu.env()
    # Faster XLA compiles: the test checks what the script reports, not how fast the code is.
    e["XLA_FLAGS"] += (" --xla_backend_optimization_level=0"
                       " --xla_llvm_disable_expensive_passes=true")
    return e


@pytest.mark.slow  # 7 worker processes of ~11 s each (imports and tracing): ~1.5 min
def test_tiny_run_reports_every_point_and_caching_flattens_the_estimate(tmp_path):
    markdown, png, save = tmp_path / "BENCHMARKS.md", tmp_path / "out" / "gc.png", \
        tmp_path / "points.jsonl"
    markdown.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", f"--markdown={markdown}",
                           f"--png={png}", f"--save={save}"], env=_env(), capture_output=True,
                          text=True, timeout=600, cwd=str(tmp_path))
    wall = time.perf_counter() - t0
    print(f"\ngrad_cache.py --tiny: {wall:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    rs = [json.loads(line) for line in save.read_text().splitlines()]
    points = {(r["batch"], r["chunk"]): r for r in rs if r["kind"] == "point"}
    assert sorted(points) == [(8, 0), (8, 4), (16, 0), (16, 4)]
    for p in points.values():  # every point compiled and ran its 2 steps
        assert p["ran"] and len(p["step_s"]) == 2 and p["peak_rss"] > 0
        assert p["estimate"] == pytest.approx(
            p["arguments"] + p["temporaries"] + p["outputs"] - p["aliased"])
    grow = {c: points[16, c]["estimate"] - points[8, c]["estimate"] for c in (0, 4)}
    assert grow[4] < grow[0] / 4, grow  # caching: ~flat; without it: activations per sentence

    (timing,) = [r for r in rs if r["kind"] == "timing"]
    assert len(timing["chunked"]) == len(timing["unchunked"]) == 1
    (search,) = [r for r in rs if r["kind"] == "search"]
    limit = search["fit_gib"] * 1024
    by = {t["chunked"]: t for t in search["results"]}
    assert by[True]["largest"] >= by[False]["largest"]
    for t in search["results"]:
        assert t["largest"] % 4 == 0 and t["largest_mib"] <= limit
        assert t["over"] is None or t["probes"][str(t["over"])] > limit

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\n\nkept\n")
    body = text[text.index(TITLE):]
    for row in ("| simcse | 8 | 4 |", "| simcse | 16 | 4 |", "| simcse | 8 | off |",
                "| simcse | 16 | off |", "| 8 | ", "| simcse | chunk 4 |", "| simcse | off |",
                "**Done-when figure** (batch 16, chunk 4, SimCSE)", "![gradient caching"):
        assert row in body, row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
