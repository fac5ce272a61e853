"""Cost curves of our JAX step: batch size, queue size, sentence length (packed vs unpacked).

    python benchmarks/scaling.py [--model minilm] [--parts batch,queue,length]
        [--batches 8,16,32,64,128,256] [--batch_methods simcse,softmcl] [--seq 64]
        [--queues 0,1024,4096,16384,65536] [--queue_batch 32]
        [--layouts unpacked,packed]
        [--length_seq 128] [--length_batch 32] [--length_method simcse] [--long_tokens 100]
        [--repeats 3] [--png results/scaling.png] [--no_write] [--markdown BENCHMARKS.md]

Three curves, each point our trainer's step (``softmcl_jax.train.setup_step``: one ``jax.jit``,
state donated, metrics to the host) in a fresh process, timed as the median of ``--repeats``
steps on new batches after a warm-up step that compiles (once per batch shape among the timed
batches), with its memory: XLA's estimate for the compiled step (``memory_analysis()``:
arguments, i.e. state + batch + constants, plus temporaries) and the process's peak resident
set size (and, on an accelerator, the device's peak allocation).

* ``batch``: batch ``--batches`` at max_len ``--seq`` for ``--batch_methods`` (SoftMCL with the
  preset's queues, 1024 sentence and 4096 word keys, rounded up to multiples of the keys each
  step writes);
* ``queue``: SoftMCL at batch ``--queue_batch`` with K = ``--queues`` keys in both queues
  (``objective.soft_sentence.queue_size`` and ``objective.soft_word.queue_size``, each rounded up
  to a multiple of the keys it gets per step: the batch, and batch x max_words_per_sentence);
* both in each of ``--layouts``: ``unpacked`` (every sentence padded to max_len) and ``packed``
  (``data.packing`` with the default row counts, ``data.packing_quantiles``);
* ``length``: ``--length_method`` at max_len ``--length_seq`` on short texts (VADER's tweets)
  and long ones (VADER's movie and product review sentences concatenated in file order up to
  ``--long_tokens`` tokens each), each unpacked (padded to max_len) and packed
  (``data.packing``).

Data: seeded samples of at most ``--sentences`` texts (all four VADER sets for the batch and
queue curves). Writes ``--png`` (matplotlib) and a section of BENCHMARKS.md that links it, with
the fitted slopes, through benchmarks/report.py unless ``--no_write``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import compare_st as cs  # noqa: E402
import report  # noqa: E402
from workers import emit, peak_rss_mib, run_worker  # noqa: E402

PARTS = ("batch", "queue", "length")
PRESET_QUEUES = (1024, 4096)  # configs/softmcl.py: soft_sentence, soft_word


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def round_up(k: int, multiple: int) -> int:
    return -(-k // multiple) * multiple


# ----------------------------------------------------------------------------------- data


def long_texts(model: str, target: int, limit: int) -> list[Any]:
    """VADER movie and product review sentences joined, in file order, until each text has at
    least ``target`` tokens (the tokenizer's, without [CLS]/[SEP]); valence = their mean."""
    import transformers

    from softmcl_jax.data import Sentence, load_vader_sentences

    tokenizer = transformers.AutoTokenizer.from_pretrained(cs.model_path(model))
    sentences = load_vader_sentences(("movie_reviews", "product_reviews"))
    lengths = [len(x) for x in tokenizer([s.text for s in sentences],
                                         add_special_tokens=False)["input_ids"]]
    out: list[Any] = []
    texts: list[str] = []
    vals: list[float] = []
    n = 0
    for s, length in zip(sentences, lengths, strict=True):
        texts.append(s.text)
        vals.append(0.5 if s.valence is None else s.valence)
        n += length
        if n >= target:
            out.append(Sentence(text=" ".join(texts), valence=float(np.mean(vals))))
            texts, vals, n = [], [], 0
            if len(out) >= limit:
                break
    return out


def prepare(args: argparse.Namespace, out: str) -> None:
    from softmcl_jax.data import load_vader_sentences

    steps = args.repeats + 1
    if "batch" in args.parts or "queue" in args.parts:
        biggest = max([*args.batches, args.queue_batch]) * steps
        cs.write_sentences_csv(os.path.join(out, "sample.csv"),
                               cs.sample_vader(max(args.sentences, biggest)))
    if "length" in args.parts:
        need = max(args.sentences, args.length_batch * steps)
        tweets = load_vader_sentences(("tweets",))
        rng = np.random.default_rng(0)
        pick = rng.choice(len(tweets), size=min(need, len(tweets)), replace=False)
        cs.write_sentences_csv(os.path.join(out, "tweets.csv"), [tweets[i] for i in pick])
        long = long_texts(args.model, args.long_tokens, need)
        if len(long) < args.length_batch * steps:
            raise ValueError(f"only {len(long)} long texts of {args.long_tokens} tokens")
        cs.write_sentences_csv(os.path.join(out, "reviews.csv"), long)


def points(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "batch" in args.parts:
        for method in args.batch_methods:
            for layout in args.layouts:
                for b in args.batches:
                    out.append(dict(part="batch", method=method, batch=b, seq=args.seq,
                                    queue=None, data="sample", layout=layout))
    if "queue" in args.parts:
        for layout in args.layouts:
            for k in args.queues:
                out.append(dict(part="queue", method="softmcl", batch=args.queue_batch,
                                seq=args.seq, queue=k, data="sample", layout=layout))
    if "length" in args.parts:
        for data in ("tweets", "reviews"):
            for layout in ("unpacked", "packed"):
                out.append(dict(part="length", method=args.length_method,
                                batch=args.length_batch, seq=args.length_seq, queue=None,
                                data=data, layout=layout))
    return out


# --------------------------------------------------------------------------------- worker


def set_queues(config: Any, k: int | None) -> tuple[int, int] | None:
    """Both SoftMCL queues: K (None: the preset's) rounded up to multiples of the keys per step;
    None for a method without them."""
    o = config.objective
    if o.soft_sentence.weight <= 0:
        return None
    b, w = config.batch_size, o.soft_word.max_words_per_sentence
    ks, kw = PRESET_QUEUES if k is None else (k, k)
    o.soft_sentence.queue_size = round_up(ks, b)
    o.soft_word.queue_size = round_up(kw, b * w)
    return o.soft_sentence.queue_size, o.soft_word.queue_size


def worker(spec: dict[str, Any], prep: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from softmcl_jax import loop

    config = cs.config_for(spec["method"], model=args.model, batch=spec["batch"],
                           seq=spec["seq"], csv_path=os.path.join(prep, f"{spec['data']}.csv"),
                           layout=spec["layout"])
    queues = set_queues(config, spec["queue"])
    run = cs.JaxStep(config)
    pipeline = loop.build_pipeline(config, run.tokenizer, run.mesh, run.plan)
    numpy_batches = [pipeline.batch(i) for i in range(args.repeats + 1)]
    batches = [run.put(b) for b in numpy_batches]
    t0 = time.perf_counter()
    run.compile(batches[0])
    run(batches[0])
    first = time.perf_counter() - t0
    seen = {run.shapes(batches[0])}
    for b in batches[1:]:  # any other shape (row counts, overflow) compiles now, not when timed
        if run.shapes(b) not in seen:
            seen.add(run.shapes(b))
            run.compile(b)
            run(b)
    # The most any compiled shape needs: what the run must have room for.
    xla_mib = max(cs.memory_mib(m) for m in run.memory.values())
    times = report.median_seconds(_stepper(run, batches[1:]), repeats=args.repeats, warmup=0)
    real = [cs.real_tokens(b) for b in numpy_batches[1:]]
    sentence_tokens = [int(b["attention_mask"].astype(bool).sum()) for b in numpy_batches[1:]]
    dev = jax.devices()[0]
    device_peak = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20
    return dict(spec, times=times, first=first, compile_s=run.compile_s,
                programs=len(run.memory), xla_mib=xla_mib,
                peak_rss=peak_rss_mib(), device_peak=device_peak, platform=dev.platform,
                device_kind=dev.device_kind,
                fraction=sum(r for r, _ in real) / sum(t for _, t in real),
                tokens_per_sentence=sum(sentence_tokens) / (spec["batch"] * args.repeats),
                rows=float(np.mean([b.get("packed_input_ids", b["input_ids"]).shape[0]
                                    for b in numpy_batches[1:]])),
                queues=queues)


def _stepper(run: cs.JaxStep, batches: list[dict[str, Any]]):
    it = iter(batches)
    return lambda: run(next(it))


def run_point(spec: dict[str, Any], prep: str, args: argparse.Namespace,
              env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}",
           f"--prep={prep}", f"--model={args.model}", f"--repeats={args.repeats}"]
    r = run_worker(cmd, env, f"point {spec}")
    print(f"{label(r):42s} median {report.median(r['times']):.4f} s, XLA {r['xla_mib']:.0f} MiB, "
          f"peak RSS {r['peak_rss']:.0f} MiB, real tokens {r['fraction']:.0%}", flush=True)
    return r


def label(r: dict[str, Any]) -> str:
    if r["part"] == "batch":
        return f"batch: {r['method']} {r['layout']} batch {r['batch']}"
    if r["part"] == "queue":
        return f"queue: {r['method']} {r['layout']} K {r['queue']}"
    return f"length: {r['method']} {r['data']} {r['layout']}"


# ------------------------------------------------------------------------- slopes and text


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0 and math.isfinite(y)]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0])


