"""The tables and plots of RESULTS.md, from benchmarks/reproduce.py's summary (no training here).

``summary["runs"][name][seed]["eval"][task][metric]`` holds every score; a name is ``base`` or a
key of ``reproduce_runs.RUNS``. Each table is a generated block of RESULTS.md between
``<!-- generated: NAME begin -->`` and ``<!-- generated: NAME end -->``; the prose around the
blocks is hand-written and kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from reproduce_runs import (
    AFFECT,
    AFFECT_GOAL,
    AFFECT_MIX,
    FEATURE_TEMPERATURES,
    FINETUNE_ENCODERS,
    GOAL,
    GRID_SEED,
    GRID_TASKS,
    LABEL_TEMPERATURES,
    METHODS,
    MIXES,
    RECIPE,
    RUNS,
    SENTIMENT,
    VSP_WEIGHTS,
    grid_run,
    vsp_run,
)

BASE = "base"
Column = tuple[str, str, str]  # (task, metric, title)

# The main table: every task of the suite.
COLUMNS: tuple[Column, ...] = (
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
MIX_COLUMNS: tuple[Column, ...] = (
    ("stsb", "spearman", "STS-B rho"),
    ("sst2", "acc", "SST-2 acc"),
    ("emobank", "pearson", "EmoBank r"),
    ("warriner", "pearson", "Warriner r"),
    ("sst5", "acc", "SST-5 acc"),
    ("goemotions", "ami", "GoEmo AMI"),
    ("sst2_fewshot", "acc_k16_mean", "SST-2 16-shot"),
    ("sst2_finetune", "acc", "SST-2 fine-tuned"),
)
# The all-affect search: the recipe's columns, emotion clustering among them (its goal).
AFFECT_MIX_COLUMNS: tuple[Column, ...] = (
    *MIX_COLUMNS[:4],  # the similarity and the three sentiment goals, as the mixes' table
    ("goemotions", "ami", "GoEmo AMI"),
    ("goemotions", "map_at_r", "GoEmo MAP@R"),
    ("sst5", "acc", "SST-5 acc"),
    ("sst2_fewshot", "acc_k16_mean", "SST-2 16-shot"),
)
# The SoftMCL paper's protocol: full fine-tuning (encoder + head) on its four task types.
FINETUNE_COLUMNS: tuple[Column, ...] = (
    ("sst2_finetune", "acc", "SST-2 acc"),
    ("sst5_finetune", "acc", "SST-5 acc"),
    ("emobank_finetune", "pearson", "EmoBank V r"),
    ("semeval14_laptops_finetune", "acc", "Lap14 acc"),
    ("semeval14_restaurants_finetune", "acc", "Rest14 acc"),
    ("warriner_finetune", "pearson", "Warriner V r"),
)
# The paper's numbers for the same columns (DeBERTa-v3-large, test splits): only those its
# abstract states; the paper's tables were not readable offline.
PAPER_FINETUNE = {("sst2_finetune", "acc"): 0.9654, ("emobank_finetune", "pearson"): 0.639}
AFFECT_COLUMNS: tuple[Column, ...] = (
    ("emobank", "pearson", "EmoBank V r"),
    ("emobank_arousal", "pearson", "EmoBank A r"),
    ("emobank_dominance", "pearson", "EmoBank D r"),
    ("warriner", "pearson", "Warriner V r"),
    ("stsb", "spearman", "STS-B rho"),
    ("sst2", "acc", "SST-2 acc"),
    ("sst5", "acc", "SST-5 acc"),
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def scores(summary: dict[str, Any], name: str, task: str, metric: str) -> list[float]:
    """One metric of a run over its finished seeds."""
    return [s["eval"][task][metric] for s in summary["runs"].get(name, {}).values()
            if metric in s["eval"].get(task, {})]


def sentiment_mean(summary: dict[str, Any], name: str) -> list[float]:
    """Per seed, the mean of the goal's sentiment scores (SST-2 acc, EmoBank r, Warriner r)."""
    out = []
    for s in summary["runs"].get(name, {}).values():
        if all(m in s["eval"].get(t, {}) for t, m in SENTIMENT):
            out.append(statistics.fmean(s["eval"][t][m] for t, m in SENTIMENT))
    return out


