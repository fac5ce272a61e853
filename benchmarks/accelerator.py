"""One command for the accelerator figures BENCHMARKS.md still lacks: the full train step's MFU,
JAX against PyTorch eager and ``torch.compile``, and gradient caching at a large batch.

    python benchmarks/accelerator.py --out results/accelerator                 # a GPU or TPU host
    python benchmarks/accelerator.py --out results/accelerator --cases 'jax:*'  # part of the set
    python benchmarks/accelerator.py --tiny --out /tmp/acc --no_write          # CPU smoke run

The cases (``--cases``: comma-separated names or shell patterns; default every one):

* ``jax:<objective>:<model>:<padded|packed>``: the whole jitted train step that ``main.py`` runs
  (``step_mfu.measure``: forward and backward, momentum forward, losses against the queues,
  clipping, AdamW, EMA, queue writes) of ``configs/softmcl.py`` on BERT-base and DeBERTa-v3-base
  and of ``configs/softmcl_anchored.py`` (the recommended mix) on BERT-base, at batch 256 x
  seq 128 in bf16, with the sentences padded or packed (``data.packing``);
* ``jax:softmcl:bert:<padded|packed>:cache``: the same step at batch 4,096 with gradient caching
  (``config.grad_cache.chunk``: 256 sentences per chunk);
* ``torch:softmcl:<model>:<eager|compile>``: the same SoftMCL step in PyTorch
  (``baselines/torch_train.TorchTrainer``: transformers' encoders under bf16 autocast, MLM
  logits at the scored positions as the JAX step computes them), eager and with
  ``torch.compile``, from the JAX trainer's initial weights (made on the CPU) on the padded JAX
  case's batches. The anchored mix has no PyTorch baseline: it is not one of its five presets.
  The PyTorch side runs on CUDA GPUs only (``--tiny``: on the CPU).

Random weights in the real shapes (throughput does not depend on the values; nothing is read or
downloaded) and ``step_mfu``'s synthetic batches (lengths S/4..S). Model FLOPs, MFU against the
device's dense bf16 peak (``encoder.PEAK_BF16_FLOPS``; none for a CPU, where only the times
mean anything) and MFU on real tokens are counted as ``step_mfu.py`` counts them; the PyTorch
step is charged the padded JAX step's model FLOPs. Each figure is the median of ``--repeats``
steps after the compiling call (JAX: compiled ahead of time, then one untimed step; PyTorch: one
untimed first step, the compilation in it). Next to the figures: the goals on an H200 (BERT-base
SoftMCL step >= 45% MFU and >= 1.3x torch.compile, DeBERTa-v3-base >= 35% MFU) and checks that
the sides compute the same thing: the packed step reads the same real tokens as the padded one,
and the first step's gradient norm and the last step's loss agree (packed vs padded, compiled vs
eager, PyTorch vs JAX; to rounding only with dropout off, as in ``--tiny``: with dropout they
differ by the masks). The random models are drawn from a fixed seed, so every run starts from
the same weights.

Each side runs in processes of its own (JAX preallocates the device; torch must not share it):
a case that raises records its error and the others go on, a worker that dies is restarted for
the cases it had not reached. Every finished case is written at once to ``<out>/cases/``;
``<out>/accelerator.json`` holds every case there run with the same settings, so the set can be
split over several calls with ``--cases``. The BENCHMARKS.md section (``report.write_section``,
one per device; ``--markdown``, ``--no_write``) is written from that file; ``--report_only``
writes both from ``<out>/cases/`` alone (e.g. case files fetched back from an accelerator host,
gathered from several calls).

``--tiny``: every case with tiny random models (2 layers, width 128), batch 8 x 32 (caching: 64
in chunks of 8), fp32, dropout off, 2 timed steps: the CPU check that it all runs and agrees
(tests/test_accelerator.py). On a host without ml_collections, carry a folder holding it and
put it on PYTHONPATH, as for ``step_mfu.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import encoder  # noqa: E402
import report  # noqa: E402
import step_mfu  # noqa: E402

# Model key -> (architecture, tiny architecture, label): encoder.RANDOM_CONFIGS names.
MODELS = {"bert": ("bert-base", "tiny-bert", "BERT-base"),
          "deberta": ("deberta-v3-base", "tiny-deberta-v3", "DeBERTa-v3-base")}
LAYOUTS = ("padded", "packed")
TORCH_MODES = ("eager", "compile")


@dataclasses.dataclass(frozen=True)
class Case:
    side: str  # "jax" or "torch"
    objective: str  # configs/<objective>.py
    model: str  # a MODELS key
    layout: str  # jax: padded | packed; torch: eager | compile (the batch is padded)
    cache: bool = False  # gradient caching at the large batch

    @property
    def name(self) -> str:
        return ":".join([self.side, self.objective, self.model, self.layout]
                        + (["cache"] if self.cache else []))

    @property
    def file(self) -> str:
        return self.name.replace(":", ".")  # no odd characters in file names


CASES = (
    *(Case("jax", o, m, lay) for o, m in (("softmcl", "bert"), ("softmcl_anchored", "bert"),
                                         ("softmcl", "deberta")) for lay in LAYOUTS),
    *(Case("jax", "softmcl", "bert", lay, cache=True) for lay in LAYOUTS),
    *(Case("torch", "softmcl", m, mode) for m in ("bert", "deberta") for mode in TORCH_MODES),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    tiny: bool
    batch: int
    seq: int
    dtype: str
    repeats: int
    cache_batch: int
    cache_chunk: int
    dropout: float | None  # hidden and attention dropout of the random models; None: 0.1


FULL = Settings(tiny=False, batch=256, seq=128, dtype="bfloat16", repeats=10, cache_batch=4096,
                cache_chunk=256, dropout=None)
TINY = Settings(tiny=True, batch=8, seq=32, dtype="float32", repeats=2, cache_batch=64,
                cache_chunk=8, dropout=0.0)

# (what, cases' prefix, figure, goal): the goals, set for (and judged on) an H200 only.
GOAL_DEVICE = "NVIDIA H200"
GOALS = (("BERT-base SoftMCL step MFU", "jax:softmcl:bert", "mfu", 0.45),
         ("BERT-base SoftMCL step vs torch.compile", "jax:softmcl:bert", "speedup", 1.3),
         ("DeBERTa-v3-base SoftMCL step MFU", "jax:softmcl:deberta", "mfu", 0.35))


def select(patterns: str) -> list[Case]:
    """The cases whose names match one of the comma-separated shell patterns, in CASES order."""
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    for p in pats:
        if not any(fnmatch.fnmatchcase(c.name, p) for c in CASES):
            raise ValueError(f"--cases: {p!r} matches none of {[c.name for c in CASES]}")
    return [c for c in CASES if any(fnmatch.fnmatchcase(c.name, p) for p in pats)]


def config_file(objective: str) -> str:
    return os.path.join(ROOT, "configs", f"{objective}.py")


def architecture(model: str, settings: Settings) -> str:
    full, tiny, _ = MODELS[model]
    return tiny if settings.tiny else full


def case_config(case: Case, settings: Settings, path: str):
    """The step's config: ``case``'s objective on the random model at ``path``."""
    return step_mfu.step_config(
        config_file(case.objective), path,
        batch=settings.cache_batch if case.cache else settings.batch, seq=settings.seq,
        dtype=settings.dtype, packing=case.layout == "packed",
        grad_cache_chunk=settings.cache_chunk if case.cache else 0)


# --------------------------------------------------------------------------------- the workers


def jax_device() -> dict[str, str]:
    import jax

    dev = jax.devices()[0]
    return dict(device="CPU" if dev.platform == "cpu" else dev.device_kind,
                machine=report.machine(),
                versions=report.versions("jax", "jaxlib", "flax", "optax"))


def jax_case(case: Case, settings: Settings, path: str) -> dict[str, Any]:
    return step_mfu.measure(case_config(case, settings, path), path, repeats=settings.repeats)


class TorchSide:
    """The PyTorch cases: per model, the JAX trainer's initial weights written once (JAX on the
    CPU in this process), then each case's trainer from them, timed on the padded batches."""

    def __init__(self, settings: Settings, work: str):
        import torch

        self.settings, self.work, self.inits = settings, work, {}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def describe(self) -> dict[str, str]:
        import torch

        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "CPU"
        return dict(device=name, versions=report.versions("torch", "transformers"))

    def initial(self, case: Case, path: str) -> tuple[Any, str, dict[str, Any], Any]:
        """(the padded JAX case's config, the folder of the JAX trainer's initial encoder, its
        initial heads, the encoder's transformers config), made once per model."""
        if case.model not in self.inits:
            from baselines.torch_train import write_jax_initial
            from softmcl_jax import objective
            from softmcl_jax.models import DTYPES, from_pretrained

            config = case_config(dataclasses.replace(case, layout="padded"), self.settings, path)
            pretrained = from_pretrained(path, dtype=DTYPES[config.model.dtype],
                                         seed=config.seed)
            model = objective.build_model(pretrained, objective.plan(config), config)
            folder = os.path.join(self.work, f"torch-init-{case.model}")
            heads = write_jax_initial(config, pretrained, model, folder)
            self.inits[case.model] = (config, folder, heads, pretrained.config)
        return self.inits[case.model]

    def run(self, case: Case, path: str) -> dict[str, Any]:
        import torch

        from baselines.torch_train import TorchTrainer
        from softmcl_jax import objective

        if self.device == "cpu" and not self.settings.tiny:
            return {"skipped": "no CUDA device: the PyTorch side is timed on CUDA GPUs only"}
        config, folder, heads, hf_config = self.initial(case, path)
        b, s = config.batch_size, config.model.max_len
        batches = [step_mfu.synthetic_batch(config, hf_config.vocab_size, i)
                   for i in range(self.settings.repeats + 1)]
        tokens = [step_mfu.real_tokens(x) for x in batches]
        cuda = self.device == "cuda"
        if cuda:
            gc.collect()  # the previous case's trainer
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer = TorchTrainer(config, folder, init_heads_from=heads, device=self.device,
                               compiled=case.layout == "compile", mlm_at_targets=True)
        # trainer.step returns Python floats: it waits for the step.
        first_s, times, losses, grad_norms = step_mfu.timed_steps(
            lambda i: trainer.step(batches[i]), self.settings.repeats)
        the_plan = objective.plan(config)
        m = config.data.mlm_max_predictions or s
        flops = step_mfu.step_flops(hf_config, the_plan, rows=b, seq=s, sentences=b,
                                    predictions=m)
        real = sum(tokens) / (len(tokens) * b * s)
        out = dict(times=times, compile_s=first_s, first_s=first_s, rows=b, batch=b, seq=s,
                   real_tokens=tokens, real_fraction=real, first_loss=losses[0],
                   losses=losses, grad_norms=grad_norms,
                   mlm_predictions=m, queues={q.name: q.size for q in the_plan.queues},
                   flops=flops, useful_flops=real * flops,
                   memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)
        torch._dynamo.reset()  # the next case compiles its own graphs
        return out