def linear_slope(xs: list[float], ys: list[float]) -> float | None:
    if len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def med(r: dict[str, Any]) -> float:
    return report.median(r["times"])


def slope_sentences(res: list[dict[str, Any]]) -> list[str]:
    out = []
    batch = [r for r in res if r["part"] == "batch"]
    for method, layout in dict.fromkeys((r["method"], r["layout"]) for r in batch):
        rs = sorted((r for r in batch if (r["method"], r["layout"]) == (method, layout)),
                    key=lambda r: r["batch"])
        xs = [r["batch"] for r in rs]
        st, sm = (loglog_slope(xs, [med(r) for r in rs]),
                  loglog_slope(xs, [r["xla_mib"] for r in rs]))
        out.append(
            f"* **Batch, {method}, {layout}**: step time grows as batch^{fmt(st)} and XLA's memory "
            f"estimate as batch^{fmt(sm)} (fitted log-log slopes over batch {xs[0]}-{xs[-1]}; "
            f"1 is linear): {med(rs[0]):.3g} s -> {med(rs[-1]):.3g} s per step, "
            f"{rs[0]['xla_mib']:.0f} -> {rs[-1]['xla_mib']:.0f} MiB "
            f"({med(rs[0]) / xs[0] * 1e3:.3g} -> {med(rs[-1]) / xs[-1] * 1e3:.3g} ms per "
            "sentence).")
    for method in dict.fromkeys(r["method"] for r in batch):
        pairs = {(r["layout"], r["batch"]): r for r in batch if r["method"] == method}
        gains = [(b, med(pairs["unpacked", b]) / med(pairs["packed", b]))
                 for b in sorted({b for _, b in pairs})
                 if ("unpacked", b) in pairs and ("packed", b) in pairs]
        if gains:
            out.append(f"* **Packing, {method}**: the packed step is "
                       + ", ".join(f"{g:.2f}x" for _, g in gains) + " as fast as the unpacked "
                       f"one at batch {'/'.join(str(b) for b, _ in gains)}.")
    for layout in dict.fromkeys(r["layout"] for r in res if r["part"] == "queue"):
        queue = sorted((r for r in res if r["part"] == "queue" and r["layout"] == layout),
                       key=lambda r: r["queue"])
        ks = [r["queue"] for r in queue]
        lt = linear_slope(ks, [med(r) for r in queue])
        lm = linear_slope(ks, [r["xla_mib"] for r in queue])
        st = loglog_slope(ks, [med(r) for r in queue])
        out.append(
            f"* **Queue, softmcl, {layout}** (batch {queue[0]['batch']}): K = {ks[0]:,} -> "
            f"{ks[-1]:,} keys in each queue takes the step from {med(queue[0]):.3g} s to "
            f"{med(queue[-1]):.3g} s "
            f"and XLA's estimate from {queue[0]['xla_mib']:.0f} to {queue[-1]['xla_mib']:.0f} "
            f"MiB; linear fits: {fmt(None if lt is None else lt * 1024e3, '.3g')} ms and "
            f"{fmt(None if lm is None else lm * 1024, '.3g')} MiB per 1,024 keys; log-log slope "
            f"of the time over K > 0: {fmt(st)}.")
    length = [r for r in res if r["part"] == "length"]
    if length:
        get = {(r["data"], r["layout"]): r for r in length}
        parts = []
        for layout in ("unpacked", "packed"):
            pair = [get.get(("tweets", layout)), get.get(("reviews", layout))]
            if all(pair):
                s = loglog_slope([p["tokens_per_sentence"] for p in pair], [med(p) for p in pair])
                parts.append(f"{layout}, step time vs real tokens per sentence has log-log "
                             f"slope {fmt(s)} ({med(pair[0]):.3g} s on tweets, "
                             f"{pair[0]['tokens_per_sentence']:.0f} tokens each, -> "
                             f"{med(pair[1]):.3g} s on reviews, "
                             f"{pair[1]['tokens_per_sentence']:.0f} tokens each)")
        for data in ("tweets", "reviews"):
            u, p = get.get((data, "unpacked")), get.get((data, "packed"))
            if u and p:
                parts.append(f"packing makes the {data} step {med(u) / med(p):.2f}x as fast "
                             f"(real tokens {u['fraction']:.0%} -> {p['fraction']:.0%}, "
                             f"{u['rows']:.0f} -> {p['rows']:.3g} rows on average)")
        if parts:
            out.append(f"* **Length, {length[0]['method']}** (batch {length[0]['batch']}, "
                       f"max_len {length[0]['seq']}): " + "; ".join(parts) + ".")
    return out