Goal = dict[tuple[str, str], float]  # (task, metric) -> at least, on the mean over seeds


def goal_misses(summary: dict[str, Any], name: str, goal: Goal = GOAL) -> list[str] | None:
    """The goal's metrics whose mean over seeds is below the goal (None: not all scored)."""
    gaps = goal_gaps(summary, name, goal)
    return None if gaps is None else [task for task, _ in gaps]


def goal_gaps(summary: dict[str, Any], name: str, goal: Goal = GOAL
              ) -> list[tuple[str, float]] | None:
    """(task, mean - bound) for each goal metric below its bound (None: not all scored)."""
    gaps = []
    for (task, metric), at_least in goal.items():
        vals = scores(summary, name, task, metric)
        if not vals:
            return None
        if statistics.fmean(vals) < at_least:
            gaps.append((task, statistics.fmean(vals) - at_least))
    return gaps


def _label(name: str, summary: dict[str, Any] | None = None) -> str:
    label = "MiniLM (base)" if name == BASE else name
    return label + (" †" if summary and name in summary.get("archived", ()) else "")


ARCHIVED_NOTE = ("† not yet rerun at the current commit: the row of commit d10e2db (padded "
                 "layout, before packing), from `results/archive/summary_d10e2db.json`.")


def table(summary: dict[str, Any], names: Iterable[str],
          columns: Sequence[Column] = COLUMNS, goal: bool | Goal = False) -> str:
    """A markdown table, one row per run that has results: mean ± sample std over seeds, x100;
    a cell over fewer seeds than its row (SST-2 fine-tuning) says how many, "(2)".
    ``goal``: add the goal's sentiment mean and whether the run meets the goal (True: the
    mixes' ``GOAL``; or the goal itself)."""
    bounds = GOAL if goal is True else goal or {}
    runs = summary["runs"]
    titles = [c[2] for c in columns] + (["sentiment mean", "goal"] if goal else [])
    lines = ["| encoder | seeds | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 2)]
    for name in names:
        if name not in runs:
            continue
        cells = []
        for task, metric, _ in columns:
            vals = scores(summary, name, task, metric)
            if not vals:
                cells.append("–")
                continue
            m, sd = mean_std(vals)
            fewer = f" ({len(vals)})" if len(vals) < len(runs[name]) else ""
            cells.append(f"{100 * m:.1f} ± {100 * sd:.1f}{fewer}")
        if goal:
            senti = sentiment_mean(summary, name)
            cells.append(f"{100 * mean_std(senti)[0]:.1f}" if senti else "–")
            gaps = goal_gaps(summary, name, bounds)
            cells.append("–" if gaps is None else "**met**" if not gaps else
                         "below: " + ", ".join(f"{t} {100 * g:+.2f}" for t, g in gaps))
        lines.append(f"| {_label(name, summary)} | {len(runs[name])} | " + " | ".join(cells)
                     + " |")
    if any(name in summary.get("archived", ()) for name in names):
        lines += ["", ARCHIVED_NOTE]
    return "\n".join(lines)


def splits_line(summary: dict[str, Any]) -> str:
    base = summary["runs"].get(BASE) or next(iter(summary["runs"].values()))
    return "; ".join(f"{task}: {r['split']} n={r['n']}"
                     for task, r in next(iter(base.values()))["eval"].items())


def budget_table(summary: dict[str, Any]) -> str:
    """Wall-clock minutes per seed of every run; the grid as one row (its total)."""
    lines = ["| run | training data | steps × batch | lr | seeds | train min/seed | "
             "eval min/seed | fine-tune min/seed (6 tasks) | trained at |",
             "|---|---|---|---|---|---|---|---|---|"]

    def commits(seeds: Iterable[dict[str, Any]]) -> str:
        return ", ".join(sorted({s.get("commit", "unknown") for s in seeds})) or "–"

    def minutes(seeds: Iterable[dict[str, Any]], key: str) -> str:
        xs = [s[key] / 60 * (_resume_scale(s) if key == "train_seconds" else 1)
              for s in seeds if key in s]
        return f"{statistics.fmean(xs):.1f}" if xs else "–"

    runs = summary["runs"]
    grid = [n for n in runs if n.startswith("grid_")]
    for name in [BASE, *(n for n in RUNS if n in runs and n not in grid)]:
        seeds = list(runs.get(name, {}).values())
        if not seeds:
            continue
        if name == BASE:
            lines.append(f"| {_label(BASE, summary)} | – | – | – | {len(seeds)} | – | "
                         f"{minutes(seeds, 'eval_seconds')} | "
                         f"{minutes(seeds, 'finetune_seconds')} | – |")
            continue
        first = seeds[0]
        lines.append(f"| {_label(name, summary)} | {RUNS[name].data} | {first['steps']} × "
                     f"{first['batch_size']} | "
                     f"{first['learning_rate']:g} | {len(seeds)} | "
                     f"{minutes(seeds, 'train_seconds')} | {minutes(seeds, 'eval_seconds')} | "
                     f"{minutes(seeds, 'finetune_seconds')} | {commits(seeds)} |")
    if grid:
        seeds = [s for n in grid for s in runs[n].values()]
        total = sum(s.get("train_seconds", 0) + s.get("eval_seconds", 0) for s in seeds) / 60
        lines.append(f"| temperature grid ({len(grid)} runs, scored on {GRID_TASKS}) | "
                     f"{RUNS[grid[0]].data} | {seeds[0]['steps']} × {seeds[0]['batch_size']} | "
                     f"{seeds[0]['learning_rate']:g} | 1 | {minutes(seeds, 'train_seconds')} | "
                     f"{minutes(seeds, 'eval_seconds')} | – (total {total:.0f} min) | "
                     f"{commits(seeds)} |")
    resumed = [f"{name}-s{seed} from step {s['first_step']}" for name, seeds in runs.items()
               for seed, s in seeds.items() if s.get("first_step")]
    if resumed:
        lines += ["", "Resumed after an interruption: " + ", ".join(resumed) + ". A resumed "
                  "run's train minutes are scaled to the whole run from the steps that ran after "
                  "the resume; its commit is the resumed attempt's."]
    if summary.get("archived"):
        lines += ["", ARCHIVED_NOTE]
    return "\n".join(lines)


def _resume_scale(seed: dict[str, Any]) -> float:
    """total steps / steps run in the last attempt: 1 for a run that trained in one go."""
    first = seed.get("first_step", 0)
    return seed["steps"] / (seed["steps"] - first) if first else 1.0


def grid_tables(summary: dict[str, Any]) -> str:
    """Each task the grid is scored on (EmoBank r and STS-B, the plotted surfaces, then SST-2 and
    Warriner r) as a tau (rows) x label tau (columns) matrix (its seed)."""
    seed = str(GRID_SEED)
    out = []
    for task, metric, title in (("emobank", "pearson", "EmoBank r"),
                                ("stsb", "spearman", "STS-B rho"), ("sst2", "acc", "SST-2 acc"),
                                ("warriner", "pearson", "Warriner r")):
        lines = [f"| {title}: τ \\ label τ | " + " | ".join(f"{lt:g}" for lt in LABEL_TEMPERATURES)
                 + " |", "|---|" + "---|" * len(LABEL_TEMPERATURES)]
        for t in FEATURE_TEMPERATURES:
            cells = []
            for lt in LABEL_TEMPERATURES:
                run = summary["runs"].get(grid_run(t, lt), {}).get(seed)
                v = run["eval"].get(task, {}).get(metric) if run else None
                cells.append("–" if v is None else f"{100 * v:.1f}")
            lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def finetune_table(summary: dict[str, Any]) -> str:
    """The fine-tuning protocol: one row per encoder that was fine-tuned, the paper's numbers
    first (its model and test splits: not comparable cell by cell, RESULTS.md says how)."""
    paper = ["–" if k not in PAPER_FINETUNE else f"{100 * PAPER_FINETUNE[k]:.1f}"
             for k in ((t, m) for t, m, _ in FINETUNE_COLUMNS)]
    tuned = [n for n in FINETUNE_ENCODERS if any(
        scores(summary, n, t, m) for t, m, _ in FINETUNE_COLUMNS)]
    lines = table(summary, tuned, FINETUNE_COLUMNS).split("\n")
    lines.insert(2, "| SoftMCL paper (DeBERTa-v3-large, test) | – | " + " | ".join(paper) + " |")
    return "\n".join(lines)


def generated_blocks(summary: dict[str, Any]) -> dict[str, str]:
    """RESULTS.md's generated blocks, by name."""
    return {
        "main": "\n\n".join([
            "### Scores (mean ± std over seeds, ×100)",
            table(summary, [BASE, *METHODS]),
            f"Splits and sizes: {splits_line(summary)}. Evaluation: `--max_examples="
            f"{summary['max_examples']} --max_len={summary['max_len']}`, mean pooling."]),
        "mixes": table(summary, [BASE, "softmcl", *MIXES], MIX_COLUMNS, goal=True),
        "affect": table(summary, [BASE, *AFFECT], AFFECT_COLUMNS),
        "affect_mix": table(summary, [BASE, RECIPE, "retrofit", *AFFECT_MIX], AFFECT_MIX_COLUMNS,
                            goal=AFFECT_GOAL),
        "finetune": finetune_table(summary),
        "temperature": grid_tables(summary),
        "compute": budget_table(summary),
    }


def write_results_md(summary: dict[str, Any], path: str) -> None:
    """Replace each generated block of ``path`` in place; a missing marker is an error."""
    with open(path) as f:
        text = f.read()
    for name, body in generated_blocks(summary).items():
        begin, end = f"<!-- generated: {name} begin -->", f"<!-- generated: {name} end -->"
        if begin not in text or end not in text:
            raise SystemExit(f"{path}: the {begin} / {end} markers are missing")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{body}\n{end}{tail}"
    with open(path, "w") as f:
        f.write(text)


# --- plots -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: dict[str, Any], path: str) -> None:
    """Total training loss of every run of the main table, one panel per method."""
    plt = _pyplot()
    methods = [m for m in METHODS if m in summary["runs"]]
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


def plot_tradeoff(summary: dict[str, Any], path: str) -> None:
    """STS-B against the goal's sentiment mean, one point per run (mean ± std over seeds), the
    goal's two bounds dashed (the goal is per metric: a point past both lines may still miss
    one; the table says). Left the whole plane, right the corner around the goal, where the
    best mixes crowd (named there only). The all-affect search's runs in purple."""
    plt = _pyplot()
    fig, (whole, corner) = plt.subplots(1, 2, figsize=(13, 5.5),
                                        gridspec_kw={"width_ratios": [1, 1.2]})
    points = []
    for name in [n for n in (BASE, *METHODS, *MIXES, *AFFECT_MIX) if n in summary["runs"]]:
        x, y = sentiment_mean(summary, name), scores(summary, name, "stsb", "spearman")
        if x and y:
            (mx, sx), (my, sy) = mean_std(x), mean_std(y)
            points.append((name, 100 * mx, 100 * sx, 100 * my, 100 * sy))
    goal_x = 100 * statistics.fmean(GOAL[k] for k in SENTIMENT)
    goal_y = 100 * GOAL[("stsb", "spearman")]
    x0, y0 = goal_x - 2.5, goal_y - 3.0  # the corner: within reach of the goal
    x1 = max([goal_x + 1.0] + [mx + sx + 0.3 for _, mx, sx, _, _ in points])
    y1 = max([goal_y + 1.0] + [my + sy + 0.3 for _, _, _, my, sy in points])
    in_corner = lambda mx, my: x0 <= mx <= x1 and y0 <= my <= y1

    curve = [("softmcl", 0.0)] + [(vsp_run(w), w) for w in VSP_WEIGHTS]
    at = {name: (mx, my) for name, mx, _, my, _ in points}
    done = [(n, w) for n, w in curve if n in at]
    for ax in (whole, corner):
        for name, mx, sx, my, sy in points:
            misses = goal_misses(summary, name)
            marker = "*" if misses == [] else ("s" if name == BASE else "o")
            colour = ("black" if name in (BASE, *METHODS) else
                      "tab:purple" if name in AFFECT_MIX else "tab:blue")
            ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt=marker, ms=9 if marker == "*" else 5,
                        color=colour, capsize=2, lw=0.8)
            if (ax is corner) == in_corner(mx, my):
                label = _label(name, summary)
                if ax is corner and name.startswith("softmcl_"):
                    label = "+ " + label.removeprefix("softmcl_")
                below = name == BASE  # under SimCSE's label (the two sit together)
                ax.annotate(label, (mx, my), xytext=(4, -10 if below else 3),
                            textcoords="offset points", fontsize=7 if ax is whole else 8)
        if len(done) > 1:  # the VSP weight's curve: SoftMCL (lambda = 0) through softmcl_vspN
            ax.plot([at[n][0] for n, _ in done], [at[n][1] for n, _ in done], color="tab:blue",
                    lw=0.8, alpha=0.6,
                    label="SoftMCL + VSP, λ = " + ", ".join(f"{w:g}" for _, w in done))
        ax.axhline(goal_y, ls="--", color="tab:green", lw=0.8)
        ax.axvline(goal_x, ls="--", color="tab:green", lw=0.8,
                   label="goal (STS-B and the sentiment goals' mean)")
        ax.set_xlabel("sentiment: mean of SST-2 acc, EmoBank r, Warriner r (×100, dev)")
        ax.grid(alpha=0.3)
    whole.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls=":", lw=0.8,
                                  color="grey"))
    corner.set_xlim(x0, x1)
    corner.set_ylim(y0, y1)
    whole.set_ylabel("STS-B Spearman (×100, dev)")
    whole.set_title("Meaning vs valence (mean ± std over seeds)")
    corner.set_title("near the goal (dotted box; '+ x' = SoftMCL + x)")
    whole.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_temperature(summary: dict[str, Any], path: str) -> None:
    """EmoBank r and STS-B over feature tau x label tau (the grid's seed), the preset's cell
    outlined."""
    import numpy as np

    plt = _pyplot()
    seed = str(GRID_SEED)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (task, metric, title) in zip(axes, (("emobank", "pearson", "EmoBank valence r"),
                                                ("stsb", "spearman", "STS-B Spearman")),
                                         strict=True):
        grid = np.full((len(FEATURE_TEMPERATURES), len(LABEL_TEMPERATURES)), np.nan)
        for i, t in enumerate(FEATURE_TEMPERATURES):
            for j, lt in enumerate(LABEL_TEMPERATURES):
                run = summary["runs"].get(grid_run(t, lt), {}).get(seed)
                if run and metric in run["eval"].get(task, {}):
                    grid[i, j] = 100 * run["eval"][task][metric]
        im = ax.imshow(grid, cmap="viridis", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):  # dark text on viridis' light (high) end, light on its dark end
                light = im.norm(v) > 0.6
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
        i0, j0 = FEATURE_TEMPERATURES.index(0.1), LABEL_TEMPERATURES.index(0.1)
        ax.add_patch(plt.Rectangle((j0 - 0.5, i0 - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(LABEL_TEMPERATURES)), [f"{v:g}" for v in LABEL_TEMPERATURES])
        ax.set_yticks(range(len(FEATURE_TEMPERATURES)), [f"{v:g}" for v in FEATURE_TEMPERATURES])
        ax.set_xlabel("label temperature (soft-target sharpness)")
        ax.set_ylabel("feature temperature τ")
        ax.set_title(f"{title} (×100, seed {seed}; red: the preset)")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
