"""The reproduction behind RESULTS.md: every table and plot of it, from one command.

    python benchmarks/reproduce.py --data_dir=../shared/data            # train + evaluate + report
    python benchmarks/reproduce.py --data_dir=../shared/data --report_only
    python benchmarks/reproduce.py --data_dir=../shared/data --runs=softmcl_vad,softmcl_v

For every run and seed it runs exactly what a user runs::

    python main.py --config=configs/CONFIG.py --workdir=RUNS/NAME-sSEED --config.seed=SEED ...
    python -m softmcl_jax.evaluate --checkpoint=RUNS/NAME-sSEED/export --data_dir=DATA ...

The runs (``reproduce_runs.RUNS``: the four methods, the meaning-keeping mixes, the V/A/D
comparison, the temperature grid) are presets plus ``--config`` overrides; the base encoder is
evaluated once per seed (the seed moves the suite's own randomness: probe splits, k-means,
few-shot draws). Seed-major order: every run's first seed before any second seed, so a cut-off
reproduction has one seed of everything. A step whose output exists is skipped, so an
interrupted reproduction continues where it stopped. At the end it writes
``results/summary.json`` (every number), ``results/*.png`` (plots) and the generated blocks of
``RESULTS.md`` (``reproduce_report``; the prose around them is hand-written).

The runs' folders (checkpoints, exports, logs) stay in ``--runs_dir``, outside git.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_report import (  # noqa: E402
    BASE,
    plot_curves,
    plot_temperature,
    plot_tradeoff,
    table,
    write_results_md,
)
from reproduce_runs import FINETUNE_ENCODERS, FINETUNE_TASKS, RUNS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_MD = os.path.join(ROOT, "RESULTS.md")
RESULTS_DIR = os.path.join(ROOT, "results")
# RESULTS.md's rows of commit d10e2db (padded layout, before packing); a run not yet redone at
# the current commit is shown from here, marked.
ARCHIVE = os.path.join(RESULTS_DIR, "archive", "summary_d10e2db.json")
ARCHIVED = "d10e2db (padded)"


def run_dir(runs: str, method: str, seed: int) -> str:
    return os.path.join(runs, f"{method}-s{seed}")


def _run(cmd: list[str], log_path: str, append: bool = False) -> float:
    """Run ``cmd`` from the repo root with its output in ``log_path`` (after what is there if
    ``append``); seconds taken."""
    print("+", " ".join(cmd), f"{'>>' if append else '>'} {os.path.relpath(log_path)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def code_version() -> str:
    """The commit the runs use, ``+changes`` if the library's files differ from it (the
    benchmark scripts and documents do not count: they do not change what trains)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "softmcl_jax", "configs",
                                "main.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


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
    commit = code_version()
    log_path = os.path.join(out, "train.log")
    # An interrupted run resumes from its checkpoint: its earlier attempts' log stays, and the
    # step it resumed from is kept so that its minutes are not read as a whole run's.
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    seconds = _run(cmd, log_path, append=True)
    first_step = 0
    if os.path.exists(log_path):
        with open(log_path) as f:
            f.seek(offset)
            first_step = resumed_step(f.read())
    with open(os.path.join(out, "train_seconds.json"), "w") as f:
        json.dump({"seconds": seconds, "commit": commit, "first_step": first_step}, f)


def resumed_step(log_text: str) -> int:
    """The checkpoint step a trainer's log says it resumed from (softmcl_jax.loop logs
    "resumed from DIR at step N"); 0 for a run that started fresh."""
    found = re.search(r"resumed from .+ at step (\d+)", log_text)
    return int(found[1]) if found else 0


def _suite(args: argparse.Namespace, method: str, seed: int, name: str,
           flags: list[str], want: tuple[str, ...] = ()) -> None:
    """``python -m softmcl_jax.evaluate`` on the base or trained encoder, into RUN/NAME.json
    (written only when the run finishes, so a half-done one is redone), RUN/NAME.log and the
    seconds it took in RUN/NAME_seconds.json. Skipped if RUN/NAME.json exists and holds every
    key of ``want`` (an earlier reproduction may have asked for fewer tasks)."""
    out = run_dir(args.runs_dir, method, seed)
    result = os.path.join(out, f"{name}.json")
    if os.path.exists(result) and set(want) <= set(_read_json(result)):
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
    """The run's tasks (default: the whole suite), every split capped at ``--max_examples``."""
    tasks = RUNS[method].tasks if method in RUNS else ""
    _suite(args, method, seed, "eval", [f"--max_examples={args.max_examples}",
                                        *([f"--tasks={tasks}"] if tasks else [])])