def table(args: argparse.Namespace, res: list[dict[str, Any]], png: str, load: float) -> str:
    device = "CPU" if res[0]["platform"] == "cpu" else res[0]["device_kind"]
    gpu = device != "CPU"
    rel = os.path.relpath(os.path.abspath(png), os.path.dirname(os.path.abspath(args.markdown)))
    lines = [
        f"{cs.model_label(args.model)}, fp32, the presets' hyper-parameters (dropout on); one "
        f"full optimisation step per new batch, median of {args.repeats} after a warm-up step "
        "that compiles; each point in a fresh process. Memory: XLA's estimate for the compiled "
        "step (arguments, i.e. state + batch + constants, plus temporaries) and the process's "
        f"peak RSS{' and the device peak' if gpu else ''}.",
        "",
        f"Machine: {report.machine()}{f'; JAX device: {device}' if gpu else ''}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'flax', 'optax', 'transformers')}; load average "
        f"{load:.2f} at the start.",
        "",
        f"![cost curves]({rel})",
        "",
        *slope_sentences(res),
        "",
        "| curve | method | batch | max_len | queues (sentence, word) | data | layout | s/step "
        "(median) | min s | XLA MiB | peak RSS MiB |" + (" device peak MiB |" if gpu else "")
        + " real tokens | tokens/sentence | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|---|---|",
    ]
    for r in res:
        q = "-" if r["queues"] is None else f"{r['queues'][0]:,}, {r['queues'][1]:,}"
        lines.append(
            f"| {r['part']} | {r['method']} | {r['batch']} | {r['seq']} | {q} | {r['data']} | "
            f"{r['layout']} | {med(r):.4f} | {r['times'][0]:.4f} | {r['xla_mib']:.0f} | "
            f"{r['peak_rss']:.0f} |" + (f" {r['device_peak']:.0f} |" if gpu else "")
            + f" {r['fraction']:.0%} | {r['tokens_per_sentence']:.1f} | {r['compile_s']:.1f} |")
    lines += ["", "Data: `sample` is a seeded sample of all four VADER sets; `tweets` VADER's "
              "tweets; `reviews` its movie and product review sentences joined to at least "
              f"{args.long_tokens} tokens each (cut at max_len)."]
    return "\n".join(lines)


