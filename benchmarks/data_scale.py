"""Input at pre-training scale: what reading the corpus costs as it grows, today vs prepared.

    python benchmarks/data_scale.py --sizes=1e4,1e5,1e6,1e7 [--old] [--new]
        [--measures=startup,prepare,pipeline,step] [--write] [--data_dir=../shared/data]

Corpus: ``--sizes`` realistic sentences per point, written once to ``--bench_dir`` (default
/work/bench_data, outside the repository: the texts come from public data sets the project does
not ship) as ``corpus_{N}.csv`` (columns ``text``, ``valence``, ``label``). Each row is a real
text, or the first half of one real text joined to the second half of another, drawn with a
seeded generator from the shipped VADER rated sentences and, when ``--data_dir`` has them,
GoEmotions train, GLUE SST-2 train and EmoBank. A whole VADER or EmoBank text keeps its rating
(on [0, 1], as the readers scale it) and a whole SST-2 phrase its label; every other cell is
empty. Rows are made in chunks and streamed to disk, so 10^7 rows (~0.7 GB) never sit in memory.

Sides, each point in a fresh process (a supervisor samples the process tree's RSS and reads the
largest process's peak, ``ru_maxrss``, after it exits):

* ``--old``: today's pipeline as of commit ``--old_commit`` (214e1c3, the last before the
  rewrite), run from its own tree (``--old_tree``; made with ``git archive`` when missing) with
  this venv: ``main.py --config=configs/simcse.py`` on the CSV, where every start reads and
  tokenises the whole corpus. A size whose peak, extrapolated from the smaller ones, does not
  fit in the memory available (less a margin for the others on the machine) is skipped, and
  recorded as such; with ``--old_cap_gib`` one within 1.5x of that cap is run and killed at it
  (what it reached, and when, is the measurement);
* ``--new``: ``python -m softmcl_jax.data.prepare --workers=N`` (sentences/s, peak RSS), then
  the same training start from the prepared folder (``data.source=prepared``; ``--repeats``
  starts a size, the one of median time kept), and the trainer's Grain pipeline alone at the
  largest size: ``loop.build_pipeline`` for configs/softmcl.py (packing, MLM masks, batches put
  on the device), the largest folder mixed with the prepared VADER sentences (the rated rows the
  default job's sentence term needs; the corpus's sparse ratings cannot be read: the CSV reader
  refuses an empty cell), drained for ``--pipeline_batches`` batches after the first.

Measures: ``startup`` times the run from exec to the end of its first step (the step blocked
on), with the data part (``loop.build_pipeline``) and the first step (XLA compile + run) apart,
and reads the peak RSS after step 1 and after step 3 (three SimCSE steps); ``step`` is the
default job's (configs/softmcl.py, batch 32) steps/s, the median of 5 steps on batch shapes
already compiled, which the pipeline must outrun 10x. Raw results accumulate in ``--results``
(benchmarks/results/data_scale.json, one record per measure, side and size, the newest kept);
``--write`` renders them into the "Input at scale" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Only the benchmarks folder: ROOT must not go on sys.path here, or a worker meant to run the
# old tree's code (PYTHONPATH=--old_tree) would import this checkout's softmcl_jax instead.
sys.path.insert(0, HERE)
from workers import emit, peak_rss_mib, run_worker  # noqa: E402

SECTION = "Input at scale (prepare, start-up, pipeline)"
OLD_COMMIT = "214e1c3"  # the last commit before the prepared-data rewrite
DEFAULT_BENCH_DIR = "/work/bench_data"
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data")
RESULTS = os.path.join(HERE, "results", "data_scale.json")
T0_ENV = "DATA_SCALE_T0"  # the supervisor's wall clock just before it started the measured cmd
CHUNK = 1 << 16  # corpus rows drawn per generator call (fixed: the corpus depends on it)
JOIN_FRACTION = 0.5  # rows that join two texts' halves; the rest are one real text
GIB = 1024.0  # MiB per GiB
# Goals of the issue "Input at pre-training scale".
PREPARE_RSS_GOAL_MIB = 2 * GIB
STARTUP_GOAL_S = 10.0
FLAT = 1.10  # "flat in N": the largest size's peak within 1.10x of the smallest size's
PIPELINE_GOAL_X = 10.0
SIMCSE_RATIO_GOAL = 1.10
# The default job's steps/s: the median of this many steps on an already compiled batch shape,
# within at most STEP_MAX_STEPS steps.
STEP_REPEATS = 5
STEP_MAX_STEPS = 40
# Memory kept free for the other jobs on the machine when deciding whether an old-side size fits.
MARGIN_MIB = 4 * GIB


# ------------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class Pool:
    """Real texts of one data set, with the rating or label a whole text keeps."""

    name: str
    texts: list[str]
    valence: list[float | None]
    label: list[int | None]


def _clean(text: str) -> str:
    # One line of single-spaced words: CSV rows stay one line each, and the joined halves below
    # split on the same spaces.
    return " ".join(text.split())


def _pool(name: str, items: Iterator[tuple[str, float | None, int | None]]) -> Pool:
    texts, valence, label = [], [], []
    for text, v, y in items:
        text = _clean(text)
        if text:
            texts.append(text)
            valence.append(v)
            label.append(y)
    return Pool(name, texts, valence, label)


def _tsv(path: str, skip_header: bool) -> Iterator[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if skip_header:
            next(rows, None)
        yield from rows


def load_pools(data_dir: str | None) -> list[Pool]:
    """The real texts rows are drawn from: VADER always; the public sets of ``data_dir`` (read
    here with ``csv``, not the project's readers, so the corpus stays the same whatever the
    readers become) where present."""
    from softmcl_jax.data import load_vader_sentences

    pools = [_pool("vader", ((s.text, s.valence, None) for s in load_vader_sentences()))]
    if not data_dir or not os.path.isdir(data_dir):
        return pools
    goemotions = os.path.join(data_dir, "goemotions", "train.tsv")
    if os.path.exists(goemotions):  # text, label ids, comment id; no header
        pools.append(_pool("goemotions", ((r[0], None, None) for r in _tsv(goemotions, False)
                                          if r)))
    sst = [os.path.join(data_dir, "sst2", f"glue_train_{p}.tsv") for p in ("part", "rest")]
    if all(os.path.exists(p) for p in sst):  # sentence, label; header; together GLUE's train
        pools.append(_pool("sst2", ((r[0], None, int(r[1])) for p in sst
                                    for r in _tsv(p, True) if len(r) == 2)))
    emobank = os.path.join(data_dir, "emobank", "emobank.csv")
    if os.path.exists(emobank):  # id,split,V,A,D,text; V on 1..5, scaled as read_emobank does
        with open(emobank, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        pools.append(_pool("emobank", ((r["text"], (float(r["V"]) - 1) / 4, None)
                                       for r in rows if r["split"] in ("train", "dev"))))
    return pools


def iter_rows(n: int, seed: int, pools: Sequence[Pool]) -> Iterator[tuple[str, str, str]]:
    """``n`` rows ``(text, valence, label)`` as CSV cells, one chunk of draws at a time.

    Deterministic in ``(seed, pools)``; the draws come in fixed chunks, so the first ``m`` rows
    of any ``n >= m`` are the same rows (every size is a prefix of the larger ones).
    """
    texts = [t for p in pools for t in p.texts]
    valence = [v for p in pools for v in p.valence]
    label = [y for p in pools for y in p.label]
    # Each text's halves at its middle word; a one-word text is both halves.
    words = [t.split(" ") for t in texts]
    first = [" ".join(w[: max(1, len(w) // 2)]) for w in words]
    second = [" ".join(w[len(w) // 2:]) for w in words]
    del words
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        join = rng.random(CHUNK) < JOIN_FRACTION
        a = rng.integers(0, len(texts), CHUNK)
        b = rng.integers(0, len(texts), CHUNK)
        for i in range(min(CHUNK, n - done)):
            if join[i]:
                yield f"{first[a[i]]} {second[b[i]]}", "", ""
            else:
                v, y = valence[a[i]], label[a[i]]
                yield texts[a[i]], "" if v is None else f"{v:.4f}", "" if y is None else str(y)
        done += CHUNK


def write_corpus(path: str, n: int, seed: int, pools: Sequence[Pool]) -> dict[str, Any]:
    """Stream ``n`` rows to ``path`` (via a temporary file, renamed when complete) and return
    its description: size, sha256, rated and labelled rows, the pools drawn from."""
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    rated = labelled = 0
    tmp = f"{path}.part"
    with open(tmp, "wb") as f:
        rows = iter_rows(n, seed, pools)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("text", "valence", "label"))
        while True:
            chunk = list(itertools.islice(rows, CHUNK))
            if not chunk:
                break
            rated += sum(1 for r in chunk if r[1])
            labelled += sum(1 for r in chunk if r[2])
            writer.writerows(chunk)
            data = buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
            digest.update(data)
            f.write(data)
        data = buf.getvalue().encode("utf-8")  # the header alone, when n == 0
        digest.update(data)
        f.write(data)
    os.replace(tmp, path)
    return {"n": n, "seed": seed, "bytes": os.path.getsize(path), "sha256": digest.hexdigest(),
            "rated": rated, "labelled": labelled, "write_s": time.perf_counter() - t0,
            "pools": {p.name: len(p.texts) for p in pools}}


def ensure_corpus(bench_dir: str, n: int, seed: int, data_dir: str | None) -> tuple[str, dict]:
    """``bench_dir/corpus_{n}.csv``, written unless one from the same seed and pools is there
    (its description sits beside it as ``.json``)."""
    os.makedirs(bench_dir, exist_ok=True)
    path = os.path.join(bench_dir, f"corpus_{n}.csv")
    pools = load_pools(data_dir)
    want = {p.name: len(p.texts) for p in pools}
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        if (meta["seed"] == seed and meta["pools"] == want and os.path.exists(path)
                and os.path.getsize(path) == meta["bytes"]):
            return path, meta
    except (OSError, ValueError, KeyError):
        pass
    meta = write_corpus(path, n, seed, pools)
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    return path, meta


# ------------------------------------------------------------------- the measured process


def _session_rss_mib(sid: int) -> float:
    """Total VmRSS of the processes of session ``sid`` (the measured command and whatever it
    started: prepare's workers). Shared pages count once per process, so it is an upper bound."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            # Fields after the ")" that ends the command name: state ppid pgrp session ...
            if int(stat.rsplit(")", 1)[1].split()[3]) != sid:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def supervise(cmd: list[str], cap_mib: float, interval: float = 0.2) -> dict[str, Any]:
    """Run ``cmd`` in its own session and return its wall time, exit status, peaks and its own
    result line. The peaks: ``peak_rss_mib`` is the largest process's (``ru_maxrss`` of this
    process's children: exact, and this supervisor is small, so its own peak, which Linux
    carries into a child over fork+exec, is not the figure), ``tree_rss_peak_mib`` the sampled
    sum over the session. Past ``cap_mib`` (sampled) the session is killed: a point that would
    push the machine's other jobs out of memory is stopped, not measured."""
    env = dict(os.environ)
    env[T0_ENV] = repr(time.time())
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def drain(name: str) -> None:
        for line in getattr(proc, name):
            out[name].append(line)

    readers = [threading.Thread(target=drain, args=(k,), daemon=True) for k in out]
    for r in readers:
        r.start()
    tree_peak, killed = 0.0, False
    while proc.poll() is None:
        tree_peak = max(tree_peak, _session_rss_mib(proc.pid))
        if tree_peak > cap_mib and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(interval)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    line = next((x for x in out["stdout"] if x.startswith("RESULT ")), None)
    return {"rc": proc.returncode, "wall_s": wall, "killed": killed, "cap_mib": cap_mib,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "tree_rss_peak_mib": tree_peak,
            "child": json.loads(line[len("RESULT "):]) if line else None,
            "stderr_tail": "".join(out["stderr"])[-3000:]}


def measured(cmd: list[str], env: dict[str, str], what: str, cap_mib: float) -> dict[str, Any]:
    """``cmd`` run under :func:`supervise` in a fresh supervisor process. Raises naming
    ``what`` when it fails (a kill at the cap is a result, not a failure)."""
    spec = json.dumps({"cmd": cmd, "cap_mib": cap_mib})
    res = run_worker([sys.executable, os.path.abspath(__file__), f"--supervise={spec}"], env,
                     f"supervisor of {what}")
    if res["rc"] != 0 and not res["killed"]:
        raise RuntimeError(f"{what} failed (exit status {res['rc']}):\n{res['stderr_tail']}")
    return res


class _CountedStep:
    """The trainer's step function, blocked on and timed at every call. It stops the worker
    (result line, then exit: no final checkpoint or export, which are no start-up cost) after
    ``stop`` calls, or, with ``repeats``, once that many steps ran on a batch shape already
    seen (packing gives a few row counts, each compiled on its first batch: those steps time
    XLA, not the step)."""

    def __init__(self, fn: Any, marks: dict[str, Any], t0: float, stop: int, repeats: int = 0):
        self._fn, self._marks, self._t0 = fn, marks, t0
        self._stop, self._repeats = stop, repeats
        self._calls = 0
        self._shapes: set[tuple] = set()

    def __getattr__(self, name: str) -> Any:  # e.g. step_fn.constants, read by the loop
        return getattr(self._fn, name)

    def __call__(self, state: Any, batch: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        import jax

        m = self._marks
        start = time.time()
        if self._calls == 0:
            m["first_batch_s"] = start - self._t0
            m["rss_before_step_mib"] = peak_rss_mib()
        shape = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        seen = shape in self._shapes
        self._shapes.add(shape)
        out = self._fn(state, batch, *args, **kwargs)
        jax.block_until_ready(out)
        self._calls += 1
        m.setdefault("step_s", []).append(time.time() - start)
        m.setdefault("step_shape_seen", []).append(seen)
        m[f"rss_step{self._calls}_mib"] = peak_rss_mib()
        if self._calls == 1:
            m["first_step_s"] = time.time() - self._t0
        if (self._calls == self._stop
                or (self._repeats and sum(m["step_shape_seen"]) >= self._repeats)):
            emit(m)
            sys.stderr.flush()
            os._exit(0)
        return out


def train_worker(spec: dict[str, Any]) -> None:
    """Run ``spec["main"]`` (a tree's main.py) with ``spec["argv"]`` in this process, timing
    from the supervisor's start of it (``T0_ENV``), through ``loop.build_pipeline`` (the data
    part of start-up), to ``spec["steps"]`` steps."""
    t0 = float(os.environ.get(T0_ENV, time.time()))
    import runpy

    import softmcl_jax
    from softmcl_jax import loop, train

    marks: dict[str, Any] = {"softmcl_jax": os.path.dirname(softmcl_jax.__file__),
                             "import_s": time.time() - t0}
    build, setup = loop.build_pipeline, train.setup_step

    def timed_build(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        marks["data_start_s"] = start - t0
        pipeline = build(*args, **kwargs)
        marks["data_s"] = time.time() - start
        marks["rss_data_mib"] = peak_rss_mib()
        return pipeline

    def counted_setup(*args: Any, **kwargs: Any) -> Any:
        *rest, step_fn = setup(*args, **kwargs)  # (init, abstract, shardings, step_fn)
        return (*rest, _CountedStep(step_fn, marks, t0, int(spec["steps"]),
                                    int(spec.get("repeats", 0))))

    loop.build_pipeline, train.setup_step = timed_build, counted_setup
    sys.argv = [spec["main"], *spec["argv"]]
    try:
        runpy.run_path(spec["main"], run_name="__main__")
    except SystemExit as e:
        raise RuntimeError(f"main.py exited ({e.code}) before step {spec['steps']}") from None
    raise RuntimeError(f"main.py returned before step {spec['steps']}")


# --------------------------------------------------------------------------- the sides


def parse_sizes(text: str) -> list[int]:
    return sorted({int(float(x)) for x in text.split(",") if x.strip()})


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def old_tree(path: str, commit: str) -> str:
    """The old code's tree: ``path`` as it is, else the commit's files extracted there."""
    if not os.path.exists(os.path.join(path, "softmcl_jax", "loop.py")):
        os.makedirs(path, exist_ok=True)
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
    return path


def tree_commit(tree: str, fallback: str) -> str:
    proc = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    head = proc.stdout.strip() if proc.returncode == 0 else ""
    if tree != ROOT:
        # An archive extracted inside another repository answers with that repository's HEAD.
        return head if head and head.startswith(fallback[:7]) else fallback
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "softmcl_jax",
                            "main.py", "configs"], capture_output=True, text=True).stdout
    # Others edit the tree while it is measured: name what was not committed yet.
    paths = [line[3:] for line in dirty.splitlines() if line.strip()]
    return head + (f" (+ uncommitted {', '.join(paths)})" if paths else "")


def child_env(tree: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=tree, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def csv_overrides(path: str) -> list[str]:
    # SimCSE reads the text alone; the old CSV reader refuses an empty valence cell, so the
    # sparse ratings are not asked for.
    return ["--config.data.source=csv", f"--config.data.path={path}",
            "--config.data.text_column=text"]


RUN_OVERRIDES = ["--config.probe.enabled=False", "--config.export.enabled=False"]


def startup(tree: str, config: str, data: list[str], extra: list[str], steps: int,
            what: str, cap_mib: float, repeats: int = 0) -> dict[str, Any]:
    """One training start in a fresh process: exec to the end of step ``steps`` (or of the
    ``repeats``-th step on an already compiled shape)."""
    workdir = tempfile.mkdtemp(prefix="data_scale_run_")
    try:
        spec = {"main": os.path.join(tree, "main.py"), "steps": steps, "repeats": repeats,
                "argv": [f"--config={os.path.join(tree, 'configs', config)}",
                         f"--workdir={workdir}", *RUN_OVERRIDES, *data,
                         f"--config.total_steps={steps}", *extra]}
        cmd = [sys.executable, os.path.abspath(__file__), f"--train_worker={json.dumps(spec)}"]
        res = measured(cmd, child_env(tree), what, cap_mib)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if res["killed"]:
        return {"killed_at_mib": res["cap_mib"], "wall_s": res["wall_s"],
                "tree_rss_peak_mib": res["tree_rss_peak_mib"]}
    return {"wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
            "tree_rss_peak_mib": res["tree_rss_peak_mib"], **res["child"]}


def old_estimate_mib(records: list[dict], n: int) -> float:
    """An old-side start's peak at ``n`` sentences: each measured peak (after the data part,
    after 3 steps) extrapolated linearly in N from the old side's smallest and largest measured
    sizes, the larger of the two (at 10^4 the compile's memory dominates, at 10^5 the
    tokeniser's ~16 KiB a sentence does); without two sizes, 1.5 GiB + 16 KiB a sentence (the
    issue's figure)."""
    measured = sorted((r["n"], r) for r in records if r["measure"] == "startup"
                      and r["side"] == "old" and "rss_step3_mib" in r)
    if len(measured) < 2 or measured[-1][0] == measured[0][0]:
        return 1.5 * GIB + 16 / 1024 * n
    (n0, r0), (n1, r1) = measured[0], measured[-1]
    return max(r1[k] + (r1[k] - r0[k]) / (n1 - n0) * (n - n1)
               for k in ("rss_data_mib", "rss_step3_mib"))


# ----------------------------------------------------------------------------- results


def load_results(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["records"]


def save_record(path: str, record: dict[str, Any]) -> None:
    """Add ``record`` to the results file, replacing the one of the same measure, side, size
    and overrides (the newest measurement of a point is the one kept)."""
    key = ("measure", "side", "n", "extra")
    records = [r for r in load_results(path)
               if tuple(r.get(k) for k in key) != tuple(record.get(k) for k in key)]
    records.append(record)
    records.sort(key=lambda r: (r["measure"], r["side"], r["n"]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"about": "benchmarks/data_scale.py raw results; BENCHMARKS.md renders them",
                   "records": records}, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _n(n: int) -> str:
    e = math.log10(n) if n > 0 else 0
    return f"10^{e:.0f}" if n > 0 and e == int(e) else f"{n:,}"


def _cli(n: int) -> str:
    e = math.log10(n) if n > 0 else 0
    return f"1e{e:.0f}" if n > 0 and e == int(e) else str(n)


def _gib(mib: float | None) -> str:
    if mib is None:
        return "–"
    return f"{mib / GIB:.2f} GiB" if mib >= GIB else f"{mib:.0f} MiB"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} s"


def _short_paths(text: str) -> str:
    """Folder names without the machine's paths to them."""
    return re.sub(r"/\S+/", "", text)


def _rss1(r: dict[str, Any]) -> float:
    """Peak RSS after step 1: the median over a point's repeated starts where it has them."""
    return statistics.median(r.get("runs_rss_step1_mib") or [r["rss_step1_mib"]])


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def render(records: list[dict[str, Any]], machine: str) -> str:
    """The BENCHMARKS.md section: one table per measure, the goals with met / not met."""
    by = {(r["measure"], r["side"], r["n"]): r for r in records}
    sizes = sorted({r["n"] for r in records if r["measure"] != "step"})
    commits: dict[str, list[str]] = {}
    for r in records:
        if r["side"] != "-":
            where = commits.setdefault(f"{r['side']} {r['measure']}", [])
            if r["commit"] not in where:
                where.append(r["commit"])
    code = "; ".join(f"{k} at {', '.join(v)}" for k, v in sorted(commits.items()))
    loads = [r["load1"] for r in records if "load1" in r and r["measure"] != "corpus"]
    lines = [
        f"`python benchmarks/data_scale.py --sizes={','.join(_cli(n) for n in sizes)} --write` "
        f"(raw: `benchmarks/results/data_scale.json`). Machine: {machine}. Code measured: "
        f"{code} "
        "(old = today's pipeline before the rewrite, run from its own "
        "tree; new = prepared ArrayRecord shards read through Grain). Every point is a fresh "
        "process; peak RSS is the largest process's `ru_maxrss` (for prepare also the sampled "
        "sum over its worker processes). The machine is shared with other jobs: times carry "
        "noise"
        + (f" (1-minute load average at the points: {min(loads):.1f} to {max(loads):.1f}, "
           f"on {os.cpu_count()} cores)." if loads else "."),
        "",
    ]
    corpus = [r for r in records if r["measure"] == "corpus"]
    if corpus:
        pools = corpus[-1]["pools"]
        lines += [
            "Corpus (`corpus_{N}.csv`, outside the repository): each row one real text or two "
            "real texts' halves joined (1:1), seeded, from "
            + ", ".join(f"{k} ({v:,})" for k, v in pools.items())
            + "; a whole VADER/EmoBank text keeps its rating and a whole SST-2 phrase its "
            "label.", "",
            "| N | CSV size | rated rows | labelled rows | written in |",
            "|---|---|---|---|---|",
            *(f"| {_n(r['n'])} | {r['bytes'] / 2**20:,.0f} MiB | {r['rated']:,} | "
              f"{r['labelled']:,} | {r['write_s']:.0f} s |" for r in corpus),
            "",
        ]
    # -- prepare, beside what today's pipeline does at every start instead
    prep_rows, peaks = [], []
    for n in sizes:
        p, o = by.get(("prepare", "new", n)), by.get(("startup", "old", n))
        if p is None and (o is None or not ("data_s" in o or "killed_at_mib" in o)):
            continue
        cells = ["–"] * 4 if p is None else [
            _s(p["wall_s"]), f"{n / p['wall_s']:,.0f}", _gib(p["peak_rss_mib"]),
            _gib(p["tree_rss_peak_mib"])]
        if o is not None and "killed_at_mib" in o:
            cells += [f"killed at the cap after {_s(o['wall_s'])}",
                      "> " + _gib(o["killed_at_mib"])]
        else:
            cells += (["–", "–"] if o is None or "data_s" not in o else
                      [f"{n / o['data_s']:,.0f}", _gib(o.get("rss_data_mib"))])
        prep_rows.append(f"| {_n(n)} | " + " | ".join(cells) + " |")
        if p is not None:
            peaks.append(p["tree_rss_peak_mib"])
    prep_ok = (None if not peaks else
               max(peaks) <= PREPARE_RSS_GOAL_MIB and peaks[-1] <= FLAT * peaks[0])
    workers = next((r["workers"] for r in records if r["measure"] == "prepare"), "N")
    if prep_rows:
        lines += [
            f"**Prepare** (`python -m softmcl_jax.data.prepare --workers={workers}`, once per "
            "corpus) beside today's load + tokenise + arrays, which every start repeats "
            "(`loop.build_pipeline` at the old commit; its RSS is the process's peak when it "
            "returns, the model already loaded). Goal: prepare's peak RSS flat in N and "
            f"<= 2 GiB at 10^7: {_met(prep_ok)}.", "",
            "| N | prepare: wall | prepare: sentences/s | prepare: peak RSS, largest process "
            "| prepare: peak RSS, all processes (sampled sum) | today, every start: "
            "sentences/s | today: peak RSS after it |", "|---|---|---|---|---|---|---|",
            *prep_rows, "",
        ]
    # -- start-up
    rows, new_starts = [], []
    for n in sizes:
        cells = []
        for side in ("old", "new"):
            r = by.get(("startup", side, n))
            if r is None:
                cells += ["–"] * 3
            elif "skipped" in r:
                cells += [f"not run: {r['skipped']}", "–", "–"]
            elif "killed_at_mib" in r:
                cells += [f"killed at the cap, {_gib(r['killed_at_mib'])}, after "
                          f"{_s(r['wall_s'])} (peak estimated ~{_gib(r.get('estimate_mib'))})",
                          "> " + _gib(r["killed_at_mib"]), "–"]
            else:
                cells += [f"{_s(r['first_step_s'])} (data {_s(r['data_s'])}, first step "
                          f"{_s(r['step_s'][0])})", _gib(_rss1(r)), _gib(r["rss_step3_mib"])]
                if side == "new":
                    new_starts.append(r)
        if any(c != "–" for c in cells):
            rows.append(f"| {_n(n)} | " + " | ".join(cells) + " |")
    verdict = "not measured"
    if new_starts:
        first, last = new_starts[0], new_starts[-1]
        times = [r["first_step_s"] for r in new_starts]
        batch_in_hand = [r["first_batch_s"] for r in new_starts]
        compiles = [r["step_s"][0] for r in new_starts]
        rss_x = _rss1(last) / _rss1(first)
        time_x = last["first_step_s"] / first["first_step_s"]
        verdict = (
            f"<= {STARTUP_GOAL_S:.0f} s: {_met(max(times) <= STARTUP_GOAL_S)} (new: "
            f"{min(times):.1f} to {max(times):.1f} s to step 1, of which the first step, "
            f"mostly its XLA compile, {min(compiles):.1f} to {max(compiles):.1f} s; the first "
            f"batch in hand at {min(batch_in_hand):.1f} to {max(batch_in_hand):.1f} s); flat "
            f"in N (within {FLAT:.2f}x from {_n(first['n'])} to {_n(last['n'])}): peak RSS "
            f"after step 1 {_gib(_rss1(first))} to {_gib(_rss1(last))}, {rss_x:.3f}x, "
            f"{_met(rss_x <= FLAT)}; time to step 1 {time_x:.2f}x, {_met(time_x <= FLAT)}")
        repeats = len(last.get("runs_first_step_s") or [0])
        if repeats > 1:
            verdict += (f". New starts: {repeats} a size, the run of median time to step 1 "
                        "shown, its peak RSS after step 1 the median of the runs")
    if rows:
        lines += [
            "**Training start-up to the first step** (`main.py --config=configs/simcse.py`, "
            "probe and export off; old: `data.source=csv` on the CSV; new: "
            "`data.source=prepared` on its folder): exec to the end of step 1, of it the data "
            "part (`loop.build_pipeline`) and the first step (XLA compile + run); peak RSS "
            f"after step 1 and after step 3. Goal: {verdict}.", "",
            "| N | old: to step 1 | old: peak RSS, 1 step | old: 3 steps | new: to step 1 | "
            "new: peak RSS, 1 step | new: 3 steps |", "|---|---|---|---|---|---|---|",
            *rows, "",
        ]
    # -- three SimCSE steps, ~1M vs 10k
    small, big = by.get(("startup", "new", 10_000)), None
    for n in sorted(sizes, reverse=True):
        r = by.get(("startup", "new", n))
        if r is not None and "rss_step3_mib" in r and 500_000 <= n <= 2_000_000:
            big = r
            break
    if small is not None and big is not None and "rss_step3_mib" in small:
        ratio = big["rss_step3_mib"] / small["rss_step3_mib"]
        lines += [
            f"**Three SimCSE steps**, peak RSS from a prepared folder of {_n(big['n'])} rows "
            f"vs 10^4: {_gib(big['rss_step3_mib'])} / {_gib(small['rss_step3_mib'])} = "
            f"{ratio:.2f}x. Goal: <= {SIMCSE_RATIO_GOAL:.2f}x: "
            f"{_met(ratio <= SIMCSE_RATIO_GOAL)} (today, from a CSV: 9.9 GiB at 554k vs 2.1 "
            "GiB at 10k, the issue's figures).", "",
        ]
    # -- the pipeline alone vs the default job's step
    pipes = [r for r in records if r["measure"] == "pipeline"]
    step = next((r for r in records if r["measure"] == "step"), None)
    if pipes or step:
        pipe = max(pipes, key=lambda r: r["n"]) if pipes else None
        ratio = pipe["batches_per_s"] / step["steps_per_s"] if pipe and step else None
        ok = None if ratio is None else ratio >= PIPELINE_GOAL_X
        parts = []
        others = [r for r in sorted(pipes, key=lambda r: r["n"]) if r is not pipe]
        if pipe:
            parts.append(f"the trainer's Grain pipeline alone (`loop.build_pipeline`, "
                         f"configs/softmcl.py: packing, MLM 15%) on the {_n(pipe['n'])}-row "
                         f"folder mixed with the prepared VADER sentences at weight "
                         f"{pipe.get('rated_weight', 0):g} (the rated rows the default job's "
                         f"sentence term needs), batch {pipe['batch_size']}, batches on the "
                         f"device ({_short_paths(pipe['describe'])}): "
                         f"**{pipe['batches_per_s']:,.1f} batches/s** "
                         f"over {pipe['batches']} batches after the first "
                         f"(first batch {_s(pipe['first_batch_s'])}, peak RSS "
                         f"{_gib(pipe['peak_rss_mib'])})"
                         + "".join(f"; the same at {_n(r['n'])} rows: "
                                   f"{r['batches_per_s']:,.1f} batches/s, first batch "
                                   f"{_s(r['first_batch_s'])}, peak RSS "
                                   f"{_gib(r['peak_rss_mib'])}" for r in others))
        if step:
            parts.append(f"the default job's step (configs/softmcl.py, batch "
                         f"{step['batch_size']}, {step['commit']}): "
                         f"**{step['steps_per_s']:.2f} steps/s** (median of "
                         f"{step['timed_steps']} steps on already compiled shapes)")
        lines += [
            "**Pipeline vs the default job's step**: " + "; ".join(parts)
            + (f"; ratio **{ratio:,.0f}x**" if ratio is not None else "")
            + f". Goal: >= {PIPELINE_GOAL_X:.0f}x: {_met(ok)}.", "",
        ]
    return "\n".join(lines).strip() + "\n"


# --------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--old", action="store_true", help="measure today's pipeline (old tree)")
    ap.add_argument("--new", action="store_true", help="measure the prepared path")
    ap.add_argument("--measures", default="startup,prepare,pipeline,step",
                    help="empty: measure nothing (with --write: render the stored results)")
    ap.add_argument("--write", action="store_true", help="render the section into --markdown")
    ap.add_argument("--markdown", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--bench_dir", default=DEFAULT_BENCH_DIR)
    ap.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                    help="the public data sets' folder; empty: VADER alone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--old_tree", default="/work/old_214e1c3")
    ap.add_argument("--old_commit", default=OLD_COMMIT)
    ap.add_argument("--workers", type=int, default=2, help="prepare's worker processes")
    ap.add_argument("--repeats", type=int, default=1,
                    help="new-side starts per size (the one of median time to step 1 is kept)")
    ap.add_argument("--pipeline_batches", type=int, default=200)
    ap.add_argument("--pipeline_rated", type=float, default=0.1,
                    help="the pipeline measure's mixture weight of the prepared VADER sentences "
                         "(rated), beside the largest corpus")
    ap.add_argument("--vader_rows", type=int, default=0,
                    help="VADER sentences prepared for the pipeline measure (0: all)")
    ap.add_argument("--old_max", type=float, default=float("inf"),
                    help="largest size the old side is tried at (it is also skipped where "
                         "its extrapolated peak does not fit)")
    ap.add_argument("--old_cap_gib", type=float, default=0.0,
                    help="run old-side sizes estimated up to 1.5x this over it, killed at it "
                         "(to measure that they exceed it); 0: skip those that do not fit")
    ap.add_argument("--extra", action="append", default=[],
                    help="a --config.x=y override for every run (tests: a tiny model)")
    ap.add_argument("--corpus_only", action="store_true", help="write the corpora and stop")
    ap.add_argument("--supervise", help=argparse.SUPPRESS)
    ap.add_argument("--train_worker", help=argparse.SUPPRESS)
    ap.add_argument("--pipeline_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.supervise:
        spec = json.loads(args.supervise)
        emit(supervise(spec["cmd"], spec["cap_mib"]))
        return
    if args.train_worker:
        train_worker(json.loads(args.train_worker))
        return
    if args.pipeline_worker:
        pipeline_worker(json.loads(args.pipeline_worker))
        return

    sys.path.insert(0, ROOT)  # the parent reads VADER and renders with this checkout's code
    sides = [s for s in ("old", "new") if getattr(args, s)] or ["old", "new"]
    measures = set(args.measures.split(","))
    sizes = parse_sizes(args.sizes)
    extra = list(args.extra)
    tag = " ".join(extra)

    def record(measure: str, side: str, n: int, commit: str, **fields: Any) -> dict[str, Any]:
        r = {"measure": measure, "side": side, "n": n, "extra": tag, "commit": commit,
             "when": datetime.datetime.now().isoformat(timespec="seconds"),
             "load1": round(os.getloadavg()[0], 2), **fields}
        save_record(args.results, r)
        print(json.dumps({k: v for k, v in r.items() if k != "step_s"}), flush=True)
        return r

    corpora = {}
    for n in sizes:
        corpora[n], meta = ensure_corpus(args.bench_dir, n, args.seed, args.data_dir or None)
        record("corpus", "-", n, "-", **{k: v for k, v in meta.items() if k != "n"})
    if args.corpus_only:
        return

    if "old" in sides and "startup" in measures:
        tree = old_tree(args.old_tree, args.old_commit)
        commit = tree_commit(tree, args.old_commit)
        for n in sizes:
            if n > args.old_max:
                record("startup", "old", n, commit, skipped=f"above --old_max={args.old_max:g}")
                continue
            est, avail = old_estimate_mib(load_results(args.results), n), mem_available_mib()
            cap = avail - MARGIN_MIB
            if args.old_cap_gib:
                cap = min(cap, args.old_cap_gib * GIB)
            # Past the cap a start is killed: run one that may fit, or, with --old_cap_gib, one
            # near enough that how far it gets says something.
            if est > (1.5 * cap if args.old_cap_gib else cap):
                record("startup", "old", n, commit, estimate_mib=est,
                       skipped=f"its peak would be ~{_gib(est)} (extrapolated), with "
                       f"{_gib(avail)} available on the machine and {_gib(MARGIN_MIB)} kept "
                       "for the other jobs")
                continue
            res = startup(tree, "simcse.py", csv_overrides(corpora[n]), extra, 3,
                          f"old start-up at {n}", cap_mib=cap)
            record("startup", "old", n, commit, estimate_mib=est, **res)
    if "step" in measures:
        # The default job's step, from the old tree when it is measured (stable code), else
        # from this checkout: either way the same step program on the shipped VADER data.
        tree = (old_tree(args.old_tree, args.old_commit) if "old" in sides else ROOT)
        commit = tree_commit(tree, args.old_commit)
        res = startup(tree, "softmcl.py", [], extra, STEP_MAX_STEPS, "the default job's steps",
                      cap_mib=mem_available_mib() - MARGIN_MIB, repeats=STEP_REPEATS)
        timed = [t for t, seen in zip(res["step_s"], res["step_shape_seen"], strict=True)
                 if seen]
        record("step", "old" if tree != ROOT else "new", 0, commit,
               batch_size=extra_value(extra, "batch_size", 32),
               steps_per_s=1 / statistics.median(timed), timed_steps=len(timed),
               step_s=res["step_s"], step_shape_seen=res["step_shape_seen"],
               peak_rss_mib=res["peak_rss_mib"])
    if "new" in sides:
        new_side(args, sizes, corpora, measures, extra, record)

    if args.write:
        import report

        text = render([r for r in load_results(args.results) if r.get("extra", "") == tag],
                      report.machine())
        report.write_section(SECTION, text, path=args.markdown)
        print(f"wrote the section to {args.markdown}")


def extra_value(extra: list[str], key: str, default: Any) -> Any:
    """The value an ``--extra`` override gives ``--config.<key>``, else ``default``."""
    for e in extra:
        name, _, value = e.partition("=")
        if name == f"--config.{key}":
            return type(default)(value)
    return default


def prepared_folder(bench_dir: str, n: int) -> str:
    return os.path.join(bench_dir, f"prepared_{n}")


# Prepared once for both configs: SimCSE reads no rating, but the default job (the pipeline
# measure) needs the VADER word lexicon, and a folder must agree with the run on its lexicon.
PREPARED_OVERRIDES = ["--config.data.lexicon=vader", "--config.probe.enabled=False"]


def new_side(args: argparse.Namespace, sizes: list[int], corpora: dict[int, str],
             measures: set[str], extra: list[str], record: Any) -> None:
    """Prepare, start-up from the prepared folder, and the pipeline alone at the largest size
    (this checkout's code)."""
    commit = tree_commit(ROOT, "")
    env = child_env(ROOT)
    for n in sizes:
        folder = prepared_folder(args.bench_dir, n)
        needed = "startup" in measures or ("pipeline" in measures and n == sizes[-1])
        missing = not os.path.exists(os.path.join(folder, "manifest.json"))
        if "prepare" in measures or (needed and missing):
            shutil.rmtree(folder, ignore_errors=True)  # prepare resumes: measure a fresh one
            cmd = [sys.executable, "-m", "softmcl_jax.data.prepare",
                   f"--config={os.path.join(ROOT, 'configs', 'simcse.py')}", f"--out={folder}",
                   *csv_overrides(corpora[n]), *PREPARED_OVERRIDES, *extra,
                   f"--workers={args.workers}"]
            res = measured(cmd, env, f"prepare at {n}", mem_available_mib() - MARGIN_MIB)
            if res["killed"]:
                record("prepare", "new", n, commit, workers=args.workers,
                       killed_at_mib=res["cap_mib"])
                continue
            record("prepare", "new", n, commit, workers=args.workers, wall_s=res["wall_s"],
                   peak_rss_mib=res["peak_rss_mib"],
                   tree_rss_peak_mib=res["tree_rss_peak_mib"],
                   folder_bytes=sum(os.path.getsize(os.path.join(folder, f))
                                    for f in os.listdir(folder)))
        if "startup" in measures:
            data = ["--config.data.source=prepared", f"--config.data.path={folder}",
                    *PREPARED_OVERRIDES]
            # Repeated, the run of median time kept: one start on a shared machine is noisy.
            runs = [startup(ROOT, "simcse.py", data, extra, 3, f"new start-up at {n}",
                            cap_mib=mem_available_mib() - MARGIN_MIB)
                    for _ in range(args.repeats)]
            runs.sort(key=lambda r: r["first_step_s"])
            record("startup", "new", n, commit, **runs[len(runs) // 2],
                   runs_first_step_s=[r["first_step_s"] for r in runs],
                   runs_rss_step1_mib=[r["rss_step1_mib"] for r in runs])
    if "pipeline" in measures:
        n, w = sizes[-1], args.pipeline_rated
        big, vader = prepared_folder(args.bench_dir, n), prepared_vader(args, env, extra)
        mixture = f"(({big!r}, {1 - w:g}), ({vader!r}, {w:g}))"
        spec = {"argv": [f"--config={os.path.join(ROOT, 'configs', 'softmcl.py')}",
                         f"--config.data.mixture={mixture}", *PREPARED_OVERRIDES, *extra],
                "batches": args.pipeline_batches}
        cmd = [sys.executable, os.path.abspath(__file__), f"--pipeline_worker={json.dumps(spec)}"]
        res = measured(cmd, env, f"the pipeline at {n}", mem_available_mib() - MARGIN_MIB)
        record("pipeline", "new", n, commit, peak_rss_mib=res["peak_rss_mib"], rated_weight=w,
               **res["child"])


def prepared_vader(args: argparse.Namespace, env: dict[str, str], extra: list[str]) -> str:
    """The shipped VADER sentences prepared for the default job (configs/softmcl.py), once:
    the rated rows its sentence-level term needs, mixed into the pipeline measure's batches
    (the generated corpus's sparse ratings are left out: the CSV reader refuses empty cells)."""
    folder = os.path.join(args.bench_dir, "prepared_vader")
    if not os.path.exists(os.path.join(folder, "manifest.json")):
        cmd = [sys.executable, "-m", "softmcl_jax.data.prepare",
               f"--config={os.path.join(ROOT, 'configs', 'softmcl.py')}", f"--out={folder}",
               *PREPARED_OVERRIDES, *extra, f"--workers={args.workers}"]
        if args.vader_rows:
            cmd.append(f"--config.data.max_examples={args.vader_rows}")
        measured(cmd, env, "prepare the VADER sentences", mem_available_mib() - MARGIN_MIB)
    return folder


def pipeline_worker(spec: dict[str, Any]) -> None:
    """The trainer's pipeline (``loop.build_pipeline``, batches put on the device) for the
    config ``spec["argv"]`` names, drained for ``spec["batches"]`` batches after the first; no
    model, no step."""
    t0 = float(os.environ.get(T0_ENV, time.time()))
    sys.path.insert(0, ROOT)
    import jax
    from absl import flags
    from ml_collections import config_flags

    from softmcl_jax import loop, sharding
    from softmcl_jax.data import prepare

    argv = ["pipeline_worker", *spec["argv"]]
    values = flags.FlagValues()
    # As main.py's flag; config_flags finds the overrides it defines in sys_argv (else sys.argv,
    # which is this worker's own command line).
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    tokenizer = prepare.load_tokenizer(config.model.name_or_path)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    pipeline = loop.build_pipeline(config, tokenizer, mesh)
    with pipeline.iterate(0) as batches:
        jax.block_until_ready(next(batches))
        first = time.time() - t0
        start = time.perf_counter()
        for _ in range(int(spec["batches"])):
            jax.block_until_ready(next(batches))
        dt = time.perf_counter() - start
    emit({"batches_per_s": spec["batches"] / dt, "batches": spec["batches"],
          "first_batch_s": first, "describe": pipeline.describe(),
          "batch_size": int(config.batch_size), "rss_mib": peak_rss_mib()})


if __name__ == "__main__":
    main()
