"""Training steps of every preset, JAX trainer vs PyTorch baseline; plus queue+EMA and evaluation.

    python benchmarks/run.py [--methods softmcl,simcse,softcse,retrofit,lcl] [--batch 32]
        [--seq 64] [--repeats 5] [--eval_texts 512] [--model PATH] [--no_write]

For each preset (``--methods``, each a configs/<name>.py): ``softmcl_jax.train.train_step`` (one
``jax.jit``, state donated) against ``baselines.torch_train.TorchTrainer.step`` (eager PyTorch),
from the same initial weights (MiniLM, the heads the JAX trainer draws from the seed) on the same
batches (the JAX pipeline's VADER batches, MLM-masked; retrofitting and LCL get made-up labels,
valence bins), fp32, with the configs' dropout. Each timed step is a full optimisation step on a
new batch (forward, backward, clip, AdamW, EMA and queue writes where the preset has them,
metrics to the host), median of ``--repeats`` after one warm-up step that, for JAX, is the
compilation (reported separately).

Also measured: the queue+EMA maintenance of SoftMCL alone (``ema = mu * ema + (1 - mu) * params``
over all parameters plus one step's writes into its soft_sentence and soft_word queues; jitted
and donated in JAX, in place in torch), the evaluation embedding (sentence vectors of
``--eval_texts`` VADER sentences, batch 64, padded to ``--seq``), and peak memory: each framework
runs in its own process (which imports only that framework), so the peak resident set size (CPU)
or the peak device allocation (GPU) is its own.
Writes a section of BENCHMARKS.md through benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import json
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
import report  # noqa: E402
import workers  # noqa: E402
from workers import emit, peak_rss_mib  # noqa: E402

METHODS = ("softmcl", "simcse", "softcse", "retrofit", "lcl")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_config(method: str, args: argparse.Namespace) -> Any:
    import runpy

    config = runpy.run_path(os.path.join(ROOT, "configs", f"{method}.py"))["get_config"]()
    config.model.name_or_path = args.model
    config.batch_size, config.model.max_len = args.batch, args.seq
    config.total_steps = 1000
    config.probe.enabled = False
    # Both sides pad every sentence to max_len: this table compares the padded layout
    # (benchmarks/compare_st.py has the packed one against dynamic padding).
    config.data.packing = False
    if method in ("retrofit", "lcl"):  # labels are made up from valences (see prepare)
        config.data.source, config.data.path = "vader", ""
    return config


# ------------------------------------------------------------------------------ preparation


def prepare(args: argparse.Namespace, out: str) -> None:
    """Batches, texts, and each preset's initial weights written as the JAX trainer has them."""
    import jax

    from baselines.torch_train import jax_initialised_model
    from softmcl_jax import loop, sharding
    from softmcl_jax.data import load_vader_sentences

    config = load_config("softmcl", args)
    config.data.max_examples = 4096
    pretrained, tokenizer, _ = loop.setup_model(config)
    del pretrained
    pipeline = loop.build_pipeline(config, tokenizer, sharding.make_mesh(1, 1, jax.devices()[:1]))
    batches = [pipeline.batch(s) for s in range(args.repeats + 1)]
    arrays = {}
    for i, b in enumerate(batches):
        for k, v in b.items():
            arrays[f"{i}/{k}"] = v
    np.savez(os.path.join(out, "batches.npz"), **arrays)
    texts = [s.text for s in load_vader_sentences()[-args.eval_texts:]]
    with open(os.path.join(out, "texts.json"), "w") as f:
        json.dump(texts, f)
    # The evaluation runs on the SimCSE setup (plain AutoModel encoder).
    for method in sorted(set(args.methods) | (set() if args.no_eval else {"simcse"})):
        c = load_config(method, args)
        _, heads, _ = jax_initialised_model(c, os.path.join(out, method))
        flat = {}
        for name, head in heads.items():
            for layer, p in head.items():
                for leaf, v in p.items():
                    flat[f"{name}/{layer}/{leaf}"] = np.asarray(v)
        np.savez(os.path.join(out, method, "heads.npz"), **flat)


