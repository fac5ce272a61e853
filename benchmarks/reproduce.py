"""The reproduction behind RESULTS.md: base MiniLM vs SimCSE, SoftMCL, retrofitting and LCL.

    python benchmarks/reproduce.py --data_dir=../shared/data            # train + evaluate + report
    python benchmarks/reproduce.py --data_dir=../shared/data --report_only
    python benchmarks/reproduce.py --data_dir=../shared/data --methods=softmcl_vad,softmcl_v

For every run and seed it runs exactly what a user runs::

    python main.py --config=configs/CONFIG.py --workdir=RUNS/NAME-sSEED --config.seed=SEED ...
    python -m softmcl_jax.evaluate --checkpoint=RUNS/NAME-sSEED/export --data_dir=DATA ...

A run (``RUNS``) is a name, a preset and the ``--config`` overrides that make it: a method's own
preset, or a mix or variant of one (the paper's V/A/D question: ``softmcl_vad`` against
``softmcl_v``, the same EmoBank data with valence alone). The default ``--methods`` are the
four methods of RESULTS.md's main table.

and the base encoder is evaluated once per seed (the seed moves the suite's own randomness:
probe splits, k-means, few-shot draws). A step whose output exists is skipped, so an interrupted
reproduction continues where it stopped. At the end it writes ``results/summary.json`` (every
number), ``results/*.png`` (plots) and the generated tables of ``RESULTS.md`` (between the
``<!-- generated -->`` markers; the prose around them is hand-written).

The runs' folders (checkpoints, exports, logs) stay in ``--runs_dir``, outside git.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(ROOT, "RESULTS.md")
RESULTS_DIR = os.path.join(ROOT, "results")
BASE = "base"


@dataclass(frozen=True)
class Run:
    """A training run: ``configs/<config>.py`` with ``--config.<override>`` flags, where
    ``{data}`` stands for ``--data_dir``; ``data`` says what it trains on (the compute table)."""

    config: str
    data: str
    overrides: tuple[str, ...] = ()

    def flags(self, data_dir: str) -> list[str]:
        data = data_dir.rstrip("/") or "/"
        return [f"--config.{o.format(data=data)}" for o in self.overrides]


_EMOBANK_VAD = ("data.path={data}/emobank/emobank.csv",
                "data.lexicon={data}/warriner_vad/Ratings_Warriner_et_al.csv",
                "data.lexicon_words={data}/warriner_vad/splits/train.txt")
RUNS = {
    "simcse": Run("simcse", "shipped VADER sentences (text)"),
    "softmcl": Run("softmcl", "shipped VADER sentences + lexicon"),
    "retrofit": Run("retrofit", "goemotions/train.tsv",
                    ("data.path={data}/goemotions/train.tsv",)),
    "lcl": Run("lcl", "sst5/stsa.fine.train", ("data.path={data}/sst5/stsa.fine.train",)),
    # The SoftMCL paper's open question 1: soft labels over V, A and D vs valence alone, on the
    # same EmoBank train sentences and Warriner train words.
    "softmcl_vad": Run("softmcl_vad", "EmoBank train + Warriner train words (V, A, D)",
                       _EMOBANK_VAD),
    "softmcl_v": Run("softmcl_vad", "EmoBank train + Warriner train words (V only)",
                     (*_EMOBANK_VAD, "objective.soft_sentence.labels=('valence',)",
                      "objective.soft_sentence.label_weights=(1.0,)",
                      "objective.soft_word.labels=('valence',)",
                      "objective.soft_word.label_weights=(1.0,)")),
}
METHODS = ("simcse", "softmcl", "retrofit", "lcl")  # RESULTS.md's main table, the default

# (task, metric, column title) of the main table; every metric is in summary.json.
COLUMNS = (
    ("sst2", "acc", "SST-2 acc"),
    ("sst5", "acc", "SST-5 acc"),
    ("emobank", "pearson", "EmoBank r"),
    ("warriner", "pearson", "Warriner r"),
    ("semeval14_laptops", "acc", "Lap14 acc"),
    ("semeval14_restaurants", "acc", "Rest14 acc"),
    ("goemotions", "ami", "GoEmo AMI"),
    ("goemotions", "map_at_r", "GoEmo MAP@R"),
    ("stsb", "spearman", "STS-B rho"),
    ("sst2_fewshot", "acc_k16_mean", "SST-2 16-shot"),
    ("sst5_fewshot", "acc_k16_mean", "SST-5 16-shot"),
    ("sst2_finetune", "acc", "SST-2 fine-tuned"),
)


def run_dir(runs: str, method: str, seed: int) -> str:
    return os.path.join(runs, f"{method}-s{seed}")


def _run(cmd: list[str], log_path: str) -> float:
    """Run ``cmd`` from the repo root with its output in ``log_path``; seconds taken."""
    print("+", " ".join(cmd), f"> {os.path.relpath(log_path)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def train(args: argparse.Namespace, method: str, seed: int) -> None:
    out = run_dir(args.runs_dir, method, seed)
    if os.path.exists(os.path.join(out, "export", "config.json")):
        return
    os.makedirs(out, exist_ok=True)
    run = RUNS[method]
    cmd = [sys.executable, "main.py", f"--config=configs/{run.config}.py", f"--workdir={out}",
           f"--config.seed={seed}", "--config.probe.enabled=False",
           "--config.keep_checkpoints=1", *run.flags(args.data_dir)]
    if args.steps:
        cmd.append(f"--config.total_steps={args.steps}")
    seconds = _run(cmd, os.path.join(out, "train.log"))
    with open(os.path.join(out, "train_seconds.json"), "w") as f:
        json.dump({"seconds": seconds}, f)


def _suite(args: argparse.Namespace, method: str, seed: int, name: str,
           flags: list[str]) -> None:
    """``python -m softmcl_jax.evaluate`` on the base or trained encoder, into RUN/NAME.json
    (written only when the run finishes, so a half-done one is redone), RUN/NAME.log and the
    seconds it took in RUN/NAME_seconds.json. Skipped if RUN/NAME.json exists."""
    out = run_dir(args.runs_dir, method, seed)
    result = os.path.join(out, f"{name}.json")
    if os.path.exists(result):
        return
    os.makedirs(out, exist_ok=True)
    checkpoint = "minilm" if method == BASE else os.path.join(out, "export")
    cmd = [sys.executable, "-m", "softmcl_jax.evaluate", f"--checkpoint={checkpoint}",
           f"--data_dir={args.data_dir}", *flags, f"--max_len={args.max_len}", f"--seed={seed}",
           "--no_progress", f"--output={result}.partial"]
    seconds = _run(cmd, os.path.join(out, f"{name}.log"))
    os.replace(result + ".partial", result)
    with open(os.path.join(out, f"{name}_seconds.json"), "w") as f:
        json.dump({"seconds": seconds}, f)


def evaluate(args: argparse.Namespace, method: str, seed: int) -> None:
    """The default suite, every split capped at ``--max_examples``."""
    _suite(args, method, seed, "eval", [f"--max_examples={args.max_examples}"])


def finetune(args: argparse.Namespace, method: str, seed: int) -> None:
    """SST-2 full fine-tuning (encoder + linear head) of the base or trained encoder, on the whole
    train split: the protocol behind the SoftMCL paper's SST-2 number, at MiniLM scale."""
    _suite(args, method, seed, "finetune",
           ["--tasks=sst2_finetune", f"--finetune_steps={args.finetune_steps}"])


