"""A train step's throughput and model-FLOPs utilisation (MFU) for an architecture.

    python benchmarks/step_mfu.py --random bert-base --batch 256 --seq 128 --dtype bfloat16
    python benchmarks/step_mfu.py --random deberta-v3-base --batch 256 --seq 128 --dtype bfloat16
    python benchmarks/step_mfu.py --random bert-base --packing     # the same sentences, packed
    python benchmarks/step_mfu.py --config configs/softmcl_anchored.py --random bert-base
    python benchmarks/step_mfu.py --batch 4096 --grad_cache_chunk 256   # gradient caching

The whole step that ``main.py`` runs (``train.setup_step``'s jitted step: for SoftMCL, online
forward+backward with MLM at the masked positions, momentum forward, sentence- and word-level
soft contrast against the queues, clipping, AdamW, EMA, queue writes; state donated) from
``--config`` (default ``configs/softmcl.py``; any objective the synthetic batch feeds, i.e. one
reading text, MLM masks and valences) with the model, batch, sequence and dtype replaced. Random
weights in the real shapes (throughput does not depend on the values) and a synthetic batch:
lengths S/4..S, MLM at 15% capped at ``data.mlm_max_predictions`` (scaled with S: 20 per 128),
a lexicon valence on 20% of tokens. With ``--packing`` the same sentences are packed
(``softmcl_jax.data.packing``) into the fewest rows that hold every timed batch (one static
shape). Queues hold 32 (sentence keys) and 16 (word keys) batches up to batch 256, the same
number of keys beyond (:func:`set_queues`).

Model FLOPs per step (:func:`step_flops`, read from the objective's plan) = each online encoder
pass's forward+backward (3x forward, every position, as ``benchmarks/encoder.py`` counts them)
+ each momentum or frozen pass's forward (1x) + the MLM head's transform and decoder at the M
predicted positions per sentence (3x forward). Projection heads and losses (< 1%) are not
counted, nor DeBERTa's c2p/p2c score products, so DeBERTa's MFU is a lower bound; nor gradient
caching's second forward of each chunk (model FLOPs, not hardware FLOPs). MFU is against the
device's dense bf16 peak (``encoder.PEAK_BF16_FLOPS``); CPUs have no entry. "MFU on real tokens"
counts only the real tokens' share of those FLOPs (B x S slots of which a fraction are
sentences' tokens): the work a perfect layout would do, so padded and packed steps compare on
the same useful work.

On an accelerator host without ml_collections (the device tool's machines), carry a folder
holding it and put it on PYTHONPATH. Writes a BENCHMARKS.md section unless --no_write.
``benchmarks/accelerator.py`` runs this measurement (:func:`measure`) for every case BENCHMARKS.md
needs in one command.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import encoder  # noqa: E402
import report  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs")
# Batches of keys a queue holds: sentence-level queues (B keys per step) 32, word-level ones
# (B x words per sentence) 16, up to batch 256; beyond it the same number of keys (the queues'
# logits would otherwise grow with the square of the batch).
QUEUE_BATCHES = {"sentence": 32, "word": 16}
QUEUE_BATCH_CAP = 256


def step_config(config_file: str, path: str, *, batch: int, seq: int, dtype: str = "bfloat16",
                remat: bool = False, packing: bool = False, grad_cache_chunk: int = 0):
    """``config_file``'s config with the model, batch, sequence, dtype and layout replaced.

    MLM at 20 positions per 128 tokens (``data.mlm_max_predictions``), queues sized by
    :func:`set_queues`, the probe off; ``grad_cache_chunk > 0`` sets ``config.grad_cache.chunk``
    (sentences per chunk per device).
    """
    config = runpy.run_path(config_file)["get_config"]()
    config.model.name_or_path = path
    config.model.dtype = dtype
    config.model.remat = remat
    config.batch_size, config.model.max_len = batch, seq
    config.data.mlm_max_predictions = max(1, round(seq * 20 / 128))
    config.probe.enabled = False
    config.data.packing = packing
    if grad_cache_chunk:
        config.grad_cache.chunk = grad_cache_chunk
    set_queues(config)
    return config


def set_queues(config) -> dict[str, int]:
    """Size every queue of the objective (:data:`QUEUE_BATCHES`); returns ``{term: size}``.

    A multiple of the keys the term writes per step, as the trainer requires.
    """
    from softmcl_jax import objective

    # The plan refuses a queue that is not a multiple of its writes per step (B sentence keys,
    # B x W word keys): a multiple of all of them first, to read each one's writes.
    o = config.objective
    words = math.lcm(*(o[t].max_words_per_sentence for t in o
                       if "max_words_per_sentence" in o[t]))
    for t in o:
        if o[t].get("queue_size"):
            o[t].queue_size = config.batch_size * words
    sizes = {}
    for q in objective.plan(config).queues:
        held = QUEUE_BATCHES["sentence" if q.per_step <= config.batch_size else "word"]
        held = max(1, min(held, held * QUEUE_BATCH_CAP // config.batch_size))
        sizes[q.name] = config.objective[q.name].queue_size = q.per_step * held
    return sizes


def synthetic_batch(config, vocab: int, step: int) -> dict[str, np.ndarray]:
    from softmcl_jax.data.masking import mask_tokens

    b, s = config.batch_size, config.model.max_len
    rng = np.random.default_rng(step)
    lengths = rng.integers(max(s // 4, 3), s + 1, size=b)
    pos = np.arange(s)[None]
    mask = (pos < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(5, vocab, size=(b, s)), 0).astype(np.int32)
    special = (pos == 0) | (pos >= lengths[:, None] - 1)
    mlm_ids, labels = mask_tokens(ids, special, mask_token_id=4, vocab_size=vocab, seed=0,
                                  step=step, process_index=0, rate=config.data.mlm_rate,
                                  special_ids=(0, 1, 2, 3),
                                  max_predictions=config.data.mlm_max_predictions)
    rated = (rng.random((b, s)) < 0.2) & ~special
    return {"input_ids": ids, "attention_mask": mask, "valid": np.ones(b, bool),
            "mlm_input_ids": mlm_ids, "mlm_labels": labels,
            "sentence_valence": rng.random(b).astype(np.float32),
            "token_valence": np.where(rated, rng.random((b, s)), 0).astype(np.float32),
            "token_valence_mask": rated}


def pack_batches(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The batches packed into the fewest rows that hold each of them, one row count for all."""
    from softmcl_jax.data import packing

    b, s = batches[0]["input_ids"].shape
    need = max(int(packing.assign_rows(packing.lengths(x["attention_mask"]), max_len=s,
                                       rows=b)[0].max()) + 1 for x in batches)
    return [packing.pack(x, rows=need, pad_id=0) for x in batches]


