"""The downstream tasks: each reads its data (``data.py``), embeds, scores, returns a TaskResult.

========================  ==========================================================  =========
task                      what                                                        metrics
========================  ==========================================================  =========
sst2, sst5                logistic-regression probe on the pooled sentence vector     acc,
                                                                                      macro_f1
sst2_fewshot,             logistic regression from k examples per class (unit         acc_k{k}_
sst5_fewshot              vectors, C fixed), mean and std over seeds                  mean/std
sst2_finetune,            full fine-tuning, encoder + linear head, as a trainer run   acc,
sst5_finetune,            (softmcl_jax.finetune); aspects as (sentence, aspect)       macro_f1
semeval14_*_finetune      pairs (slow; not in the default list; --finetune=TASKS)
emobank_finetune,         the same with a linear regressor (squared error) on the     pearson,
warriner_finetune         sentence / word valence                                     spearman
emobank                   ridge probe of sentence valence                             pearson,
                                                                                      spearman
emobank_arousal,          ridge probes of sentence arousal and dominance (EmoBank's   pearson,
emobank_dominance         A and D columns), the valence probe's protocol              spearman
warriner                  ridge probe of word valence; the word alone through the     pearson,
                          encoder, mean over its sub-tokens                           spearman
semeval14_laptops,        logistic-regression probe on [sentence vector ; mean of     acc,
semeval14_restaurants     the aspect term's token vectors in that sentence]           macro_f1
goemotions                single-label comments: k-means clustering and               ami, ari,
                          leave-one-out cosine retrieval by emotion                   fms, mrr,
                                                                                      p_at_1,
                                                                                      map_at_r
stsb                      cosine similarity of the two sentence vectors vs the gold   spearman,
                          score, no training                                          pearson
========================  ==========================================================  =========

Aspect representation: the sentence is embedded once, with the aspect term in place; the
representation is the concatenation of the sentence vector (``pooling``) and the mean of the
final hidden states of the aspect term's own sub-tokens (found through the tokenizer's offsets at
the ``$T$`` position, so a term that occurs twice is the right occurrence). The aspect part is
contextual, so it carries what the sentence says about that term, and the sentence part carries
the overall tone. (A sentence-pair input ``[CLS] sentence [SEP] aspect [SEP]`` would need a
different embedding per aspect and is a fine-tuning idiom; frozen encoders trained on single
sentences, like sentence-transformers, do not expect it.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from softmcl_jax.evaluation import data as D
from softmcl_jax.evaluation.embed import Encoder
from softmcl_jax.evaluation.metrics import (
    clustering_metrics,
    correlation,
    cosine_rows,
    retrieval_metrics,
)
from softmcl_jax.evaluation.probes import (
    FEWSHOT_C,
    fewshot_probe,
    logistic_probe,
    ridge_probe,
)
from softmcl_jax.finetune import TASKS as FINETUNE_TASKS
from softmcl_jax.models import Pretrained

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SuiteConfig:
    """Settings of a suite run (the CLI flags of ``softmcl_jax.evaluate``)."""

    data_dir: str
    max_examples: int | None = None
    seed: int = 0
    fewshot_k: tuple[int, ...] = (8, 16, 32)
    fewshot_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_steps: int = 500
    # None: configs/finetune.py's (2e-5, 32), the same for every encoder.
    finetune_lr: float | None = None
    finetune_batch_size: int | None = None
    goemotions_drop_neutral: bool = False
    progress: bool = True
    # Fine-tuning (``*_finetune``): the encoder folder the trainer loads (set by the CLI to the
    # resolved --checkpoint) and where its runs go ("": a temporary folder, removed after).
    checkpoint: str = ""
    finetune_workdir: str = ""


@dataclasses.dataclass
class Context:
    """What a task needs: the frozen encoder (``encoder``), the raw model for fine-tuning."""

    encoder: Encoder
    pretrained: Pretrained
    tokenizer: Any
    config: SuiteConfig


@dataclasses.dataclass
class TaskResult:
    task: str
    split: str  # "test" | "dev": the scored split
    n: int  # examples scored
    metrics: dict[str, float]
    notes: str = ""

    def as_json(self) -> dict[str, Any]:
        """``{metric: value, "split": ..., "n": ...}``; NaN becomes null (strict JSON)."""
        out: dict[str, Any] = {k: (None if np.isnan(v) else float(v))
                               for k, v in self.metrics.items()}
        return {**out, "split": self.split, "n": self.n}


def _selection_note(d: D.TaskData) -> str:
    return f"train n={len(d.train)}, chosen on {d.select_name} (n={len(d.select)})"


# --- (a) SST ---------------------------------------------------------------------------------

def sst_probe(ctx: Context, name: str) -> TaskResult:
    d, _ = D.load_sst(ctx.config.data_dir, name, ctx.config.max_examples)
    enc = ctx.encoder
    x = [enc.sentences([s.text for s in part], f"{name} {role}")
         for role, part in (("train", d.train), ("select", d.select), ("eval", d.eval))]
    y = [np.asarray([s.label for s in part]) for part in (d.train, d.select, d.eval)]
    r = logistic_probe(x[0], y[0], x[1], y[1], x[2], y[2], seed=ctx.config.seed)
    return TaskResult(name, d.eval_split, len(d.eval), r.metrics,
                      f"logistic regression, C={r.chosen:g}; {_selection_note(d)}")


def sst_fewshot(ctx: Context, name: str) -> TaskResult:
    base = name.removesuffix("_fewshot")
    d, _ = D.load_sst(ctx.config.data_dir, base, ctx.config.max_examples)
    enc = ctx.encoder
    train_x = enc.sentences([s.text for s in d.train], f"{base} train")
    eval_x = enc.sentences([s.text for s in d.eval], f"{base} eval")
    metrics, skipped = fewshot_probe(
        train_x, np.asarray([s.label for s in d.train]), eval_x,
        np.asarray([s.label for s in d.eval]), ks=ctx.config.fewshot_k,
        seeds=ctx.config.fewshot_seeds)
    seeds = ",".join(map(str, ctx.config.fewshot_seeds))
    notes = (f"logistic regression on L2-normalised vectors, C={FEWSHOT_C:g} fixed; k per class "
             f"from train (n={len(d.train)}), seeds {seeds}")
    if skipped:
        notes += "; skipped " + "; ".join(skipped)
    return TaskResult(name, d.eval_split, len(d.eval), metrics, notes)


def finetune(ctx: Context, name: str) -> TaskResult:
    """``<task>_finetune``: fine-tuning on the task through the trainer (``evaluation.finetune``
    / ``softmcl_jax.finetune``), scored on the task's evaluation split."""
    from softmcl_jax.evaluation.finetune import finetune_task

    r = finetune_task(ctx, name.removesuffix("_finetune"))
    return TaskResult(r.task, r.split, r.n, r.metrics, r.notes)