def worker(side: str, spec_path: str) -> None:
    """Run the spec's cases of one side, writing each one's result (or error) as it ends."""
    with open(spec_path) as f:
        spec = json.load(f)
    settings = Settings(**spec["settings"])
    results, paths = spec["results"], spec["paths"]
    if side == "torch":
        runner = TorchSide(settings, spec["work"])
        about, run = runner.describe(), runner.run
    else:
        about, run = jax_device(), lambda c, p: jax_case(c, settings, p)
    by_name = {c.name: c for c in CASES}
    for name in spec["cases"]:
        case = by_name[name]
        base = os.path.join(results, case.file)
        open(base + ".started", "w").close()
        print(f"{name}: running", flush=True)
        t0 = time.perf_counter()
        try:
            res = run(case, paths[case.model])
        except Exception as e:  # noqa: BLE001 - one case's failure (e.g. out of memory) is data
            res = {"error": f"{type(e).__name__}: {e}"[:3000]}
        res.update(case=name, settings=dataclasses.asdict(settings),
                   architecture=architecture(case.model, settings),
                   wall_s=time.perf_counter() - t0, **about)
        write_json(base + ".json", res)
        os.remove(base + ".started")
        print(f"{name}: " + (res.get("error") or res.get("skipped")
                             or f"median {report.median(res['times']):.4f} s/step"), flush=True)