def finetune(args: argparse.Namespace, method: str, seed: int) -> None:
    """Full fine-tuning (encoder + linear head, a trainer run per task: configs/finetune.py) of
    the base or trained encoder on ``--finetune_tasks``, on the whole train split: the protocol
    behind the SoftMCL paper's downstream numbers, at MiniLM scale. The runs stay in
    RUN/finetune_runs, so an interrupted reproduction resumes them."""
    runs = os.path.join(run_dir(args.runs_dir, method, seed), "finetune_runs")
    tasks = [t for t in args.finetune_tasks.split(",") if t]
    _suite(args, method, seed, "finetune",
           [f"--finetune={args.finetune_tasks}", f"--finetune_steps={args.finetune_steps}",
            f"--workdir={runs}"], want=tuple(f"{t}_finetune" for t in tasks))


def run_all(args: argparse.Namespace, names: list[str]) -> None:
    """Train and evaluate ``names`` for every seed, then the SST-2 fine-tuning. Seed-major: one
    finished seed of every run is worth more than three seeds of one if the budget runs out."""
    for seed in args.seeds:
        evaluate(args, BASE, seed)
        for name in names:
            only = RUNS[name].only_seed if name in RUNS else None
            if name == BASE or (only is not None and seed != only):
                continue
            train(args, name, seed)
            evaluate(args, name, seed)
    for seed in args.seeds:
        for name in [m for m in args.finetune_methods.split(",") if m]:
            only = RUNS[name].only_seed if name in RUNS else None
            if only is None or seed == only:  # a one-seed run has no encoder at other seeds
                finetune(args, name, seed)


# --- the report ------------------------------------------------------------------------------

def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def finished_seeds(runs_dir: str, method: str) -> list[int]:
    """The seeds of ``method`` whose evaluation finished in ``runs_dir``, ascending."""
    if not os.path.isdir(runs_dir):
        return []
    prefix = f"{method}-s"
    tails = [d[len(prefix):] for d in os.listdir(runs_dir) if d.startswith(prefix)]
    return sorted(int(t) for t in tails if t.isdigit()
                  and os.path.exists(os.path.join(runs_dir, prefix + t, "eval.json")))


# The volatile fields of a run's config.json: what differs between seeds or machines, not what
# the run computes.
_VOLATILE = ("seed", "workdir")


def run_config(out: str) -> dict[str, Any]:
    """A run's config as it trained (RUN/config.json) without its seed: what a test compares
    with the preset (tests pin each preset to the run RESULTS.md reports for it)."""
    config = _read_json(os.path.join(out, "config.json"))
    return {k: v for k, v in config.items() if k not in _VOLATILE}


