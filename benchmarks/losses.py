"""Contrastive-loss timings: jitted JAX (softmcl_jax.losses) vs the PyTorch references.

    python benchmarks/losses.py [--batch 256] [--queue 65536] [--dim 768] [--repeats 5] [--no-write]

MoCo-sized setting: B anchors, a full queue of K keys, D-dimensional float32 features. Per
loss: a forward call and a forward+backward call (gradient w.r.t. the batch features, as in
training: the queue carries no gradient). JAX functions are jitted (compile time reported
separately); PyTorch is eager, forward under ``torch.no_grad()``. Median of ``--repeats`` runs
after one warm-up. Prints a markdown table and writes it to the ``## Losses
(benchmarks/losses.py)`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report  # noqa: E402

from baselines import torch_losses as T  # noqa: E402
from softmcl_jax import losses as L  # noqa: E402

TITLE = "Losses (benchmarks/losses.py)"
N_CLASSES = 7
TEMPERATURE = 0.07


def make_inputs(b: int, k: int, d: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, N_CLASSES))
    return {
        "query": rng.normal(size=(b, d)).astype(np.float32),
        "key": rng.normal(size=(b, d)).astype(np.float32),
        "queue_keys": rng.normal(size=(k, d)).astype(np.float32),
        "labels": rng.integers(0, N_CLASSES, b),
        "queue_labels": rng.integers(0, N_CLASSES, k),
        "valence": rng.uniform(size=b).astype(np.float32),
        "queue_valence": rng.uniform(size=k).astype(np.float32),
        "class_weights": (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(
            np.float32
        ),
    }


# name -> (jax fn, torch fn, differentiable argument names, other argument names, options)
PAIR = ["query", "key"]
LOSSES = {
    "info_nce": (L.info_nce, T.info_nce, PAIR, ["queue_keys"], {}),
    "supervised_contrastive": (L.supervised_contrastive, T.supervised_contrastive,
                               ["features"], ["labels", "queue_keys", "queue_labels"], {}),
    "soft_label_contrastive": (L.soft_label_contrastive, T.soft_label_contrastive, PAIR,
                               ["valence", "queue_keys", "queue_valence"], {}),
    "soft_cse (weight)": (L.soft_cse, T.soft_cse, PAIR, ["queue_keys"], {"mode": "weight"}),
    "soft_cse (temperature)": (L.soft_cse, T.soft_cse, PAIR, ["queue_keys"],
                               {"mode": "temperature"}),
    "label_aware_contrastive": (L.label_aware_contrastive, T.label_aware_contrastive,
                                ["features"], ["labels", "class_weights", "queue_keys",
                                               "queue_labels"], {}),
}


def arrays_for(names: list[str], x: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [x["query"] if n == "features" else x[n] for n in names]


def bench_jax(fn, diff, other, options, x, repeats, precision="default"):
    def loss(*args):
        kw = dict(zip(diff + other, args, strict=True))
        return fn(**kw, temperature=TEMPERATURE, **options)

    args = [jnp.asarray(a) for a in arrays_for(diff + other, x)]
    # The precision is read when a function is traced, i.e. at its first call: all of it inside.
    with jax.default_matmul_precision(precision):
        forward = jax.jit(loss)
        backward = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(diff)))))
        t0 = time.perf_counter()
        value = float(forward(*args))
        compile_s = time.perf_counter() - t0
        fwd = report.median_seconds(lambda: forward(*args).block_until_ready(), repeats=repeats)
        bwd = report.median_seconds(lambda: jax.block_until_ready(backward(*args)),
                                    repeats=repeats)
    return value, compile_s, report.median(fwd), report.median(bwd)


def bench_torch(fn, diff, other, options, x, repeats, device):
    tensors = [torch.from_numpy(a).to(device) for a in arrays_for(diff + other, x)]
    fixed = dict(zip(other, tensors[len(diff):], strict=True))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            out = fn(**dict(zip(diff, tensors, strict=False)), **fixed,
                     temperature=TEMPERATURE, **options)
        sync()
        return out

    def backward():
        leaves = [t.detach().requires_grad_() for t in tensors[: len(diff)]]
        out = fn(**dict(zip(diff, leaves, strict=True)), **fixed, temperature=TEMPERATURE,
                 **options)
        out.backward()
        sync()
        return out

    value = float(forward())
    fwd = report.median_seconds(forward, repeats=repeats)
    bwd = report.median_seconds(backward, repeats=repeats)
    return value, report.median(fwd), report.median(bwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()

    # On an accelerator both frameworks run there, and JAX is also timed at "highest" matmul
    # precision: its default on recent NVIDIA GPUs is TF32, while torch's fp32 matmuls are not.
    on_cpu = jax.default_backend() == "cpu"
    device = "cpu" if on_cpu or not torch.cuda.is_available() else "cuda"
    x = make_inputs(args.batch, args.queue, args.dim)
    rows = []
    ms = lambda s: f"{1e3 * s:.3g}"
    for name, (jfn, tfn, diff, other, options) in LOSSES.items():
        jv, compile_s, jf, jb = bench_jax(jfn, diff, other, options, x, args.repeats)
        tv, tf, tb = bench_torch(tfn, diff, other, options, x, args.repeats, device)
        row = (f"| {name} | {ms(jf)} | {ms(tf)} | {tf / jf:.2f}x | {ms(jb)} | {ms(tb)} | "
               f"{tb / jb:.2f}x | ")
        if not on_cpu:
            _, _, hf, hb = bench_jax(jfn, diff, other, options, x, args.repeats, "highest")
            row += f"{ms(hf)} | {ms(hb)} | "
        rows.append(row + f"{compile_s:.1f} | {abs(jv - tv) / abs(tv):.1e} |")
        print(rows[-1], flush=True)
    highest = "" if on_cpu else "JAX fwd ms (highest) | JAX fwd+bwd ms (highest) | "

    body = "\n".join([
        f"B = {args.batch} anchors, K = {args.queue:,} queue keys, D = {args.dim}, float32, "
        f"tau = {TEMPERATURE}, {N_CLASSES} classes; full queue, no padding. Forward and "
        "forward+backward (gradient w.r.t. the batch features, not the queue). JAX: `jax.jit`; "
        f"PyTorch ({device}): the eager references in `baselines/torch_losses.py` (forward under "
        f"`torch.no_grad()`). Median of {args.repeats} runs after one warm-up; ms per call."
        + ("" if on_cpu else " JAX columns without a note use its default matmul precision "
           "(TF32 on recent NVIDIA GPUs); torch's fp32 matmuls do not use TF32."),
        "",
        f"Machine: {report.machine()}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'optax', 'torch')}; torch threads "
        f"{torch.get_num_threads()}.",
        "",
        "| loss | JAX fwd ms | torch fwd ms | fwd speed-up | JAX fwd+bwd ms | torch fwd+bwd ms "
        f"| fwd+bwd speed-up | {highest}JAX compile s | rel. diff of values |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if highest else ""),
        *rows,
        "",
        "The anchor-candidate matmul, (B, D) x (D, B + K), is "
        f"{2 * args.batch * args.dim * (args.batch + args.queue) / 1e9:.0f} GFLOP forward (about "
        "twice that with the backward)"
        + (" and is most of `info_nce`; what separates the rows is the " if on_cpu else
           "; the calls take well under a millisecond here, so kernel launches and dispatch "
           "count and the figures are noisy (a forward can time above its forward+backward). "
           "Besides the matmul each loss does ")
        + f"O(B (B + K)) = {args.batch * (args.batch + args.queue) / 1e6:.0f}M-element elementwise "
        "work (label comparisons, class-weight gathers, the soft-target softmax, SoftCSE's "
        "weights). The PyTorch references are written to be obviously correct and independent, "
        "not fast (they concatenate the queue to the batch keys, a full copy per call, and index "
        "out excluded anchors): the speed-ups are against them, not against tuned PyTorch."
        + (" The machine is shared, so timings carry some noise." if on_cpu else ""),
    ])
    print("\n" + body)
    if not args.no_write:
        kind = jax.devices()[0].device_kind
        title = TITLE if on_cpu else TITLE.replace("Losses", f"Losses on {kind}")
        report.write_section(title, body)
        print(f"\nwrote section '## {title}' of {report.BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