# ---------------------------------------------------------------------------------- the parent


def write_json(path: str, obj: Any) -> None:
    """Whole or not at all: a worker killed while writing leaves no half file."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def run_side(side: str, cases: list[Case], settings: Settings, paths: dict[str, str],
             results: str, work: str, worker_cmd: list[str] | None = None) -> None:
    """Run ``cases`` (one side) in worker processes until each has a result file in
    ``results``. A worker that dies in a case leaves an error for it and is restarted for the
    cases after it; one that dies outside any case (at start-up) fails all it had left.
    ``worker_cmd`` replaces ``python accelerator.py`` (tests)."""
    env = dict(os.environ)
    if side == "torch":
        env["JAX_PLATFORMS"] = "cpu"  # JAX only makes the initial weights there

    def file(c: Case, ext: str) -> str:
        return os.path.join(results, c.file + ext)

    remaining = list(cases)
    for c in remaining:  # earlier runs' results of these cases
        for ext in (".json", ".started"):
            if os.path.exists(file(c, ext)):
                os.remove(file(c, ext))
    while remaining:
        spec = os.path.join(work, f"spec-{side}.json")
        write_json(spec, dict(settings=dataclasses.asdict(settings), paths=paths,
                              cases=[c.name for c in remaining], results=results, work=work))
        log = os.path.join(work, f"worker-{side}.log")
        with open(log, "w") as err:
            cmd = (worker_cmd or [sys.executable, os.path.abspath(__file__)])
            rc = subprocess.run([*cmd, "--worker", side, "--spec", spec], env=env,
                                stderr=err).returncode
        with open(log) as f:
            tail = f.read()[-3000:]
        died = next((c for c in remaining if os.path.exists(file(c, ".started"))), None)
        failed = [died] if died else [c for c in remaining if not os.path.exists(file(c, ".json"))]
        for c in failed:
            write_json(file(c, ".json"), dict(
                case=c.name, settings=dataclasses.asdict(settings),
                architecture=architecture(c.model, settings),
                error=f"the {side} worker died (exit status {rc}):\n{tail}"))
            if os.path.exists(file(c, ".started")):
                os.remove(file(c, ".started"))
        remaining = remaining[remaining.index(died) + 1:] if died else []


def collect(results: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """Every case result in ``results`` run with ``settings``, by case name, in CASES order."""
    found = {}
    for path in glob.glob(os.path.join(results, "*.json")):
        with open(path) as f:
            res = json.load(f)
        if res.get("settings") == dataclasses.asdict(settings):
            found[res["case"]] = res
    return {c.name: found[c.name] for c in CASES if c.name in found}


def ok(res: dict[str, Any] | None) -> bool:
    return res is not None and "times" in res


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Relative differences of two cases' first-step gradient norm (the whole backward pass of
    the step) and last-step loss (after every update, EMA move and queue write before it)."""
    return dict(grad_norm=rel(a["grad_norms"][0], b["grad_norms"][0]),
                loss=rel(a["losses"][-1], b["losses"][-1]))