def load_batches(prep: str, method: str, args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    data = np.load(os.path.join(prep, "batches.npz"))
    out: list[dict[str, np.ndarray]] = [{} for _ in range(args.repeats + 1)]
    for key in data.files:
        i, k = key.split("/", 1)
        out[int(i)][k] = data[key]
    if method in ("retrofit", "lcl"):
        n = load_config(method, args).data.num_labels
        for b in out:  # made-up classes: valence bins (the timing does not depend on them)
            b["labels"] = np.minimum((b["sentence_valence"] * n).astype(np.int32), n - 1)
    return out


# ---------------------------------------------------------------------------------- workers


def jax_worker(method: str, prep: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import optax

    from softmcl_jax import loop, objective, sharding, train
    from softmcl_jax.evaluation.embed import embed_sentences

    before = rss_mib()
    config = load_config("simcse" if method == "eval" else method, args)
    pretrained, tokenizer, model = loop.setup_model(config)
    if method == "eval":
        texts = json.load(open(os.path.join(prep, "texts.json")))
        kw = dict(max_len=args.seq, batch_size=64, pooling=config.model.pooling)
        t0 = time.perf_counter()
        embed_sentences(pretrained, pretrained.params, tokenizer, texts, **kw)
        first = time.perf_counter() - t0
        times = report.median_seconds(
            lambda: embed_sentences(pretrained, pretrained.params, tokenizer, texts, **kw),
            repeats=args.repeats, warmup=0)
        return dict(times=times, first=first, **_memory_jax(before))

    batches = load_batches(prep, method, args)
    the_plan = objective.plan(config)
    batches = [{k: b[k] for k in the_plan.batch_keys} for b in batches]
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    init, _, shardings, step_fn = train.setup_step(model, config, mesh, the_plan)
    state = init()

    def step(i: int) -> None:
        nonlocal state
        state, metrics = step_fn(state, batches[i])
        train.host_scalars(metrics)  # what the loop does at a logging step; waits for the step

    t0 = time.perf_counter()
    step(0)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    out = dict(times=sorted(times), first=compile_s)
    if method == "softmcl":
        mu = config.momentum.decay
        rng = np.random.default_rng(0)
        # One step's writes into each queue: per_step keys (batch, x words per sentence for
        # soft_word) with their label values, shaped as the state holds them.
        enq = {q.name: (rng.normal(size=(q.per_step, config.head.dim)).astype(np.float32),
                        np.zeros((q.per_step, *q.value_shape), np.float32),
                        np.ones(q.per_step, bool))
               for q in the_plan.queues}

        def maintain(s, enq):
            ema = optax.incremental_update(s.params, s.ema_params, step_size=1.0 - mu)
            queues = {n: train.enqueue(q, *enq[n]) for n, q in s.queues.items()}
            return s.replace(ema_params=ema, queues=queues)

        fn = jax.jit(maintain, in_shardings=(shardings, None), out_shardings=shardings,
                     donate_argnums=0)

        def run_maintain() -> None:
            nonlocal state
            state = jax.block_until_ready(fn(state, enq))

        out["maintain"] = report.median_seconds(run_maintain, repeats=max(args.repeats, 20))
    out.update(_memory_jax(before))
    return out


def _memory_jax(before: float) -> dict[str, Any]:
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    return dict(rss_before=before, peak_rss=peak_rss_mib(), platform=dev.platform,
                device_kind=dev.device_kind,
                device_peak=stats.get("peak_bytes_in_use", 0) / 2**20)


def torch_worker(method: str, prep: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from baselines.torch_train import TorchTrainer

    transformers.utils.logging.set_verbosity_error()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    before = rss_mib()
    name = "simcse" if method == "eval" else method
    config = load_config(name, args)
    flat = np.load(os.path.join(prep, name, "heads.npz"))
    heads: dict[str, Any] = {}
    for key in flat.files:
        head, layer, leaf = key.split("/")
        heads.setdefault(head, {}).setdefault(layer, {})[leaf] = flat[key]
    trainer = TorchTrainer(config, os.path.join(prep, name), init_heads_from=heads,
                           device=device)
    if method == "eval":
        texts = json.load(open(os.path.join(prep, "texts.json")))
        tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(prep, name))

        def embed() -> None:
            trainer.embed(tokenizer, texts, max_len=args.seq, batch_size=64)
            sync()

        t0 = time.perf_counter()
        embed()
        first = time.perf_counter() - t0
        times = report.median_seconds(embed, repeats=args.repeats, warmup=0)
        return dict(times=times, first=first, **_memory_torch(before, device))

    batches = load_batches(prep, method, args)
    t0 = time.perf_counter()
    trainer.step(batches[0])  # float() of the metrics waits for the step, as on the JAX side
    first = time.perf_counter() - t0
    times = []
    for i in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        trainer.step(batches[i])
        times.append(time.perf_counter() - t0)
    out = dict(times=sorted(times), first=first)
    if method == "softmcl":
        g = torch.Generator().manual_seed(0)
        b, d = config.batch_size, config.head.dim
        w = config.objective.soft_word.max_words_per_sentence

        def rows(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            values = trainer.queues[name].values.shape[1:]  # (label dimensions,)
            return (torch.randn(n, d, generator=g).to(device),
                    torch.zeros(n, *values, device=device),
                    torch.ones(n, dtype=torch.bool, device=device))

        enq = {"soft_sentence": rows("soft_sentence", b), "soft_word": rows("soft_word", b * w)}

        def maintain() -> None:
            trainer.update_momentum_and_queues(enq)
            sync()

        out["maintain"] = report.median_seconds(maintain, repeats=max(args.repeats, 20))
    out["threads"] = torch.get_num_threads()
    out.update(_memory_torch(before, device))
    return out


def _memory_torch(before: float, device: str) -> dict[str, Any]:
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
    return dict(rss_before=before, peak_rss=peak_rss_mib(), device_peak=peak)


def run_worker(framework: str, method: str, prep: str, args: argparse.Namespace,
               env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={framework}",
           f"--method={method}", f"--prep={prep}", f"--batch={args.batch}", f"--seq={args.seq}",
           f"--repeats={args.repeats}", f"--model={args.model}",
           f"--torch_threads={args.torch_threads}"]
    env = dict(env, PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    result = workers.run_worker(cmd, env, f"{framework} {method}")
    print(f"{framework:5s} {method:8s} median {report.median(result['times']):.3f} s "
          f"(first {result['first']:.1f} s), peak RSS {result['peak_rss']:.0f} MiB", flush=True)
    return result


# -------------------------------------------------------------------------------------- main


def device(res: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The JAX workers' device: "CPU" or its kind (this process itself runs on the CPU)."""
    r = next(v for (fw, _), v in res.items() if fw == "jax")
    return "CPU" if r["platform"] == "cpu" else r["device_kind"]


def table(args: argparse.Namespace, res: dict[tuple[str, str], dict[str, Any]],
          load: float) -> str:
    gpu = device(res) != "CPU"
    mem = "peak device MiB" if gpu else "peak RSS MiB (after import)"
    threads = res.get(("torch", args.methods[0]), {}).get("threads", "?")
    label = "MiniLM-L6 (all-MiniLM-L6-v2)" if args.model == "minilm" else args.model
    lines = [
        f"{label}, batch {args.batch} x seq {args.seq}, fp32, the configs' hyper-parameters "
        f"(dropout on); one full optimisation step per new batch; median of {args.repeats} "
        "after one warm-up step (JAX: its compilation, in the last column).",
        "",
        f"Machine: {report.machine()}{f'; device: {device(res)}' if gpu else ''}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers')}; "
        f"torch threads {threads}; load average {load:.2f} at the start.",
        "",
        f"| method | JAX s/step | PyTorch s/step | PyTorch / JAX time | JAX {mem} | "
        f"PyTorch {mem} | JAX compile s |",
        "|---|---|---|---|---|---|---|",
    ]

    def memory(r: dict[str, Any]) -> str:
        if gpu:
            return f"{r['device_peak']:.0f}"
        return f"{r['peak_rss']:.0f} ({r['rss_before']:.0f})"

    for m in args.methods:
        j, t = res[("jax", m)], res[("torch", m)]
        mj, mt = report.median(j["times"]), report.median(t["times"])
        lines.append(f"| {m} | {mj:.3f} | {mt:.3f} | {mt / mj:.2f}x | {memory(j)} | "
                     f"{memory(t)} | {j['first']:.1f} |")
    if "softmcl" in args.methods:
        j, t = res[("jax", "softmcl")], res[("torch", "softmcl")]
        mj, mt = report.median(j["maintain"]), report.median(t["maintain"])
        sj, st = report.median(j["times"]), report.median(t["times"])
        lines += ["", f"SoftMCL queue+EMA maintenance alone (EMA of all parameters, heads "
                  f"included, and both queue writes; median of {max(args.repeats, 20)}): "
                  f"JAX {mj * 1e3:.1f} ms ({mj / sj:.1%} of its step), PyTorch {mt * 1e3:.1f} "
                  f"ms ({mt / st:.1%} of its step). In the JAX step it is fused into the same "
                  "program, so the isolated figure is an upper bound there."]
    if ("jax", "eval") in res:
        j, t = res[("jax", "eval")], res[("torch", "eval")]
        mj, mt = report.median(j["times"]), report.median(t["times"])
        lines += ["", f"Evaluation embedding ({args.eval_texts} VADER sentences, batch 64, "
                  f"length-bucketed up to {args.seq}, inference mode; tokenising included): "
                  f"JAX `embed_sentences` {mj:.2f} s ({args.eval_texts / mj:.0f} sentences/s; "
                  f"first call with compilation {j['first']:.1f} s), PyTorch "
                  f"`TorchTrainer.embed` {mt:.2f} s ({args.eval_texts / mt:.0f} sentences/s); "
                  f"PyTorch / JAX time {mt / mj:.2f}x."]
    lines += ["", "Each framework runs in its own process; peak memory is that process's "
              "(in brackets: its resident size after the imports, before the model loads). "
              "The PyTorch step is eager; `PyTorch / JAX time` > 1 means JAX is faster."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval_texts", type=int, default=512)
    p.add_argument("--model", default="minilm", help="folder, or minilm (the shipped MiniLM)")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch.set_num_threads in the PyTorch workers (0: torch's default)")
    p.add_argument("--no_eval", action="store_true")
    p.add_argument("--no_write", action="store_true", help="print only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--prep", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    if args.worker:
        fn = jax_worker if args.worker == "jax" else torch_worker
        emit(fn(args.method, args.prep, args))
        return

    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {METHODS}")
    load = os.getloadavg()[0]
    if load > 0.25 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes "
              "compete for the CPU and the timings will not be reliable (an oversubscribed "
              "OpenMP pool slows PyTorch far more than JAX)", flush=True)
    res: dict[tuple[str, str], dict[str, Any]] = {}
    worker_env = dict(os.environ)
    # This process only draws the initial weights: keep it off the accelerator the JAX worker
    # measures (and its memory). The workers get the environment as it was.
    os.environ["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="bench_run_") as prep:
        t0 = time.perf_counter()
        prepare(args, prep)
        print(f"prepared batches and initial weights in {time.perf_counter() - t0:.0f} s",
              flush=True)
        jobs = list(args.methods) + ([] if args.no_eval else ["eval"])
        for m in jobs:
            for fw in ("jax", "torch"):
                res[(fw, m)] = run_worker(fw, m, prep, args, worker_env)
    text = table(args, res, load)
    print(text)
    if not args.no_write:
        report.write_section(f"Training steps, JAX vs PyTorch: {device(res)}, batch {args.batch} x "
                             f"seq {args.seq} (benchmarks/run.py)", text, path=args.markdown)


if __name__ == "__main__":
    main()