def step_flops(hf_config, the_plan, *, rows: int, seq: int, sentences: int,
               predictions: int) -> float:
    """Model FLOPs of one step of ``the_plan`` (``objective.plan``).

    Every encoder pass over ``rows`` x ``seq`` slots: 3x forward for an online (trained) pass,
    1x for the momentum and frozen ones, times its dropout views; the MLM head (transform and
    decoder, 3x forward) at ``predictions`` positions of each of ``sentences`` when a pass
    computes MLM logits (packed, the head runs per sentence, not per row).
    """
    forward = encoder.train_flops(hf_config, rows, seq) / 3
    total = sum(p.views * (3 if p.train else 1) * forward for p in the_plan.passes)
    if any(p.mlm_logits for p in the_plan.passes):
        h, v = hf_config.hidden_size, hf_config.vocab_size
        total += 3 * 2 * sentences * predictions * (h * h + h * v)
    return total


def real_tokens(batch: dict[str, np.ndarray]) -> int:
    """The sentences' tokens a batch feeds the encoder: packed, the non-padding slots of its
    rows; padded, the attention mask's ones."""
    if "segment_ids" in batch:
        return int((batch["segment_ids"] > 0).sum())
    return int(batch["attention_mask"].sum())



def timed_steps(step: Callable[[int], Mapping[str, float]], repeats: int
                ) -> tuple[float, list[float], list[float], list[float]]:
    """Step 0, then steps 1..``repeats``, each timed until ``step(i)`` returns its metrics as
    host numbers (so the step has finished): (first step s, the others' times sorted, losses,
    grad norms). A non-finite loss is an error: a diverged step's time means nothing."""
    times, losses, grad_norms = [], [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        metrics = step(i)
        times.append(time.perf_counter() - t0)
        if not math.isfinite(metrics["loss"]):
            raise RuntimeError(f"step {i}: loss {metrics['loss']}")
        losses.append(metrics["loss"])
        grad_norms.append(metrics["grad_norm"])
    return times[0], sorted(times[1:]), losses, grad_norms


def measure(config, path: str, *, repeats: int) -> dict:
    """Time ``repeats`` steps of ``config`` (after the compiling first one) on synthetic batches.

    Returns the sorted step times and the compile call's, the layout (rows per step, the real
    tokens of every step's batch, counted from what the encoder reads), the model FLOPs per step
    on those rows and on the padded batch's real tokens (:func:`step_flops`), every step's loss
    and gradient norm, and XLA's memory plan of the step (:func:`planned_memory_gib`).
    """
    import jax

    from softmcl_jax import objective, sharding, train
    from softmcl_jax.models import DTYPES, from_pretrained

    the_plan = objective.plan(config)
    pretrained = from_pretrained(path, dtype=DTYPES[config.model.dtype],
                                 remat=config.model.remat, seed=config.seed,
                                 dropout=config.model.dropout)
    model = objective.build_model(pretrained, the_plan, config)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    init, _, _, step_fn = train.setup_step(model, config, mesh, the_plan)
    state = init()
    vocab = pretrained.config.vocab_size
    batches = [synthetic_batch(config, vocab, i) for i in range(repeats + 1)]
    padded_tokens = [real_tokens(b) for b in batches]
    if config.data.packing:
        batches = pack_batches(batches)
    batches = [{k: b[k] for k in the_plan.batch_keys} for b in batches]
    tokens = [real_tokens(b) for b in batches]
    b, s = config.batch_size, config.model.max_len
    rows = batches[0]["packed_input_ids" if config.data.packing else "input_ids"].shape[0]
    t0 = time.perf_counter()
    # Compiled ahead of time: the compile time on its own, and XLA's memory plan of the step.
    compiled = step_fn.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0

    def step(i: int) -> dict[str, float]:
        nonlocal state
        state, metrics = compiled(state, batches[i], step_fn.constants)
        return train.host_scalars(metrics)  # waits for the step, as a logging step does

    first_s, times, losses, grad_norms = timed_steps(step, repeats)
    m = config.data.mlm_max_predictions or s
    real = sum(padded_tokens) / (len(padded_tokens) * b * s)
    return dict(
        times=times, compile_s=compile_s, first_s=first_s, rows=rows, batch=b, seq=s,
        real_tokens=tokens, memory_gib=planned_memory_gib(compiled),
        real_fraction=real, first_loss=losses[0], losses=losses, grad_norms=grad_norms,
        mlm_predictions=m,
        queues={q.name: config.objective[q.name].queue_size for q in the_plan.queues},
        flops=step_flops(pretrained.config, the_plan, rows=rows, seq=s, sentences=b,
                         predictions=m),
        useful_flops=real * step_flops(pretrained.config, the_plan, rows=b, seq=s, sentences=b,
                                       predictions=m))


def planned_memory_gib(compiled) -> float | None:
    """The device memory XLA plans for one call of ``compiled``: its arguments (the state and
    the batch), outputs not aliased to a donated argument, and temporaries (the activations);
    None where the backend gives no analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    used = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)
    return used / 2**30


def figures(result: dict, peak: float | None) -> dict:
    """Throughput and MFU from :func:`measure`'s (or the PyTorch side's) result: median and
    min s/step, steps/s, sequences/s, TFLOP/step and TFLOP/s, and MFU and MFU on real tokens
    against ``peak`` FLOP/s (None without a peak figure)."""
    med = report.median(result["times"])
    return dict(
        median_s=med, min_s=result["times"][0], steps_per_s=1 / med,
        sequences_per_s=result["batch"] / med, tflop_per_step=result["flops"] / 1e12,
        tflops=result["flops"] / med / 1e12,
        mfu=result["flops"] / med / peak if peak else None,
        mfu_real_tokens=result["useful_flops"] / med / peak if peak else None)


def gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def device_peak() -> tuple[str, float | None]:
    """(where it runs: "CPU" or the device kind, its dense bf16 peak FLOP/s or None)."""
    import jax

    dev = jax.devices()[0]
    return ("CPU" if dev.platform == "cpu" else dev.device_kind,
            encoder.PEAK_BF16_FLOPS.get(dev.device_kind))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(CONFIGS, "softmcl.py"),
                   help="the objective's config file (configs/*.py)")
    p.add_argument("--random", choices=sorted(encoder.RANDOM_CONFIGS), default="bert-base")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--packing", action="store_true", help="pack the sentences (data.packing)")
    p.add_argument("--grad_cache_chunk", type=int, default=0,
                   help="config.grad_cache.chunk: sentences per chunk per device (0: off)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no_write", action="store_true", help="print only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    args = p.parse_args()

    path = encoder.random_checkpoint(args.random)
    config = step_config(args.config, path, batch=args.batch, seq=args.seq, dtype=args.dtype,
                         remat=args.remat, packing=args.packing,
                         grad_cache_chunk=args.grad_cache_chunk)
    res = measure(config, path, repeats=args.repeats)
    where, peak = device_peak()
    f = figures(res, peak)
    na = "n/a (no peak figure for this device)"
    mfu = f"{f['mfu']:.1%}" if peak else na
    mfu_real = f"{f['mfu_real_tokens']:.1%}" if peak else "n/a"
    rows, b, s = res["rows"], args.batch, args.seq
    layout = (f"packed into {rows} rows" if args.packing else "padded") + (
        f" ({res['real_fraction'] * b / rows:.0%} real tokens)")
    name = os.path.splitext(os.path.basename(args.config))[0]
    queues = "/".join(str(q) for q in res["queues"].values()) or "none"
    cache = (f", gradient caching {args.grad_cache_chunk} sentences per chunk"
             if args.grad_cache_chunk else "")
    lines = [
        f"{name} train step, {args.random} (random weights), batch {b} x seq {s}, "
        f"{args.dtype}{', remat' if args.remat else ''}{cache}, MLM at "
        f"{res['mlm_predictions']} positions per sentence, queues {queues}, "
        f"{layout}; median of {args.repeats} after the compiling call.",
        "",
        f"Machine: {report.machine()}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'flax', 'optax')}.",
        "",
        "| layout | s/step (median) | min s | steps/s | sequences/s | model TFLOP/step | "
        "TFLOP/s | MFU | MFU on real tokens | compile s | XLA memory plan GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {'packed' if args.packing else 'padded'} | {f['median_s']:.4f} | {f['min_s']:.4f} | "
        f"{f['steps_per_s']:.2f} | {f['sequences_per_s']:.1f} | {f['tflop_per_step']:.3f} | "
        f"{f['tflops']:.2f} | {mfu} | {mfu_real} | {res['compile_s']:.1f} | "
        f"{gib(res['memory_gib'])} |",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        prefix = "SoftMCL step MFU" if name == "softmcl" else f"{name} step MFU"
        report.write_section(f"{prefix}: {args.random}, {where}, {args.dtype} "
                             "(benchmarks/step_mfu.py)", table, path=args.markdown)


if __name__ == "__main__":
    main()