# --- (b, c) valence regression ---------------------------------------------------------------

def _ridge(name: str, d: D.TaskData, embed: Callable[[list[str], str], np.ndarray],
           what: str, target: str = "valence") -> TaskResult:
    x = [embed([s.text for s in part], f"{name} {role}")
         for role, part in (("train", d.train), ("select", d.select), ("eval", d.eval))]
    y = [np.asarray([getattr(s, target) for s in part]) for part in (d.train, d.select, d.eval)]
    r = ridge_probe(x[0], y[0], x[1], y[1], x[2], y[2])
    return TaskResult(name, d.eval_split, len(d.eval), r.metrics,
                      f"ridge on {what}, alpha={r.chosen:g}; {_selection_note(d)}")


def emobank(ctx: Context, name: str) -> TaskResult:
    """Valence, or with ``name`` emobank_arousal / emobank_dominance that dimension: the same
    sentences, splits and probe (the SoftMCL paper's open question on A and D)."""
    d = D.load_emobank(ctx.config.data_dir, ctx.config.max_examples)
    target = name.partition("_")[2] or "valence"
    return _ridge(name, d, ctx.encoder.sentences, f"{ctx.encoder.pooling}-pooled sentences",
                  target)


def warriner(ctx: Context, name: str) -> TaskResult:
    d = D.load_warriner(ctx.config.data_dir, ctx.config.max_examples)
    return _ridge(name, d, ctx.encoder.words, "the word alone (mean of its sub-tokens)")