def carried(previous: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """``runs`` (this ``--runs_dir``'s) over ``previous`` (the committed summary's), per run and
    seed: a seed rerun here replaces that seed's row, every other seed is kept as it was (with
    the commit it trained at, which the compute table names). A reproduction whose run folders
    are gone, or that reruns a few runs, still reports every run."""
    out = {name: dict(seeds) for name, seeds in previous.items()
           if name == BASE or name in RUNS}
    for name, seeds in runs.items():
        out.setdefault(name, {}).update(seeds)
    return out


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run's numbers: {method: {seed: {...}}} plus the run settings. Every seed
    found in ``--runs_dir`` counts, not only this call's ``--seeds``: a call that adds seeds 1
    and 2 still reports all three; seeds not found there come from ``--previous``."""
    runs: dict[str, Any] = {}
    found: set[int] = set()
    for method in (BASE, *RUNS):
        for seed in finished_seeds(args.runs_dir, method):
            found.add(seed)
            out = run_dir(args.runs_dir, method, seed)
            entry: dict[str, Any] = {"eval": _read_json(os.path.join(out, "eval.json"))}
            if os.path.exists(os.path.join(out, "finetune.json")):
                entry["eval"].update(_read_json(os.path.join(out, "finetune.json")))
            for name in ("train_seconds", "eval_seconds", "finetune_seconds"):
                p = os.path.join(out, f"{name}.json")
                if os.path.exists(p):
                    record = _read_json(p)
                    entry[name] = record["seconds"]
                    if name == "train_seconds":
                        entry["commit"] = record.get("commit", "unknown")
                        entry["first_step"] = record.get("first_step", 0)
            if method != BASE:
                config = _read_json(os.path.join(out, "config.json"))
                entry["config"] = run_config(out)
                entry["steps"] = config["total_steps"]
                entry["batch_size"] = config["batch_size"]
                entry["learning_rate"] = config["optimizer"]["learning_rate"]
                with open(os.path.join(out, "metrics.jsonl")) as f:
                    entry["curve"] = [json.loads(line) for line in f]
            runs.setdefault(method, {})[str(seed)] = entry
    previous = getattr(args, "previous", "")
    if previous and os.path.exists(previous):
        runs = carried(_read_json(previous)["runs"], runs)
        found |= {int(seed) for seeds in runs.values() for seed in seeds}
    archived = []
    if getattr(args, "archive", "") and os.path.exists(args.archive):
        # A run not yet redone at this commit keeps its archived row, marked as such.
        old = _read_json(args.archive)["runs"]
        for name in old:
            if name not in runs and (name == BASE or name in RUNS):
                runs[name] = {seed: {**e, "commit": ARCHIVED} for seed, e in old[name].items()}
                archived.append(name)
    return {"data_dir": args.data_dir, "max_examples": args.max_examples,
            "max_len": args.max_len, "seeds": sorted(found), "runs": runs, "archived": archived}


def plot_projection(args: argparse.Namespace, path: str, n: int = 1000) -> None:
    """EmoBank dev sentences, 2-D PCA of the base vs the SoftMCL (lowest seed) sentence vectors,
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
    seed = finished_seeds(args.runs_dir, "softmcl")[0]
    panels = [("MiniLM (base)", resolve_name("minilm")),
              (f"after SoftMCL (seed {seed})",
               os.path.join(run_dir(args.runs_dir, "softmcl", seed), "export"))]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", default=os.environ.get("SOFTMCL_DATA_DIR"), required=False)
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "reproduce"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", "--methods", dest="runs", default=",".join(RUNS),
                   help="comma list of reproduce_runs.RUNS names (default: all of them)")
    p.add_argument("--steps", type=int, default=0, help="override total_steps (0: the config's)")
    p.add_argument("--max_examples", type=int, default=2000)
    p.add_argument("--max_len", type=int, default=64)
    p.add_argument("--finetune_methods", default=",".join(FINETUNE_ENCODERS),
                   help="encoders that also get full fine-tuning on --finetune_tasks (slow); "
                        "'' for none")
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--finetune_tasks", default=",".join(FINETUNE_TASKS),
                   help="comma list of softmcl_jax.finetune.TASKS each --finetune_methods "
                        "encoder is fine-tuned on (sst2,sst5,emobank,semeval14_laptops,"
                        "semeval14_restaurants,warriner: all four task types)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--previous", default=os.path.join(RESULTS_DIR, "summary.json"),
                   help="the summary whose seeds stand in for those not in --runs_dir (read "
                        "before it is rewritten); '' for none")
    p.add_argument("--archive", default=ARCHIVE,
                   help="earlier summary.json whose rows stand in for runs not yet redone "
                        "(marked in the tables); '' for none")
    args = p.parse_args()
    if not args.data_dir or not os.path.isdir(args.data_dir):
        p.error(f"--data_dir={args.data_dir!r}: not a folder (or set SOFTMCL_DATA_DIR)")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    names = [m for m in args.runs.split(",") if m]
    unknown = set(names) - set(RUNS) - {BASE}
    if unknown:
        p.error(f"unknown runs {sorted(unknown)}; choose from {BASE},{','.join(RUNS)}")
    if not args.report_only:
        run_all(args, names)
    summary = collect(args)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_curves(summary, os.path.join(RESULTS_DIR, "training_curves.png"))
    plot_tradeoff(summary, os.path.join(RESULTS_DIR, "tradeoff.png"))
    plot_temperature(summary, os.path.join(RESULTS_DIR, "temperature.png"))
    if finished_seeds(args.runs_dir, "softmcl"):  # it embeds with the run's exported encoder
        plot_projection(args, os.path.join(RESULTS_DIR, "valence_projection.png"))
    write_results_md(summary, RESULTS_MD)
    print(table(summary, [BASE, *RUNS]))


if __name__ == "__main__":
    main()
