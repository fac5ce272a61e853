"""Gradient caching (``config.grad_cache.chunk``): memory and step time against the batch.

    python benchmarks/grad_cache.py                   # BENCHMARKS.md's run (~1 h, 2 shared cores)
    python benchmarks/grad_cache.py --tiny --no_write  # a tiny random BERT, 2 batches: smoke test
    python benchmarks/grad_cache.py --load /tmp/grad_cache_points.json   # re-render only

The trainer's own step (``train.setup_step``: one ``jax.jit``, state donated), fp32, the presets'
hyper-parameters (dropout on: it changes neither memory nor time), packed as by default, with
and without ``grad_cache.chunk = --chunk``. Every measurement runs in a fresh process
(workers.py), so one point's compiled programs and allocator never inflate the next one's.

* **Memory against the batch** (``--batches``, SimCSE; ``--softmcl_batches``, SoftMCL): XLA's
  estimate for the compiled step, ``memory_analysis()``'s ``argument_size_in_bytes +
  temp_size_in_bytes + output_size_in_bytes - alias_size_in_bytes`` (the state, batch and
  constants, XLA's temporary arena, and the outputs not written in place of the donated state:
  what must be live at once), and the process's peak RSS after compiling and running 2 steps,
  read raw (VmHWM, and ``getrusage(RUSAGE_SELF).ru_maxrss`` next to it), beside the peak RSS of
  a process that only loaded the model. A point runs only if its estimate is under
  ``--max_run_gib`` and fits the host's available memory with ``RSS_MARGIN_GIB`` to spare;
  otherwise it is compiled only (its estimate is still reported) and never allocated, so no
  point can take the machine down.
* **Step time** (``--time_batches``): both steps in one process on the same state and batches,
  their steps interleaved (ABBA...) after one warm-up step each; the median of each and their
  ratio (chunked / unchunked).
* **The largest batch whose estimate fits ``--fit_gib``** per method, with and without caching:
  compile-only (nothing allocated), doubling from the curves' points, then bisection to a
  multiple of ``--chunk`` within 1/``--resolution`` of the batch.

Data: synthetic batches (random token ids) whose sentence lengths are drawn, seeded and with
replacement, from the MiniLM token counts of VADER's 23,703 sentences (all four sets; mean 25
tokens, capped at max_len), packed into the fewest rows that hold them; SoftMCL's MLM masks as
the pipeline draws them and random valences on 20% of tokens. Synthetic, so any batch exists
(VADER has 23,703 sentences) and each point has one static shape. SoftMCL's queues are the
preset's (1,024 / 4,096 keys) rounded up to multiples of the keys a step writes
(scaling.set_queues).

Writes ``--png`` and a BENCHMARKS.md section (report.write_section) unless ``--no_write``;
every result is appended to ``--save`` as it arrives (``--reuse`` skips the points already
there, ``--load`` only renders them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import report  # noqa: E402
from workers import emit, peak_rss_mib, run_worker  # noqa: E402

MiB, GiB = 2**20, 2**30
# Peak RSS sat ~1.2 GiB above XLA's estimate in the cost curves (runtime, compiled code,
# Python); a point runs only if estimate + this margin fits the host's available memory.
RSS_MARGIN_GIB = 3.0
SECTION = "Gradient caching: memory and step time vs batch, CPU (benchmarks/grad_cache.py)"
# --tiny: SimCSE only (SoftMCL's points run the same code), each part at its smallest; the
# fit limit sits between the tiny steps' estimates, so that the search bisects once.
TINY = dict(model="tiny", seq=32, chunk=4, batches="8,16", softmcl_batches="",
            time_batches="8", repeats=1, fit_gib=0.04, max_search_batch=32, done_batch=16,
            search_methods="simcse", max_run_gib=2.0)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------------- worker


def vader_lengths(tokenizer_path: str) -> np.ndarray:
    """MiniLM token counts ([CLS] and [SEP] included) of VADER's sentences, all four sets."""
    import transformers

    from softmcl_jax.data import load_vader_sentences

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path)
    texts = [s.text for s in load_vader_sentences()]
    return np.array([len(x) for x in tokenizer(texts)["input_ids"]], np.int32)