# --- (d) aspect-level sentiment --------------------------------------------------------------

def aspect_features(encoder: Encoder, items: list[D.AspectItem], desc: str) -> np.ndarray:
    """[sentence vector ; mean of the aspect term's token vectors] (N, 2H): module docstring."""
    sent, aspect = encoder.spans([a.text for a in items], [a.span for a in items], desc)
    return np.concatenate([sent, aspect], axis=1)


def semeval14(ctx: Context, name: str) -> TaskResult:
    d = D.load_semeval14(ctx.config.data_dir, name, ctx.config.max_examples)
    x = [aspect_features(ctx.encoder, part, f"{name} {role}")
         for role, part in (("train", d.train), ("select", d.select), ("eval", d.eval))]
    y = [np.asarray([a.label for a in part]) for part in (d.train, d.select, d.eval)]
    r = logistic_probe(x[0], y[0], x[1], y[1], x[2], y[2], seed=ctx.config.seed)
    notes = f"[sentence; aspect tokens], logistic C={r.chosen:g}; {_selection_note(d)}"
    if d.eval_split == "dev":
        notes += f"; dev = {D.ABSA_DEV_FRACTION:.0%} of Train sentences"
    return TaskResult(name, d.eval_split, len(d.eval), r.metrics, notes)


# --- (e) emotion awareness -------------------------------------------------------------------

def goemotions(ctx: Context, name: str) -> TaskResult:
    c = ctx.config
    d = D.load_goemotions(c.data_dir, c.max_examples, c.goemotions_drop_neutral)
    x = ctx.encoder.sentences([s.text for s in d.eval], f"{name} {d.eval_split}")
    labels = np.asarray([s.label for s in d.eval])
    metrics = {**clustering_metrics(x, labels, seed=c.seed), **retrieval_metrics(x, labels)}
    k = len(np.unique(labels))
    return TaskResult(name, d.eval_split, len(d.eval), metrics,
                      f"single-label comments, {k} classes"
                      f"{' (neutral dropped)' if c.goemotions_drop_neutral else ''}; "
                      f"k-means k={k} on L2-normalised vectors; cosine retrieval")


# --- (f) STS-B -------------------------------------------------------------------------------

def stsb(ctx: Context, name: str) -> TaskResult:
    d = D.load_stsb(ctx.config.data_dir, ctx.config.max_examples)
    enc = ctx.encoder
    a = enc.sentences([p.text_a for p in d.eval], f"{name} a")
    b = enc.sentences([p.text_b for p in d.eval], f"{name} b")
    sim, gold = cosine_rows(a, b), np.asarray([p.score for p in d.eval])
    return TaskResult(name, d.eval_split, len(d.eval),
                      {"spearman": correlation(sim, gold, "spearman"),
                       "pearson": correlation(sim, gold)}, "cosine similarity, no training")


# --- the registry ----------------------------------------------------------------------------

TASKS: dict[str, Callable[[Context, str], TaskResult]] = {
    "sst2": sst_probe,
    "sst5": sst_probe,
    "emobank": emobank,
    "emobank_arousal": emobank,
    "emobank_dominance": emobank,
    "warriner": warriner,
    "semeval14_laptops": semeval14,
    "semeval14_restaurants": semeval14,
    "goemotions": goemotions,
    "stsb": stsb,
    "sst2_fewshot": sst_fewshot,
    "sst5_fewshot": sst_fewshot,
    **{f"{t}_finetune": finetune for t in FINETUNE_TASKS},
}
SLOW_TASKS = tuple(f"{t}_finetune" for t in FINETUNE_TASKS)  # not run unless named
DEFAULT_TASKS = tuple(t for t in TASKS if t not in SLOW_TASKS)


def run_task(ctx: Context, name: str) -> TaskResult:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name](ctx, name)