def checks(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """That the sides compute the same thing: the packed steps' real tokens against the padded
    ones', and :func:`agreement` of packed vs padded, compiled vs eager and PyTorch eager vs JAX
    (padded) on the same batches from the same weights."""
    out: dict[str, Any] = {"packed_same_tokens": {}, "packed_vs_padded": {},
                           "compile_vs_eager": {}, "torch_vs_jax": {}}
    for name, res in cases.items():
        if not ok(res):
            continue
        side, objective, model, layout, *rest = name.split(":")
        if side == "jax" and layout == "packed":
            padded = cases.get(":".join([side, objective, model, "padded", *rest]))
            if ok(padded):
                key = ":".join([objective, model, *rest])
                out["packed_same_tokens"][key] = res["real_tokens"] == padded["real_tokens"]
                out["packed_vs_padded"][key] = agreement(res, padded)
        if side == "torch" and layout == "compile":
            eager = cases.get(":".join([side, objective, model, "eager"]))
            if ok(eager):
                out["compile_vs_eager"][model] = agreement(res, eager)
        if side == "torch" and layout == "eager":
            jax_padded = cases.get(":".join(["jax", objective, model, "padded"]))
            if ok(jax_padded):
                out["torch_vs_jax"][model] = agreement(res, jax_padded)
    return out


def peak_of(res: dict[str, Any]) -> float | None:
    return encoder.PEAK_BF16_FLOPS.get(res.get("device", ""))


def goals(cases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal's figure per JAX layout (None where a case is missing or has no MFU), met or
    not where the case ran on the goals' device (None elsewhere)."""
    out = []
    for what, prefix, figure, goal in GOALS:
        for layout in LAYOUTS:
            res = cases.get(f"{prefix}:{layout}")
            value = None
            if ok(res) and figure == "mfu":
                value = res["figures"]["mfu"]
            elif ok(res) and figure == "speedup":
                compiled = cases.get(f"torch:{prefix.split(':', 1)[1]}:compile")
                if ok(compiled):
                    value = compiled["figures"]["median_s"] / res["figures"]["median_s"]
            judged = value is not None and res.get("device") == GOAL_DEVICE
            out.append(dict(what=what, layout=layout, figure=figure, goal=goal, value=value,
                            met=value >= goal if judged else None))
    return out


def document(cases: dict[str, dict[str, Any]], settings: Settings, command: str
             ) -> dict[str, Any]:
    """The JSON of the whole set: every case with its figures, the checks and the goals."""
    for res in cases.values():
        if ok(res):
            res["figures"] = step_mfu.figures(res, peak_of(res))
    jax_res = next((r for n, r in cases.items() if n.startswith("jax:") and "machine" in r),
                   None)
    any_res = next(iter(cases.values()), {})
    return dict(command=command, settings=dataclasses.asdict(settings),
                device=(jax_res or any_res).get("device"),
                peak_flops=peak_of(jax_res or any_res),
                machine=(jax_res or {}).get("machine"),
                versions="; ".join(sorted({r["versions"] for r in cases.values()
                                           if "versions" in r})),
                cases=cases, checks=checks(cases), goals=goals(cases))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def section(doc: dict[str, Any]) -> tuple[str, str]:
    """(title, body) of the BENCHMARKS.md section."""
    s = Settings(**doc["settings"])
    where = doc["device"] or "no device"
    title = f"Accelerator check: {where}{', tiny models' if s.tiny else ''} " \
            "(benchmarks/accelerator.py)"
    peak = doc["peak_flops"]
    lines = [
        f"`{doc['command']}` (the figures also in `<out>/accelerator.json`). The full train "
        "step (benchmarks/step_mfu.py's), random weights in the real shapes"
        + (" (tiny: 2-layer width-128 models)" if s.tiny else "")
        + f", synthetic batches (lengths S/4..S), batch {s.batch} x seq {s.seq}, {s.dtype}, "
        + ("dropout 0.1" if s.dropout is None else f"dropout {s.dropout:g}")
        + f"; gradient caching at batch {s.cache_batch}, {s.cache_chunk} sentences per chunk. "
        f"Median of {s.repeats} steps after the compiling call; PyTorch: "
        "`baselines/torch_train.TorchTrainer` (bf16 autocast, MLM logits at the scored "
        "positions), charged the padded JAX step's model FLOPs. Gradient caching's second "
        "forward of each chunk is not in the model FLOPs. Memory: JAX, XLA's plan of the "
        "step (arguments, outputs not aliased to them, temporaries); PyTorch, the peak "
        "allocated.",
        "",
        f"Machine: {doc['machine'] or 'n/a'}. Versions: {doc['versions']}.",
        "",
        (f"MFU against the {peak / 1e12:.0f} TFLOP/s dense bf16 peak." if peak else
         "No peak figure for this device: MFU n/a, the times alone count."),
        "",
        "| case | model | batch | rows | s/step (median) | min s | sequences/s | "
        "model TFLOP/step | TFLOP/s | MFU | MFU on real tokens | compile s | memory GiB | "
        "first-step loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in doc["cases"].items():
        if not ok(res):
            why = (res.get("skipped") or res.get("error") or "?").splitlines()[0][:200]
            lines.append(f"| {name} | {res.get('architecture', '')} | | | "
                         f"{'skipped' if 'skipped' in res else 'failed'}: {why} "
                         "| | | | | | | | | |")
            continue
        f = res["figures"]
        mem = "n/a" if res.get("memory_gib") is None else f"{res['memory_gib']:.2f}"
        lines.append(
            f"| {name} | {res['architecture']} | {res['batch']} | {res['rows']} | "
            f"{f['median_s']:.4f} | {f['min_s']:.4f} | {f['sequences_per_s']:.1f} | "
            f"{f['tflop_per_step']:.3f} | {f['tflops']:.2f} | {pct(f['mfu'])} | "
            f"{pct(f['mfu_real_tokens'])} | {res['compile_s']:.1f} | {mem} | "
            f"{res['first_loss']:.5g} |")
    lines += ["", f"Goals (set for an {GOAL_DEVICE}; met or missed judged there only):", ""]
    for g in doc["goals"]:
        if g["figure"] == "mfu":
            got, want = pct(g["value"]), f">= {g['goal']:.0%}"
        else:
            got = "n/a" if g["value"] is None else f"{g['value']:.2f}x"
            want = f">= {g['goal']}x"
        verdict = "" if g["met"] is None else (" (met)" if g["met"] else " (missed)")
        lines.append(f"* {g['what']}, {g['layout']}: {got}{verdict}; goal {want}")
    c = doc["checks"]
    lines += ["", "Checks: relative differences of the first step's gradient norm and the last "
              "step's loss, on the same batches from the same weights (equal to rounding with "
              "dropout off; with dropout on they differ by the masks too):", ""]
    lines.append("* packed steps read the padded steps' real tokens: " + (", ".join(
        f"{k} {'yes' if v else 'NO'}" for k, v in c["packed_same_tokens"].items()) or "n/a"))
    for key, what in (("packed_vs_padded", "packed vs padded"),
                      ("compile_vs_eager", "torch.compile vs eager"),
                      ("torch_vs_jax", "PyTorch eager vs JAX")):
        lines.append(f"* {what}: " + (", ".join(
            f"{k} {v['grad_norm']:.1e} / {v['loss']:.1e}" for k, v in c[key].items()) or "n/a"))
    lines += ["", "The anchored mix has no PyTorch baseline (not one of its five presets)."]
    return title, "\n".join(lines)


def make_models(models: Iterable[str], settings: Settings, folder: str) -> dict[str, str]:
    """The random checkpoints the cases read, by model key (with ``settings.dropout``)."""
    drop = {} if settings.dropout is None else dict(hidden_dropout_prob=settings.dropout,
                                                    attention_probs_dropout_prob=settings.dropout)
    return {m: encoder.random_checkpoint(architecture(m, settings),
                                         os.path.join(folder, f"model-{m}"), **drop)
            for m in models}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "results", "accelerator"),
                   help="folder of accelerator.json and cases/")
    p.add_argument("--cases", default="*", help="comma-separated case names or patterns")
    p.add_argument("--tiny", action="store_true", help="tiny models and batches (CPU check)")
    p.add_argument("--repeats", type=int, help="timed steps per case")
    p.add_argument("--cache_batch", type=int, help="batch of the gradient-caching cases")
    p.add_argument("--cache_chunk", type=int, help="config.grad_cache.chunk of those cases")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: the JSON and the section from <out>/cases as they are "
                        "(e.g. fetched back from an accelerator host)")
    p.add_argument("--no_write", action="store_true", help="no BENCHMARKS.md section")
    p.add_argument("--markdown", default=report.BENCHMARKS_MD)
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.spec)
        return

    settings = dataclasses.replace(
        TINY if args.tiny else FULL,
        **{k: getattr(args, k) for k in ("repeats", "cache_batch", "cache_chunk")
           if getattr(args, k) is not None})
    cases = select(args.cases)
    results = os.path.join(args.out, "cases")
    os.makedirs(results, exist_ok=True)
    if not args.report_only:
        # The random models (GiB at full size) stay out of --out: only figures come back.
        work = tempfile.mkdtemp(prefix="accelerator-")
        try:
            paths = make_models(dict.fromkeys(c.model for c in cases), settings, work)
            for side in ("jax", "torch"):
                mine = [c for c in cases if c.side == side]
                if mine:
                    run_side(side, mine, settings, paths, results, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/accelerator.py" + (" --tiny" if args.tiny else "")
    doc = document(collect(results, settings), settings, command)
    with open(os.path.join(args.out, "accelerator.json"), "w") as f:
        json.dump(doc, f, indent=1)
    title, body = section(doc)
    print(f"## {title}\n\n{body}")
    if not args.no_write:
        report.write_section(title, body, path=args.markdown)


if __name__ == "__main__":
    main()