def synthetic_batch(lengths_pool: np.ndarray, *, batch: int, seq: int, vocab: int,
                    mlm_rate: float, mlm_max_predictions: int, seed: int
                    ) -> dict[str, np.ndarray]:
    """Every array a preset's step may read (step_mfu.synthetic_batch's, with the lengths drawn
    from ``lengths_pool``, capped at ``seq``), unpacked: random ids, SoftMCL's MLM masks as the
    pipeline draws them, valences on 20% of tokens."""
    from softmcl_jax.data.masking import mask_tokens

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.choice(lengths_pool, size=batch), 3, seq)
    pos = np.arange(seq)[None]
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(5, vocab, size=(batch, seq)), 0).astype(np.int32)
    special = (pos == 0) | (pos >= lengths[:, None] - 1)
    out = {"input_ids": ids, "attention_mask": mask, "valid": np.ones(batch, bool),
           "sentence_valence": rng.random(batch).astype(np.float32)}
    if mlm_rate > 0:
        out["mlm_input_ids"], out["mlm_labels"] = mask_tokens(
            ids, special, mask_token_id=4, vocab_size=vocab, seed=0, step=seed, process_index=0,
            rate=mlm_rate, special_ids=(0, 1, 2, 3), max_predictions=mlm_max_predictions)
    rated = (rng.random((batch, seq)) < 0.2) & ~special
    out["token_valence"] = np.where(rated, rng.random((batch, seq)), 0).astype(np.float32)
    out["token_valence_mask"] = rated
    return out


def packed(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The batches packed into the fewest rows that hold each of them (one shape for all)."""
    from softmcl_jax.data import packing

    b, s = batches[0]["input_ids"].shape
    need = max(int(packing.assign_rows(packing.lengths(x["attention_mask"]), max_len=s,
                                       rows=b)[0].max()) + 1 for x in batches)
    return [packing.pack(x, rows=need, pad_id=0) for x in batches]


def step_config(method: str, model: str, *, batch: int, seq: int, chunk: int):
    """configs/<method>.py at this batch, max_len and chunk; queues: the preset's, rounded up to
    multiples of the keys per step (scaling.set_queues); the probe off."""
    import scaling

    config = runpy.run_path(os.path.join(ROOT, "configs", f"{method}.py"))["get_config"]()
    config.model.name_or_path = model
    config.batch_size, config.model.max_len = batch, seq
    config.probe.enabled = False
    config.grad_cache.chunk = chunk
    scaling.set_queues(config, None)
    return config


def estimate_bytes(stats: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled step: its fields and ``estimate``, what must be live
    at once (arguments + temporaries + outputs not aliased to a donated argument)."""
    f = {"arguments": stats.argument_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
         "outputs": stats.output_size_in_bytes, "aliased": stats.alias_size_in_bytes}
    f["estimate"] = f["arguments"] + f["temporaries"] + f["outputs"] - f["aliased"]
    return f


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Steps:
    """The trainer's step for (method, chunk) at each batch: compiled ahead of time from the
    abstract state (nothing allocated), run on one shared state once :meth:`init` made it."""

    def __init__(self, model_path: str, seq: int, lengths_pool: np.ndarray):
        self.model_path, self.seq, self.pool = model_path, seq, lengths_pool
        self.state = None
        self._pretrained: dict[str, Any] = {}

    def build(self, method: str, batch: int, chunk: int, batches: int = 1):
        """(compiled step, its constants, packed batches, setup, memory fields, compile s)."""
        import jax

        from softmcl_jax import config_check, objective, sharding, train
        from softmcl_jax.models import DTYPES, from_pretrained

        config = step_config(method, self.model_path, batch=batch, seq=self.seq, chunk=chunk)
        the_plan = config_check.validate(config)
        key = (config.model.dtype, config.model.remat, config.model.dropout)
        if key not in self._pretrained:
            self._pretrained[key] = from_pretrained(
                self.model_path, dtype=DTYPES[config.model.dtype], remat=config.model.remat,
                seed=config.seed, dropout=config.model.dropout)
        pre = self._pretrained[key]
        model = objective.build_model(pre, the_plan, config)
        mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
        setup = train.setup_step(model, config, mesh, the_plan)
        d = config.data
        raw = [synthetic_batch(self.pool, batch=batch, seq=self.seq,
                               vocab=pre.config.vocab_size, mlm_rate=d.mlm_rate,
                               mlm_max_predictions=d.mlm_max_predictions, seed=i)
               for i in range(batches)]
        data = [{k: b[k] for k in the_plan.batch_keys}
                for b in (packed(raw) if d.packing else raw)]
        t0 = time.perf_counter()
        compiled = setup.step_fn.lower(
            train.abstract_with_shardings(setup.abstract, setup.shardings), data[0]).compile()
        compile_s = time.perf_counter() - t0
        return (compiled, setup.step_fn.constants, data, setup,
                estimate_bytes(compiled.memory_analysis()), compile_s)

    def run(self, compiled: Any, constants: Any, batch: dict[str, Any]) -> float:
        """One step on the shared state (donated and replaced); seconds until its loss is on the
        host, as a logging step waits."""
        from softmcl_jax import train

        t0 = time.perf_counter()
        self.state, metrics = compiled(self.state, batch, constants)
        loss = train.host_scalars(metrics)["loss"]
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss}")
        return time.perf_counter() - t0


