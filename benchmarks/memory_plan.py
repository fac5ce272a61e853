"""Memory plan of the SoftMCL step: an analytic model, checked against XLA where it fits.

    python benchmarks/memory_plan.py            # writes docs/scaling.md's tables

Per device, for an encoder with P parameters (fp32 master copies), N devices, global batch B,
sequence S, hidden H, heads A, layers L, vocabulary V, queues K x D:

* parameters 4P, Adam moments 8P, EMA copy 4P (the momentum encoder), gradients 4P; each divided
  by N under fsdp (split over the fsdp axis), whole on every device under pure data parallelism;
* queues 4 K (D + 2) bytes (keys, valences, valid flags), split along K over all N devices;
* activations kept for the backward, per layer and example (Korthikanti et al. 2022, bf16, with
  dropout masks): S H (34 + 5 A S / H) bytes, plus 4 A S^2 for DeBERTa's c2p/p2c score matrices
  (the gathers keep their inputs); with per-layer remat only the layer inputs, 2 S H per layer,
  and one layer's full set while it is recomputed;
* MLM logits: the head's (B/N, M, V) float32 logits and their gradient, 8 M V bytes per example,
  M = ``data.mlm_max_predictions`` (logits only at the masked positions; the plans use M = 20 of
  S = 128, BERT's setting). At every position (M = S) this was the largest single item for a 128k
  vocabulary, 6.4x what it is now;
* the momentum forward keeps nothing for a backward.

The check compiles the real train step (MiniLM, tiny batches, CPU) and compares the plan with
``jax.jit(step).lower(state, batch).compile().memory_analysis()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    params: float  # total parameters
    layers: int
    hidden: int
    heads: int
    vocab: int
    deberta: bool


DEBERTA_V3_LARGE = Arch("DeBERTa-v3-large", 435e6, 24, 1024, 16, 128100, True)
BERT_BASE = Arch("BERT-base", 110e6, 12, 768, 12, 30522, False)


def plan(a: Arch, *, batch: int, seq: int, devices: int, fsdp: bool, remat: bool,
         k_sentence: int, k_word: int, predictions: int, dim: int = 128, act_bytes: int = 2
         ) -> dict[str, float]:
    """Bytes per device of each part of the SoftMCL train step (``predictions``: MLM logits
    per example, ``data.mlm_max_predictions`` or ``seq`` when that is 0)."""
    shard = devices if fsdp else 1
    b = batch / devices
    s, h = seq, a.hidden
    per_layer = s * h * (34 + 5 * a.heads * s / h) * act_bytes / 2
    if a.deberta:
        per_layer += 4 * a.heads * s * s * act_bytes / 2
    if remat:
        activations = b * (a.layers * 2 * s * h * act_bytes / 2 + per_layer)
    else:
        activations = b * a.layers * per_layer
    return {
        "parameters": 4 * a.params / shard,
        "Adam moments": 8 * a.params / shard,
        "EMA copy": 4 * a.params / shard,
        "gradients": 4 * a.params / shard,
        "queues": 4 * (k_sentence + k_word) * (dim + 2) / devices,
        "activations": activations,
        "MLM logits": 8 * b * predictions * a.vocab,
    }


PREDICTIONS_PER_128 = 20  # MLM targets per sequence of 128 (BERT's max_predictions_per_seq)

TARGETS = [  # (name, devices, HBM per device in GiB)
    ("TPU v4-8 (4 chips)", 4, 32),
    ("TPU v5e-16 (16 chips)", 16, 16),
    ("8x H100 80GB", 8, 80),
]


def plan_table(a: Arch, batch: int, seq: int, k: int) -> str:
    rows = ["| target | layout | remat | params | Adam | EMA | grads | queues | activations | "
            "MLM logits | total | fits |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, n, hbm in TARGETS:
        for fsdp in (False, True):
            for remat in (False, True):
                p = plan(a, batch=batch, seq=seq, devices=n, fsdp=fsdp, remat=remat,
                         k_sentence=k, k_word=k, predictions=PREDICTIONS_PER_128)
                total = sum(p.values())
                cells = " | ".join(f"{v / GiB:.2f}" for v in p.values())
                rows.append(f"| {name} | {'fsdp' if fsdp else 'data'} | {'yes' if remat else 'no'}"
                            f" | {cells} | {total / GiB:.2f} | "
                            f"{'yes' if total < 0.9 * hbm * GiB else 'no'} ({hbm} GiB) |")
    return "\n".join(rows)


def measured(remat: bool, batch: int, seq: int) -> tuple[dict[str, float], dict[str, float]]:
    """(XLA's memory analysis of the compiled MiniLM SoftMCL step, our plan for it), in bytes."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import jax
    import softmcl

    from softmcl_jax import loop, objective, sharding, train

    c = softmcl.get_config()
    c.batch_size, c.model.max_len, c.model.remat = batch, seq, remat
    c.data.packing = False  # the plan models B x L padded rows
    c.objective.soft_sentence.queue_size, c.objective.soft_word.queue_size = 1024, 4096
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    pretrained, _, model = loop.setup_model(c)
    _, abstract, shard, step = train.setup_step(model, c, mesh)
    i32 = jax.numpy.int32
    spec = {"input_ids": (batch, seq, i32), "attention_mask": (batch, seq, i32),
            "valid": (batch, None, bool), "mlm_input_ids": (batch, seq, i32),
            "mlm_labels": (batch, seq, i32), "sentence_valence": (batch, None, "float32"),
            "token_valence": (batch, seq, "float32"), "token_valence_mask": (batch, seq, bool)}
    batch_abs = {k: jax.ShapeDtypeStruct((b,) if s is None else (b, s), d)
                 for k, (b, s, d) in spec.items()}
    assert set(batch_abs) == set(objective.plan(c).batch_keys), sorted(batch_abs)
    m = step.lower(train.abstract_with_shardings(abstract, shard), batch_abs).compile()
    ma = m.memory_analysis()
    xla = {"arguments": ma.argument_size_in_bytes, "temporaries": ma.temp_size_in_bytes,
           "outputs": ma.output_size_in_bytes, "aliased": ma.alias_size_in_bytes}
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    cfg = pretrained.config
    arch = Arch("MiniLM", n_params, cfg.num_hidden_layers, cfg.hidden_size,
                cfg.num_attention_heads, cfg.vocab_size, False)
    p = plan(arch, batch=batch, seq=seq, devices=1, fsdp=False, remat=remat,
             k_sentence=1024, k_word=4096, predictions=c.data.mlm_max_predictions or seq,
             act_bytes=4)
    return xla, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "scaling_tables.md"),
                    help="where to write the tables (docs/scaling.md quotes them)")
    ap.add_argument("--no_check", action="store_true")
    args = ap.parse_args()
    parts = ["## Plan: DeBERTa-v3-large, global batch 256, seq 128, K = 65,536 (GiB per device)",
             "", plan_table(DEBERTA_V3_LARGE, 256, 128, 65536), "",
             "## Plan: BERT-base, same step", "", plan_table(BERT_BASE, 256, 128, 65536), ""]
    if not args.no_check:
        parts += ["## Check against XLA (MiniLM SoftMCL step, fp32, 1 CPU device)", "",
                  "| remat | batch x seq | XLA arguments | XLA temporaries | plan: state "
                  "(params+Adam+EMA+queues) | plan: grads+activations+logits |",
                  "|---|---|---|---|---|---|"]
        for remat in (False, True):
            xla, p = measured(remat, 32, 64)
            state = p["parameters"] + p["Adam moments"] + p["EMA copy"] + p["queues"]
            transient = p["gradients"] + p["activations"] + p["MLM logits"]
            mib = {k: v / 2**20 for k, v in xla.items()}
            parts.append(f"| {'yes' if remat else 'no'} | 32 x 64 | {mib['arguments']:.0f} MiB | "
                         f"{mib['temporaries']:.0f} MiB | {state / 2**20:.0f} MiB | "
                         f"{transient / 2**20:.0f} MiB |")
    text = "\n".join(parts) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