# --- the report ------------------------------------------------------------------------------

def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run's numbers: {method: {seed: {...}}} plus the run settings."""
    runs: dict[str, Any] = {}
    for method in (BASE, *RUNS):
        for seed in args.seeds:
            out = run_dir(args.runs_dir, method, seed)
            if not os.path.exists(os.path.join(out, "eval.json")):
                continue
            entry: dict[str, Any] = {"eval": _read_json(os.path.join(out, "eval.json"))}
            if os.path.exists(os.path.join(out, "finetune.json")):
                entry["eval"].update(_read_json(os.path.join(out, "finetune.json")))
            for name in ("train_seconds", "eval_seconds", "finetune_seconds"):
                p = os.path.join(out, f"{name}.json")
                if os.path.exists(p):
                    entry[name] = _read_json(p)["seconds"]
            if method != BASE:
                config = _read_json(os.path.join(out, "config.json"))
                entry["steps"] = config["total_steps"]
                entry["batch_size"] = config["batch_size"]
                entry["learning_rate"] = config["optimizer"]["learning_rate"]
                entry["curve"] = [json.loads(line)
                                  for line in open(os.path.join(out, "metrics.jsonl"))]
            runs.setdefault(method, {})[str(seed)] = entry
    return {"data_dir": args.data_dir, "max_examples": args.max_examples,
            "max_len": args.max_len, "seeds": args.seeds, "runs": runs}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    head = "| encoder | seeds | " + " | ".join(c[2] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for method in (BASE, *RUNS):
        if method not in runs:
            continue
        seeds = runs[method]
        cells = []
        for task, metric, _ in COLUMNS:
            vals = [s["eval"][task][metric] for s in seeds.values()
                    if task in s["eval"] and metric in s["eval"][task]]
            if not vals:
                cells.append("–")
                continue
            m, sd = mean_std(vals)
            cells.append(f"{100 * m:.1f} ± {100 * sd:.1f}")
        name = "MiniLM (base)" if method == BASE else method
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def splits_line(summary: dict[str, Any]) -> str:
    any_run = next(iter(next(iter(summary["runs"].values())).values()))["eval"]
    parts = [f"{task}: {r['split']} n={r['n']}" for task, r in any_run.items()]
    return "; ".join(parts)


def budget_table(summary: dict[str, Any]) -> str:
    lines = ["| encoder | training data | steps × batch | lr | train min/seed | eval min/seed "
             "| SST-2 fine-tune min/seed |", "|---|---|---|---|---|---|---|"]
    for method in (BASE, *RUNS):
        seeds = summary["runs"].get(method)
        if not seeds:
            continue
        first = next(iter(seeds.values()))
        train_min = [s["train_seconds"] / 60 for s in seeds.values() if "train_seconds" in s]
        eval_min = [s["eval_seconds"] / 60 for s in seeds.values() if "eval_seconds" in s]
        ft_min = [s["finetune_seconds"] / 60 for s in seeds.values() if "finetune_seconds" in s]
        fmt = (lambda xs: f"{statistics.fmean(xs):.1f}" if xs else "–")
        if method == BASE:
            lines.append(f"| MiniLM (base) | – | – | – | – | {fmt(eval_min)} | {fmt(ft_min)} |")
            continue
        lines.append(f"| {method} | {RUNS[method].data} | {first['steps']} × "
                     f"{first['batch_size']} | {first['learning_rate']:g} | {fmt(train_min)} | "
                     f"{fmt(eval_min)} | {fmt(ft_min)} |")
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in RUNS if m in summary["runs"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=False):
        for seed, run in summary["runs"][method].items():
            steps = [r["step"] for r in run["curve"]]
            ax.plot(steps, [r["loss"] for r in run["curve"]], label=f"seed {seed}", lw=1.2)
        losses = [r["loss"] for run in summary["runs"][method].values() for r in run["curve"]]
        if min(losses) > 0 and max(losses) > 10 * min(losses):
            ax.set_yscale("log")  # SimCSE on MiniLM: 1e-5..1e-3
        ax.set_title(method)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (total)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_projection(args: argparse.Namespace, path: str, n: int = 1000) -> None:
    """EmoBank dev sentences, 2-D PCA of the base vs the SoftMCL (seed 0) sentence vectors,
    coloured by gold valence. PCA (not t-SNE) so the axes are the embedding's own directions of
    largest variance: if valence becomes one of them, training made it dominant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import transformers
    from scipy.stats import pearsonr
    from sklearn.decomposition import PCA

    from softmcl_jax.evaluation.data import load_emobank
    from softmcl_jax.evaluation.embed import embed_sentences
    from softmcl_jax.models import from_pretrained
    from softmcl_jax.models.hf import resolve_name

    rows = load_emobank(args.data_dir, None).eval[:n]
    texts, y = [s.text for s in rows], np.asarray([s.valence for s in rows], np.float32)
    panels = [("MiniLM (base)", resolve_name("minilm")),
              ("after SoftMCL (seed 0)", os.path.join(run_dir(args.runs_dir, "softmcl",
                                                              args.seeds[0]), "export"))]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (title, path_) in zip(axes, panels, strict=True):
        pre = from_pretrained(path_)
        tok = transformers.AutoTokenizer.from_pretrained(pre.tokenizer_path or path_)
        x = embed_sentences(pre, pre.params, tok, texts, max_len=args.max_len)
        xy = PCA(n_components=2, random_state=0).fit_transform(x)
        r = max(abs(pearsonr(xy[:, k], y).statistic) for k in range(2))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="coolwarm", s=6)
        ax.set_title(f"{title}\nmax |r(PC, valence)| = {r:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes, label="EmoBank valence (scaled to [0, 1])")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_results_md(summary: dict[str, Any], path: str = RESULTS_MD) -> None:
    body = "\n\n".join([
        "### Scores (mean ± std over seeds, ×100)",
        table(summary),
        f"Splits and sizes: {splits_line(summary)}. Evaluation: `--max_examples="
        f"{summary['max_examples']} --max_len={summary['max_len']}`, mean pooling.",
        "### Compute (wall-clock minutes per seed, 2 CPU cores)",
        budget_table(summary),
    ])
    begin, end = "<!-- generated: begin -->", "<!-- generated: end -->"
    text = open(path).read()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: the {begin} / {end} markers are missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{body}\n{end}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", default=os.environ.get("SOFTMCL_DATA_DIR"), required=False)
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=0, help="override total_steps (0: the config's)")
    p.add_argument("--max_examples", type=int, default=2000)
    p.add_argument("--max_len", type=int, default=64)
    p.add_argument("--finetune_methods", default=f"{BASE},softmcl",
                   help="encoders that also get SST-2 full fine-tuning (slow); '' for none")
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args()
    if not args.data_dir or not os.path.isdir(args.data_dir):
        p.error(f"--data_dir={args.data_dir!r}: not a folder (or set SOFTMCL_DATA_DIR)")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(RUNS) - {BASE}
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {BASE},{','.join(RUNS)}")
    if not args.report_only:
        # Seed-major order: one finished seed of every method is worth more than three seeds
        # of one method if the budget runs out.
        for seed in args.seeds:
            evaluate(args, BASE, seed)
            for method in methods:
                if method == BASE:
                    continue
                train(args, method, seed)
                evaluate(args, method, seed)
        for seed in args.seeds:
            for method in [m for m in args.finetune_methods.split(",") if m]:
                finetune(args, method, seed)
    summary = collect(args)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_curves(summary, os.path.join(RESULTS_DIR, "training_curves.png"))
    if "softmcl" in summary["runs"]:
        plot_projection(args, os.path.join(RESULTS_DIR, "valence_projection.png"))
    write_results_md(summary)
    print(table(summary))


if __name__ == "__main__":
    main()