def point_worker(spec: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """Compile (method, batch, chunk); if ``spec["run"]`` and it fits, init the state and run 2
    steps; the memory fields, and the peak RSS read right after."""
    compiled, constants, data, setup, mem, compile_s = steps.build(
        spec["method"], spec["batch"], spec["chunk"], batches=2)
    out = dict(spec, **{k: v / MiB for k, v in mem.items()}, compile_s=compile_s,
               rows=int(data[0].get("segment_ids", data[0]["attention_mask"]).shape[0]))
    limit = min(spec["max_run_gib"], available_gib() - RSS_MARGIN_GIB)
    if not spec["run"] or mem["estimate"] / GiB > limit:
        return dict(out, ran=False, skipped=None if not spec["run"] else
                    f"estimate {mem['estimate'] / GiB:.1f} GiB > {limit:.1f} GiB")
    steps.state = setup.init()
    times = [steps.run(compiled, constants, b) for b in data]
    return dict(out, ran=True, step_s=times, peak_rss=peak_rss_mib(),
                ru_maxrss=ru_maxrss_mib())


def baseline_worker(spec: dict[str, Any], prep: str) -> dict[str, Any]:
    """A process that only imported JAX and loaded the model: the RSS every point starts from.
    Then, RSS read, the data's lengths (``prep``/lengths.npy) for every other worker; with
    ``model="tiny"`` a random tiny BERT is made first (torch: its RSS is no baseline then)."""
    import jax

    from softmcl_jax.models import from_pretrained
    from softmcl_jax.models.hf import resolve_name

    model = spec["model"]
    if model == "tiny":
        import encoder

        model = encoder.random_checkpoint("tiny-bert")
    path = str(resolve_name(model))
    jax.block_until_ready(from_pretrained(path).params)
    rss, maxrss = peak_rss_mib(), ru_maxrss_mib()
    lengths = vader_lengths(str(resolve_name("minilm")))
    np.save(os.path.join(prep, "lengths.npy"), lengths)
    return dict(spec, model_path=path, peak_rss=rss, ru_maxrss=maxrss, sentences=len(lengths),
                mean_length=float(lengths.mean()), load=os.getloadavg()[0])


def timing_worker(spec: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """Unchunked (A) and chunked (B) steps at one batch, interleaved A B B A A B ..., on one
    state and the same batches; one warm-up step each first."""
    n = spec["repeats"]
    a = steps.build(spec["method"], spec["batch"], 0, batches=n + 1)
    b = steps.build(spec["method"], spec["batch"], spec["chunk"], batches=n + 1)
    need = (a[4]["estimate"] + b[4]["estimate"]) / GiB  # both programs may stay resident
    if need > available_gib() - RSS_MARGIN_GIB:
        raise RuntimeError(f"batch {spec['batch']}: the two steps' estimates ({need:.1f} GiB) do "
                           f"not fit the available memory with {RSS_MARGIN_GIB:g} GiB to spare")
    steps.state = a[3].init()
    times: dict[str, list[float]] = {"unchunked": [], "chunked": []}
    for i in range(n + 1):
        order = [("unchunked", a), ("chunked", b)]
        for name, (compiled, constants, data, *_) in order[:: 1 if i % 2 else -1]:
            t = steps.run(compiled, constants, data[i])
            if i:  # step 0 warms up
                times[name].append(t)
    return dict(spec, **times, compile_s=[a[5], b[5]], load=os.getloadavg()[0], rows=int(
        a[2][0].get("segment_ids", a[2][0]["attention_mask"]).shape[0]))


def search_worker(spec: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """The largest batch (a multiple of ``spec["chunk"]``) whose estimate fits
    ``spec["fit_gib"]``, compile-only, for each (method, chunked) task, starting from the
    estimates the curves already have (``task["known"]``: {batch: MiB})."""
    out = []
    for task in spec["tasks"]:
        limit, grain = spec["fit_gib"] * 1024, spec["chunk"]
        probes = {int(b): float(m) for b, m in task["known"].items()}

        def probe(b: int, task=task, probes=probes) -> float:
            if b not in probes:
                chunk = spec["chunk"] if task["chunked"] else 0
                probes[b] = steps.build(task["method"], b, chunk)[4]["estimate"] / MiB
            return probes[b]

        fits = [b for b, m in probes.items() if m <= limit]
        over = [b for b, m in probes.items() if m > limit]
        lo, hi = (max(fits) if fits else grain), (min(over) if over else None)
        while probe(lo) > limit and lo > grain:  # nothing known fits: halve down
            lo, hi = max(grain, lo // 2 // grain * grain), lo
        while hi is None and lo < spec["max_batch"]:
            b = lo * 2
            lo, hi = (b, None) if probe(b) <= limit else (lo, b)
        resolution = max(grain, lo // spec["resolution"] // grain * grain)
        while hi is not None and hi - lo > resolution:
            mid = (lo + hi) // 2 // grain * grain
            lo, hi = (mid, hi) if probe(mid) <= limit else (lo, mid)
        out.append(dict(task, chunk=spec["chunk"], largest=lo, largest_mib=probes[lo], over=hi,
                        over_mib=None if hi is None else probes[hi],
                        probes={str(b): m for b, m in sorted(probes.items())},
                        fits=probe(lo) <= limit))
    return dict(spec, results=out)


WORKERS = {"point": point_worker, "timing": timing_worker, "search": search_worker}


def code_digest() -> str:
    """A short hash of the code a step's memory depends on most (the chunked passes), so that a
    table mixing versions of it shows in the saved results."""
    import hashlib

    h = hashlib.sha1()
    for name in ("grad_cache.py", "objective.py", "train.py"):
        with open(os.path.join(ROOT, "softmcl_jax", name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:10]


def worker_main(args: argparse.Namespace) -> None:
    spec = json.loads(args.worker)
    if spec["kind"] == "baseline":
        emit(baseline_worker(spec, args.prep))
        return
    pool = np.load(os.path.join(args.prep, "lengths.npy"))
    code = code_digest()
    emit(dict(WORKERS[spec["kind"]](spec, Steps(spec["model_path"], spec["seq"], pool)),
              code=code))


# ----------------------------------------------------------------------------------- parent


class Runner:
    """Runs each spec in a fresh worker, keeping every result in ``--save`` as it arrives;
    with ``--reuse`` a spec already there is not run again."""

    def __init__(self, args: argparse.Namespace, prep: str):
        self.args, self.prep = args, prep
        self.env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.results: list[dict[str, Any]] = []
        if args.save and args.reuse and os.path.exists(args.save):
            with open(args.save) as f:
                self.results = [json.loads(line) for line in f if line.strip()]

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        for r in self.results:  # the baseline writes the data's lengths: always run
            if spec["kind"] != "baseline" and {k: r.get(k) for k in spec} == spec:
                return r
        cmd = [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}",
               f"--prep={self.prep}"]
        t0 = time.perf_counter()
        r = run_worker(cmd, self.env, f"{spec['kind']} {spec}")
        r["wall_s"] = time.perf_counter() - t0
        print(summary(r), flush=True)
        self.results.append(r)
        if self.args.save:
            with open(self.args.save, "a") as f:
                f.write(json.dumps(r) + "\n")
        return r


def summary(r: dict[str, Any]) -> str:
    head = f"[{r['wall_s']:.0f} s] {r['kind']}"
    if r["kind"] == "point":
        ran = (f"peak RSS {r['peak_rss']:.0f} MiB, step {r['step_s'][-1]:.2f} s" if r["ran"]
               else f"not run ({r['skipped'] or 'estimate only'})")
        return (f"{head} {r['method']} batch {r['batch']} chunk {r['chunk']}: XLA "
                f"{r['estimate']:.0f} MiB, {ran}")
    if r["kind"] == "timing":
        return (f"{head} {r['method']} batch {r['batch']}: unchunked "
                f"{statistics.median(r['unchunked']):.3f} s, chunked "
                f"{statistics.median(r['chunked']):.3f} s, ratio {ratio(r):.2f}")
    if r["kind"] == "search":
        return head + "; ".join(f" {t['method']} chunked={t['chunked']}: {t['largest']}"
                                for t in r["results"])
    return f"{head}: {json.dumps(r)[:200]}"


def ratio(r: dict[str, Any]) -> float:
    """Chunked over unchunked median step time."""
    return statistics.median(r["chunked"]) / statistics.median(r["unchunked"])


def measure(args: argparse.Namespace, run: Runner) -> dict[str, Any]:
    """Every measurement, the long runs (batches past ``--done_batch * 2``) next to last, so
    that an interrupted run keeps the most; the search last, from every estimate known."""
    out: dict[str, Any] = {"baseline": run(dict(kind="baseline", model=args.model))}
    base = dict(model_path=out["baseline"]["model_path"], seq=args.seq)
    specs = [dict(kind="point", method=method, batch=b, chunk=chunk,
                  run=b <= args.run_up_to, max_run_gib=args.max_run_gib, **base)
             for method, batches in (("simcse", args.batches), ("softmcl", args.softmcl_batches))
             for b in batches for chunk in (args.chunk, 0)]
    long = lambda s: s["run"] and s["batch"] > 2 * args.done_batch  # noqa: E731
    points = [run(s) for s in specs if not long(s)]
    out["timing"] = [run(dict(kind="timing", method="simcse", batch=b, chunk=args.chunk,
                              repeats=args.repeats, **base)) for b in args.time_batches]
    out["points"] = points + [run(s) for s in specs if long(s)]
    tasks = []
    for method in args.search_methods:
        for chunked in (True, False):
            known = {str(p["batch"]): p["estimate"] for p in out["points"]
                     if p["method"] == method and bool(p["chunk"]) == chunked}
            tasks.append(dict(method=method, chunked=chunked, known=known))
    out["search"] = run(dict(kind="search", tasks=tasks, chunk=args.chunk, fit_gib=args.fit_gib,
                             max_batch=args.max_search_batch, resolution=args.resolution,
                             **base))["results"] if tasks else []
    return out


def loaded(path: str) -> dict[str, Any]:
    """The measurements of a ``--save`` file, as :func:`measure` returns them."""
    with open(path) as f:
        rs = [json.loads(line) for line in f if line.strip()]
    kind = lambda k: [r for r in rs if r["kind"] == k]  # noqa: E731
    return {"baseline": kind("baseline")[-1],
            "points": kind("point"), "timing": kind("timing"),
            "search": kind("search")[-1]["results"]}


# ------------------------------------------------------------------------------- the figures


def curve(points: list[dict[str, Any]], method: str, chunked: bool) -> list[dict[str, Any]]:
    return sorted((p for p in points if p["method"] == method and bool(p["chunk"]) == chunked),
                  key=lambda p: p["batch"])


def growth_mib_per_1k(ps: list[dict[str, Any]], field: str = "estimate") -> float | None:
    """Least-squares MiB per 1,024 more sentences of ``field`` over the points that have it."""
    xy = [(p["batch"], p[field]) for p in ps if p.get(field) is not None]
    if len({x for x, _ in xy}) < 2:
        return None
    return float(np.polyfit([x for x, _ in xy], [y for _, y in xy], 1)[0]) * 1024


def at_batch(points: list[dict[str, Any]], method: str, batch: int, chunked: bool
             ) -> dict[str, Any] | None:
    return next((p for p in curve(points, method, chunked) if p["batch"] == batch), None)


def done_when(res: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """The issue's figure: SimCSE's peak RSS at ``batch``, chunked over unchunked (both run)."""
    c = at_batch(res["points"], "simcse", batch, True)
    u = at_batch(res["points"], "simcse", batch, False)
    if not (c and u and c["ran"] and u["ran"]):
        return None
    return dict(batch=batch, chunked=c["peak_rss"], unchunked=u["peak_rss"],
                ratio=c["peak_rss"] / u["peak_rss"], est_ratio=c["estimate"] / u["estimate"])


def _log_axes(a: Any, batches: list[int], title: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xticks(batches, [str(b) for b in batches], rotation=45)
    a.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.yaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("batch (sentences)")
    a.set_title(title)
    a.legend(fontsize=8)


def _memory_panels(ax: Any, res: dict[str, Any], fit_gib: float) -> None:
    """Estimate (every point) and peak RSS (the points that ran): a colour per method, solid
    chunked, dashed unchunked."""
    for i, method in enumerate(("simcse", "softmcl")):
        for chunked in (True, False):
            ps = curve(res["points"], method, chunked)
            style = dict(color=f"C{i}", linestyle="-" if chunked else "--",
                         marker="o" if chunked else "s")
            name = f"{method} {'chunked' if chunked else 'unchunked'}"
            ran = [p for p in ps if p["ran"]]
            if ps:
                ax[0].plot([p["batch"] for p in ps], [p["estimate"] / 1024 for p in ps],
                           label=name, **style)
            if ran:
                ax[1].plot([p["batch"] for p in ran], [p["peak_rss"] / 1024 for p in ran],
                           label=name, **style)
    ax[0].axhline(fit_gib, color="grey", linewidth=0.8, label=f"{fit_gib:g} GiB")
    ax[1].axhline(res["baseline"]["peak_rss"] / 1024, color="black", linewidth=0.8,
                  linestyle=":", label="process that only loaded the model")
    batches = sorted({p["batch"] for p in res["points"]})
    _log_axes(ax[0], batches, "XLA's estimate of the step (GiB)")
    _log_axes(ax[1], batches, "peak RSS after compiling + 2 steps (GiB)")


def _overhead_panel(a: Any, timing: list[dict[str, Any]]) -> None:
    """Chunked / unchunked: the median per batch, each interleaved pair faintly."""
    t = sorted(timing, key=lambda r: r["batch"])
    pairs = [(r["batch"], c / u) for r in t
             for u, c in zip(r["unchunked"], r["chunked"], strict=True)]
    a.plot([b for b, _ in pairs], [x for _, x in pairs], ".", color="C0", alpha=0.4,
           label="one A/B pair")
    a.plot([r["batch"] for r in t], [ratio(r) for r in t], "o", color="C0",
           label="simcse: median chunked / median unchunked, each run")
    batches = sorted({r["batch"] for r in t})
    a.plot(batches, [statistics.median(ratio(r) for r in t if r["batch"] == b)
                     for b in batches], "-", color="C0", label="median of the runs")
    a.axhline(4 / 3, color="grey", linewidth=0.8, linestyle=":",
              label="4/3: one more forward of the encoder")
    a.axhline(1.4, color="red", linewidth=0.8, linestyle="--", label="goal: 1.4x")
    a.set_xscale("log", base=2)
    a.set_xticks(batches, [str(b) for b in batches])
    ys = [x for _, x in pairs]
    a.set_ylim(min([0.8] + [y - 0.05 for y in ys]), max([1.6] + [y + 0.05 for y in ys]))
    a.set_xlabel("batch (sentences)")
    a.set_title("step time, chunked / unchunked")
    a.legend(fontsize=8)


def plot(res: dict[str, Any], png: str, fit_gib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(17, 5.2))
    _memory_panels(ax, res, fit_gib)
    _overhead_panel(ax[2], res["timing"])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def fmt_mib(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def curve_rows(res: dict[str, Any], run_up_to: int) -> list[str]:
    rows = ["| method | batch | chunk | packed rows | XLA estimate MiB | of which arguments / "
            "temporaries | peak RSS MiB (VmHWM) | ru_maxrss MiB | step 1 / step 2 s | "
            "compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in ("simcse", "softmcl"):
        for chunked in (True, False):
            for p in curve(res["points"], method, chunked):
                run = (f"{p['peak_rss']:,.0f} | {p['ru_maxrss']:,.0f} | "
                       f"{p['step_s'][0]:.2f} / {p['step_s'][1]:.2f}" if p["ran"] else
                       f"not run: {p['skipped'] or f'batch > {run_up_to:,} (time)'} | - | -")
                rows.append(f"| {method} | {p['batch']} | {p['chunk'] or 'off'} | {p['rows']} | "
                            f"{p['estimate']:,.0f} | {p['arguments']:,.0f} / "
                            f"{p['temporaries']:,.0f} | {run} | {p['compile_s']:.0f} |")
    return rows


def timing_rows(res: dict[str, Any]) -> list[str]:
    rows = ["| batch | packed rows | unchunked s/step (median) | chunked s/step (median) | "
            "chunked / unchunked | per-pair ratios | load average after |",
            "|---|---|---|---|---|---|---|"]
    for r in sorted(res["timing"], key=lambda r: r["batch"]):
        pairs = ", ".join(f"{c / u:.2f}" for u, c in zip(r["unchunked"], r["chunked"],
                                                         strict=True))
        load = f"{r['load']:.1f}" if "load" in r else "-"
        rows.append(f"| {r['batch']} | {r['rows']} | {statistics.median(r['unchunked']):.3f} | "
                    f"{statistics.median(r['chunked']):.3f} | {ratio(r):.2f}x | {pairs} | "
                    f"{load} |")
    return rows


def search_rows(res: dict[str, Any], fit_gib: float) -> list[str]:
    rows = [f"| method | caching | largest batch with estimate <= {fit_gib:g} GiB | its "
            "estimate MiB | next batch tried (estimate MiB) |", "|---|---|---|---|---|"]
    for t in res["search"]:
        nxt = ("none up to the search's cap" if t["over"] is None
               else f"{t['over']:,} ({t['over_mib']:,.0f})")
        largest = f"{t['largest']:,}" if t["fits"] else f"none (batch {t['largest']} needs more)"
        rows.append(f"| {t['method']} | {'chunk ' + str(t['chunk']) if t['chunked'] else 'off'}"
                    f" | {largest} | {t['largest_mib']:,.0f} | {nxt} |")
    return rows


def memory_finding(points: list[dict[str, Any]], method: str) -> str | None:
    """One line: the estimate and the peak RSS of ``method`` from its smallest to its largest
    batch, chunked and unchunked, and the linear growth of the estimate per 1,024 sentences."""
    c, u = curve(points, method, True), curve(points, method, False)
    if not (c and u):
        return None
    gc, gu = growth_mib_per_1k(c), growth_mib_per_1k(u)

    def span(ps: list[dict[str, Any]]) -> str:
        ran = [p for p in ps if p["ran"]]
        rss = (f"; peak RSS {ran[0]['peak_rss']:,.0f} MiB -> {ran[-1]['peak_rss']:,.0f} MiB at "
               f"{ran[-1]['batch']:,}, the largest that ran" if ran else "")
        return (f"estimate {ps[0]['estimate']:,.0f} MiB at batch {ps[0]['batch']:,} -> "
                f"{ps[-1]['estimate']:,.0f} MiB at {ps[-1]['batch']:,}{rss}")

    less = f" ({gu / gc:.0f}x less" if gc and gu and gc > 0 else " ("
    return (f"* **{method}**: chunked, {span(c)}; unchunked, {span(u)}. XLA's estimate grows "
            f"{fmt_mib(gc)} MiB per 1,024 more sentences chunked against {fmt_mib(gu)} MiB "
            f"unchunked{less}; linear fits over every batch).")


def findings(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out = [x for x in (memory_finding(res["points"], m) for m in ("simcse", "softmcl")) if x]
    d = done_when(res, args.done_batch)
    if d:
        out.append(f"* **Done-when figure** (batch {d['batch']}, chunk {args.chunk}, SimCSE): "
                   f"peak RSS {d['chunked']:,.0f} MiB chunked vs {d['unchunked']:,.0f} MiB "
                   f"unchunked, **{d['ratio']:.2f}x** (target <= 0.7x; XLA's estimates "
                   f"{d['est_ratio']:.2f}x). A process that only loaded the model peaks at "
                   f"{res['baseline']['peak_rss']:,.0f} MiB.")
    if res["timing"]:
        rs = [ratio(r) for r in res["timing"]]
        by = {}  # batch -> its runs' ratios
        for r in sorted(res["timing"], key=lambda r: r["batch"]):
            by.setdefault(r["batch"], []).append(f"{ratio(r):.2f}x")
        out.append("* **Step time**: chunked / unchunked median at batch "
                   + "; ".join(f"{b}: {', '.join(xs)}" for b, xs in by.items())
                   + f" (median over all {len(rs)} runs {statistics.median(rs):.2f}x; goal <= "
                   "1.4x; one "
                   "more forward of the online passes is 4/3 of the encoder FLOPs; "
                   "sentence-transformers' CachedMultipleNegativesRankingLoss costs 2-2.4x).")
    return out


def section(res: dict[str, Any], args: argparse.Namespace, png: str, load: float | None
            ) -> str:
    rel = os.path.relpath(os.path.abspath(png), os.path.dirname(os.path.abspath(args.markdown)))
    prep = res["baseline"]
    model = ("a tiny random BERT (2 layers, hidden 128)" if args.model == "tiny"
             else "MiniLM-L6 (all-MiniLM-L6-v2)" if args.model == "minilm" else args.model)
    lines = [
        f"{model}, fp32, max_len {args.seq}, the presets' hyper-parameters (dropout on), packed "
        f"(the default); `grad_cache.chunk = {args.chunk}` (\"chunked\") against 0. Data: "
        "synthetic batches, random token ids with sentence lengths drawn (seeded, with "
        f"replacement) from the MiniLM token counts of VADER's {prep['sentences']:,} sentences "
        f"(mean {prep['mean_length']:.1f} tokens), packed into the fewest rows that hold them. "
        "Each point in a fresh process.",
        "",
        "Memory: **XLA's estimate** = `argument_size_in_bytes + temp_size_in_bytes + "
        "output_size_in_bytes - alias_size_in_bytes` of the compiled step's "
        "`memory_analysis()` (state, batch and constants, the temporary arena, and outputs not "
        "written over the donated state); **peak RSS** = the worker's VmHWM after compiling "
        "and running 2 steps, raw, with `getrusage(RUSAGE_SELF).ru_maxrss` beside it (Linux "
        "carries a parent's peak across fork+exec into ru_maxrss, so the parent here stays "
        f"small). A process that only loaded the model peaks at "
        f"{res['baseline']['peak_rss']:,.0f} MiB (ru_maxrss {res['baseline']['ru_maxrss']:,.0f})."
        f" A step runs only where its estimate is under {args.max_run_gib:g} GiB and fits the "
        f"available memory with {RSS_MARGIN_GIB:g} GiB to spare"
        + (f", and at batches up to {args.run_up_to:,} (time: 2 CPU cores)"
           if args.run_up_to < max(args.batches + args.softmcl_batches) else "")
        + "; other points are compiled only.",
        "",
        f"Machine: {report.machine()}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'flax', 'optax')}"
        + ("" if load is None else f"; load average {load:.2f} when the baseline ran") + ".",
        "",
        f"![gradient caching: memory and overhead]({rel})",
        "",
        *findings(res, args),
        "",
        *curve_rows(res, args.run_up_to),
        "",
        f"Step time, SimCSE, interleaved A/B in one process (same state and batches, ABBA order, "
        f"one warm-up step each, median of {args.repeats}):",
        "",
        *timing_rows(res),
        "",
        f"Largest batch whose XLA estimate fits {args.fit_gib:g} GiB (**the estimate**, compile "
        f"only, nothing run; batches multiples of {args.chunk}, found within "
        f"1/{args.resolution} of the batch):",
        "",
        *search_rows(res, args.fit_gib),
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random BERT, 2 small batches: a smoke test of every part")
    p.add_argument("--model", default="minilm")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--batches", default="32,64,128,256,512,1024,2048,4096")
    p.add_argument("--softmcl_batches", default="128,512")
    p.add_argument("--run_up_to", type=int, default=2048,
                   help="points at larger batches are compiled only (step time on 2 cores)")
    p.add_argument("--max_run_gib", type=float, default=16.0)
    p.add_argument("--time_batches", default="64,256,512")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fit_gib", type=float, default=8.0)
    p.add_argument("--max_search_batch", type=int, default=1 << 17)
    p.add_argument("--search_methods", default="simcse,softmcl")
    p.add_argument("--resolution", type=int, default=4,
                   help="the search stops within 1/RESOLUTION of the batch it found")
    p.add_argument("--done_batch", type=int, default=512)
    p.add_argument("--png", default=os.path.join(ROOT, "results", "grad_cache_memory.png"))
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    p.add_argument("--no_write", action="store_true", help="print the section only")
    p.add_argument("--save", default=os.path.join(tempfile.gettempdir(),
                                                  "grad_cache_points.jsonl"))
    p.add_argument("--reuse", action="store_true", help="reuse the results already in --save")
    p.add_argument("--load", default="", help="render a --save file; measure nothing")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--prep", default="", help=argparse.SUPPRESS)
    if p.parse_known_args()[0].tiny:  # tiny sizes as defaults: flags given still win
        p.set_defaults(**TINY)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return
    for k in ("batches", "softmcl_batches", "time_batches"):
        setattr(args, k, ints(getattr(args, k)))
    args.search_methods = [m for m in args.search_methods.split(",") if m]
    if args.done_batch not in args.batches:
        raise SystemExit(f"--done_batch {args.done_batch} is not one of --batches")
    if not args.load and args.save and not args.reuse and os.path.exists(args.save):
        os.remove(args.save)
    if args.load:
        res = loaded(args.load)
    else:
        prep = tempfile.mkdtemp(prefix="grad_cache_")
        try:
            res = measure(args, Runner(args, prep))
        finally:
            shutil.rmtree(prep, ignore_errors=True)
        if args.model == "tiny":  # encoder.random_checkpoint's folder
            shutil.rmtree(res["baseline"]["model_path"], ignore_errors=True)
    plot(res, args.png, args.fit_gib)
    text = section(res, args, args.png, res["baseline"].get("load"))
    print(text)
    if not args.no_write:
        report.write_section(SECTION, text, path=args.markdown)


if __name__ == "__main__":
    main()