def plot(res: list[dict[str, Any]], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 8.5))
    batch = [r for r in res if r["part"] == "batch"]
    methods = list(dict.fromkeys(r["method"] for r in batch))
    for method, layout in dict.fromkeys((r["method"], r["layout"]) for r in batch):
        rs = sorted((r for r in batch if (r["method"], r["layout"]) == (method, layout)),
                    key=lambda r: r["batch"])
        xs = [r["batch"] for r in rs]
        c, line = f"C{methods.index(method)}", "-" if layout == "unpacked" else ":"
        ax[0, 0].plot(xs, [med(r) for r in rs], "o" + line, color=c, label=f"{method} {layout}")
        ax[1, 0].plot(xs, [r["xla_mib"] for r in rs], "o" + line, color=c,
                      label=f"{method} {layout} (XLA)")
    for a in ax[:, 0]:
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("batch size")
        xs = sorted({r["batch"] for r in batch})
        if xs:
            a.set_xticks(xs, [str(x) for x in xs])
    ax[0, 0].set_title("step time vs batch")
    ax[1, 0].set_title("memory (XLA) vs batch")

    queue = sorted((r for r in res if r["part"] == "queue"), key=lambda r: r["queue"])
    for layout in dict.fromkeys(r["layout"] for r in queue):
        rs = [r for r in queue if r["layout"] == layout]
        ks = [r["queue"] for r in rs]
        line = "-" if layout == "unpacked" else ":"
        ax[0, 1].plot(ks, [med(r) for r in rs], "o" + line, color="C1", label=f"softmcl {layout}")
        ax[1, 1].plot(ks, [r["xla_mib"] for r in rs], "o" + line, color="C1",
                      label=f"softmcl {layout} (XLA)")
    if queue:
        ks = sorted({r["queue"] for r in queue})
        for a in ax[:, 1]:
            a.set_xscale("symlog", linthresh=max(min([k for k in ks if k > 0], default=1), 1))
            a.set_xticks(ks, [f"{k // 1024}k" if k >= 1024 and k % 1024 == 0 else str(k)
                              for k in ks])
            a.minorticks_off()
            a.set_xlabel("queue size K (keys in each queue)")
    ax[0, 1].set_title(f"step time vs queue (batch {queue[0]['batch'] if queue else '-'})")
    ax[1, 1].set_title("memory (XLA) vs queue")

    length = [r for r in res if r["part"] == "length"]
    datas = list(dict.fromkeys(r["data"] for r in length))
    for j, layout in enumerate(("unpacked", "packed")):
        rs = {r["data"]: r for r in length if r["layout"] == layout}
        xs = [i + (j - 0.5) * 0.38 for i in range(len(datas))]
        have = [(x, rs[d]) for x, d in zip(xs, datas, strict=True) if d in rs]
        if not have:
            continue
        bars = ax[0, 2].bar([x for x, _ in have], [med(r) for _, r in have], 0.36, label=layout)
        for b, (_, r) in zip(bars, have, strict=True):
            ax[0, 2].annotate(f"{r['fraction']:.0%} real", (b.get_x() + b.get_width() / 2,
                                                            b.get_height()),
                              ha="center", va="bottom", fontsize=8)
        ax[1, 2].bar([x for x, _ in have], [r["xla_mib"] for _, r in have], 0.36, label=layout)
    tokens = {r["data"]: r["tokens_per_sentence"] for r in length}
    for a in ax[:, 2]:
        a.set_xticks(range(len(datas)), [f"{d}\n({tokens[d]:.0f} tokens/sentence)"
                                         for d in datas])
    seq = length[0]["seq"] if length else "-"
    ax[0, 2].set_title(f"step time vs sentence length (max_len {seq})")
    ax[1, 2].set_title("memory (XLA) vs sentence length")
    for a in ax[0]:
        a.set_ylabel("s / step (median)")
    for a in ax[1]:
        a.set_ylabel("MiB")
    for a in ax.flat:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm", help="folder, or minilm (the shipped MiniLM)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of batch,queue,length")
    p.add_argument("--batches", default="8,16,32,64,128,256")
    p.add_argument("--batch_methods", default="simcse,softmcl")
    p.add_argument("--seq", type=int, default=64, help="max_len of the batch and queue curves")
    p.add_argument("--queues", default="0,1024,4096,16384,65536")
    p.add_argument("--queue_batch", type=int, default=32)
    p.add_argument("--layouts", default="unpacked,packed",
                   help="layouts of the batch and queue curves (the length curve has both)")
    p.add_argument("--length_seq", type=int, default=128)
    p.add_argument("--length_batch", type=int, default=32)
    p.add_argument("--length_method", default="simcse")
    p.add_argument("--long_tokens", type=int, default=100)
    p.add_argument("--sentences", type=int, default=4096, help="texts per data sample (at most)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--png", default=os.path.join(ROOT, "results", "scaling.png"))
    p.add_argument("--no_write", action="store_true", help="print (and plot) only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--prep", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.worker:
        emit(worker(json.loads(args.worker), args.prep, args))
        return
    args.parts = [x for x in args.parts.split(",") if x]
    args.batches, args.queues = ints(args.batches), ints(args.queues)
    args.batch_methods = [m for m in args.batch_methods.split(",") if m]
    args.layouts = [x for x in args.layouts.split(",") if x]
    if set(args.layouts) - {"unpacked", "packed"}:
        p.error(f"--layouts: unpacked and/or packed, not {args.layouts}")
    bad = (set(args.parts) - set(PARTS)) or (
        set(args.batch_methods + [args.length_method]) - set(cs.METHODS))
    if bad:
        p.error(f"unknown {sorted(bad)}; parts: {PARTS}, methods: {cs.METHODS}")
    load = os.getloadavg()[0]
    if load > 0.25 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes "
              "compete for the CPU and the timings will not be reliable", flush=True)
    worker_env = dict(os.environ, PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    os.environ["JAX_PLATFORMS"] = "cpu"  # this process only writes data and plots
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as prep:
        prepare(args, prep)
        res = [run_point(s, prep, args, worker_env) for s in points(args)]
    if not res:
        p.error("no points: give --parts and sizes")
    plot(res, args.png)
    text = table(args, res, args.png, load)
    print(text)
    print(f"wrote {args.png}")
    if not args.no_write:
        device = "CPU" if res[0]["platform"] == "cpu" else res[0]["device_kind"]
        report.write_section(f"Cost curves: {device}, {cs.model_label(args.model)} "
                             "(benchmarks/scaling.py)", text, path=args.markdown)


if __name__ == "__main__":
    main()
