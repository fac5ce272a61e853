"""The SoftMCL train step's throughput and model-FLOPs utilisation (MFU) for an architecture.

    python benchmarks/step_mfu.py --random bert-base --batch 256 --seq 128 --dtype bfloat16
    python benchmarks/step_mfu.py --random deberta-v3-base --batch 256 --seq 128 --dtype bfloat16
    python benchmarks/step_mfu.py --random bert-base --packing     # the same sentences, packed

The whole step that ``main.py`` runs (``train.jit_train_step``: online forward+backward with MLM at
the masked positions, momentum forward, sentence- and word-level soft contrast against the queues,
clipping, AdamW, EMA, queue writes; state donated) from ``configs/softmcl.py`` with the model,
batch, sequence and dtype replaced. Random weights in the real shapes (throughput does not depend
on the values) and a synthetic batch: lengths S/4..S, MLM at 15% capped at
``data.mlm_max_predictions`` (scaled with S: 20 per 128), a lexicon valence on 20% of tokens.
With ``--packing`` the same sentences are packed (``softmcl_jax.data.packing``) into the fewest
rows that hold every timed batch (one static shape).

Model FLOPs per step = online encoder forward+backward (3x forward, every position, as
``benchmarks/encoder.py`` counts them) + the momentum forward (1x) + the MLM head's transform and
decoder at the M predicted positions per row (3x forward). Projection heads and losses (< 1%) are
not counted, nor DeBERTa's c2p/p2c score products, so DeBERTa's MFU is a lower bound. MFU is
against the device's dense bf16 peak (``encoder.PEAK_BF16_FLOPS``); CPUs have no entry. "MFU
on real tokens" counts only the real tokens' share of those FLOPs (B x S slots of which a
fraction are sentences' tokens): the work a perfect layout would do, so padded and packed steps
compare on the same useful work.

On an accelerator host without ml_collections (the device tool's machines), carry a folder
holding it and put it on PYTHONPATH. Writes a BENCHMARKS.md section unless --no_write.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import encoder  # noqa: E402
import report  # noqa: E402


def softmcl_config(args: argparse.Namespace, path: str):
    config = runpy.run_path(os.path.join(ROOT, "configs", "softmcl.py"))["get_config"]()
    config.model.name_or_path = path
    config.model.dtype = args.dtype
    config.model.remat = args.remat
    config.batch_size, config.model.max_len = args.batch, args.seq
    config.data.mlm_max_predictions = max(1, round(args.seq * 20 / 128))
    o = config.objective
    o.soft_sentence.queue_size = args.batch * 32
    o.soft_word.queue_size = args.batch * o.soft_word.max_words_per_sentence * 16
    config.probe.enabled = False
    config.data.packing = args.packing
    return config


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


def step_flops(hf_config, batch: int, seq: int, predictions: int) -> float:
    online = encoder.train_flops(hf_config, batch, seq)
    momentum = online / 3
    h, v = hf_config.hidden_size, hf_config.vocab_size
    mlm_head = 3 * 2 * batch * predictions * (h * h + h * v)
    return online + momentum + mlm_head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--random", choices=sorted(encoder.RANDOM_CONFIGS), default="bert-base")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--packing", action="store_true", help="pack the sentences (data.packing)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no_write", action="store_true", help="print only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    args = p.parse_args()

    import jax

    from softmcl_jax import objective, sharding, train
    from softmcl_jax.models import DTYPES, from_pretrained

    path = encoder.random_checkpoint(args.random)
    config = softmcl_config(args, path)
    pretrained = from_pretrained(path, dtype=DTYPES[args.dtype], remat=args.remat, seed=0)
    model = objective.build_model(pretrained, objective.plan(config), config)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    init, _, _, step_fn = train.setup_step(model, config, mesh)
    state = init()
    vocab = pretrained.config.vocab_size
    batches = [synthetic_batch(config, vocab, i) for i in range(args.repeats + 1)]
    real = sum(int(b["attention_mask"].sum()) for b in batches) / (
        len(batches) * args.batch * args.seq)
    if args.packing:
        batches = pack_batches(batches)
    keys = objective.plan(config).batch_keys
    batches = [{k: b[k] for k in keys} for b in batches]
    rows = batches[0]["packed_input_ids" if args.packing else "input_ids"].shape[0]

    def run(i: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batches[i])
        scalars = train.host_scalars(metrics)  # waits for the step, as a logging step does
        if not np.isfinite(scalars["loss"]):
            raise SystemExit(f"step {i}: loss {scalars['loss']}")
        return time.perf_counter() - t0

    compile_s = run(0)
    times = sorted(run(i) for i in range(1, args.repeats + 1))
    med = report.median(times)
    # The encoder runs on rows x seq slots (packed: fewer rows); MLM on the same predictions.
    flops = step_flops(pretrained.config, rows, args.seq, config.data.mlm_max_predictions)
    useful = real * step_flops(pretrained.config, args.batch, args.seq,
                               config.data.mlm_max_predictions)
    dev = jax.devices()[0]
    peak = encoder.PEAK_BF16_FLOPS.get(dev.device_kind)
    where = "CPU" if dev.platform == "cpu" else dev.device_kind
    mfu = f"{flops / med / peak:.1%}" if peak else "n/a (no peak figure for this device)"
    mfu_real = f"{useful / med / peak:.1%}" if peak else "n/a"
    layout = (f"packed into {rows} rows" if args.packing else "padded") + (
        f" ({real * args.batch * args.seq / (rows * args.seq):.0%} real tokens)")
    lines = [
        f"SoftMCL train step, {args.random} (random weights), batch {args.batch} x seq "
        f"{args.seq}, {args.dtype}{', remat' if args.remat else ''}, MLM at "
        f"{config.data.mlm_max_predictions} positions per row, queues "
        f"{config.objective.soft_sentence.queue_size}/{config.objective.soft_word.queue_size}, "
        f"{layout}; median of {args.repeats} after the compiling call.",
        "",
        f"Machine: {report.machine()}. Versions: "
        f"{report.versions('jax', 'jaxlib', 'flax', 'optax')}.",
        "",
        "| layout | s/step (median) | min s | steps/s | sequences/s | model TFLOP/step | "
        "TFLOP/s | MFU | MFU on real tokens | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {'packed' if args.packing else 'padded'} | {med:.4f} | {times[0]:.4f} | "
        f"{1 / med:.2f} | {args.batch / med:.1f} | {flops / 1e12:.3f} | "
        f"{flops / med / 1e12:.2f} | {mfu} | {mfu_real} | {compile_s:.1f} |",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        report.write_section(f"SoftMCL step MFU: {args.random}, {where}, {args.dtype} "
                             "(benchmarks/step_mfu.py)", table, path=args.markdown)


if __name__ == "__main__":
    main()
