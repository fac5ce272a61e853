"""The suite's outputs: a markdown report (stdout) and a JSON file of the numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from softmcl_jax.evaluation.tasks import TaskResult


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def markdown(results: Sequence[TaskResult], *, header: Mapping[str, Any],
             skipped: Mapping[str, str] | None = None, title: bool = True) -> str:
    """One table row per task: scored split, its size, the metrics, and how they were got.

    ``title=False`` leaves out the "## Evaluation" heading (the model card has its own)."""
    lines = ["## Evaluation", ""] if title else []
    lines += [f"- {k}: `{v}`" for k, v in header.items()]
    lines += ["- split: the test split where the data folder has one, else dev (column "
              "`split`)", ""]
    lines += ["| task | split | n | metrics | protocol |", "|---|---|---|---|---|"]
    for r in results:
        metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items()) or "-"
        lines.append(f"| {r.task} | {r.split} | {r.n} | {metrics} | {r.notes} |")
    if skipped:
        lines += ["", "Not run (data missing): " + "; ".join(
            f"{task} ({why})" for task, why in skipped.items())]
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[TaskResult]) -> dict[str, dict[str, Any]]:
    """``{task: {metric: value, "split": "test" | "dev", "n": count}}``."""
    return {r.task: r.as_json() for r in results}


def write_json(results: Sequence[TaskResult], path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results), f, indent=2, allow_nan=False)
        f.write("\n")
