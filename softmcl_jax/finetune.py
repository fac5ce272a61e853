"""Supervised fine-tuning on the SoftMCL paper's four task types, each one a trainer run.

    python -m softmcl_jax.evaluate --checkpoint=ENC --data_dir=DATA --seed=0 \\
        --finetune=sst2,sst5,emobank,semeval14_laptops,semeval14_restaurants,warriner \\
        --finetune_steps=500 --workdir=DIR --output=r.json

=====================  =========================================  ============  ===============
task                   one training item                          objective     metrics
=====================  =========================================  ============  ===============
sst2, sst5             the sentence, its class                    ``ce``        acc, macro_f1
emobank                the sentence, its valence (1..5 -> [0,1])  ``regression`` pearson, spearman
warriner               the word alone, its valence                ``regression`` pearson, spearman
                       (``V.Mean.Sum`` 1..9 -> [0, 1])
semeval14_laptops,     the pair ``[CLS] sentence [SEP] aspect     ``ce``        acc, macro_f1
semeval14_restaurants  [SEP]`` (token_type_ids 1 on the aspect),
                       its polarity -1/0/1 as class 0/1/2
=====================  =========================================  ============  ===============

**A fine-tuning run is a trainer run.** For each task, :func:`task_config` builds
``configs/finetune.py`` (the same hyperparameters for every encoder: AdamW 2e-5, batch 32, 10%
warm-up, weight decay 0.01, clipping at 1, dropout on, packing on) with the encoder under
evaluation as ``model.name_or_path``, the task's objective term (``ce`` over a linear classifier
head, or ``regression``: squared error of a linear 1-output head, both on the pooled vector) and
its data: the task's training split, written by :func:`write_train_jsonl` as JSON Lines into the
task's run folder and read by the ``jsonl`` source, so it is prepared (cached in
``RUN/prepared``), read through Grain and packed exactly like pre-training data (pairs with
their segment ids). ``softmcl_jax.loop.run`` trains it: the optimizer, sharding, checkpoints,
resume and the non-finite guard are the trainer's own. The run folder is
``WORKDIR/<task>-s<seed>``; a second call resumes an interrupted run and skips a finished one
(its ``scores.json`` is read back, provided the stored config is the same).

**Scoring.** The final checkpoint's encoder + head predict the task's scored split (the suite's
protocol, ``evaluation/data.py``: test when the data folder has one, else dev; the training
split is then train plus the suite's selection part, since nothing is selected here) on padded
single rows (pairs as pairs), and :func:`score` gives acc and macro-F1, or Pearson and Spearman
r. The results are the suite's ``TaskResult`` s, named ``<task>_finetune``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import runpy
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

log = logging.getLogger(__name__)

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "finetune.py")
SCORES_FILE = "scores.json"
TRAIN_FILE = "train.jsonl"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    kind: str  # "classification" | "regression"
    item: str  # "sentence" | "word" | "pair" (sentence + aspect)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("classification", "sentence"),
    "sst5": TaskSpec("classification", "sentence"),
    "emobank": TaskSpec("regression", "sentence"),
    "semeval14_laptops": TaskSpec("classification", "pair"),
    "semeval14_restaurants": TaskSpec("classification", "pair"),
    "warriner": TaskSpec("regression", "word"),
}
HEADS = {"classification": "classifier", "regression": "regressor"}


@dataclasses.dataclass(frozen=True)
class Example:
    """One item: the text (a sentence or a word), the pair's segment B (an aspect), and the
    target: a class id or a rating in [0, 1]."""

    text: str
    pair: str | None = None
    label: int | None = None
    value: float | None = None


@dataclasses.dataclass
class TaskSplits:
    train: list[Example]
    eval: list[Example]
    eval_split: str  # "test" | "dev"
    num_labels: int  # 0 for regression


def _examples(task: str, items: Sequence[Any]) -> list[Example]:
    spec = TASKS[task]
    if spec.item == "pair":
        return [Example(a.text, pair=a.aspect, label=int(a.label)) for a in items]
    if spec.kind == "classification":
        return [Example(s.text, label=int(s.label)) for s in items]
    return [Example(s.text, value=float(s.valence)) for s in items]


def load_task(data_dir: str, task: str, max_examples: int | None = None) -> TaskSplits:
    """The task's training and scored examples, by the suite's split protocol
    (``evaluation.data``; ``MissingData`` names missing files)."""
    import softmcl_jax.evaluation.data as D

    if task not in TASKS:
        raise ValueError(f"unknown fine-tuning task {task!r}; tasks: {', '.join(TASKS)}")
    num_labels = 0
    if task in ("sst2", "sst5"):
        d, num_labels = D.load_sst(data_dir, task, max_examples)
    elif task == "emobank":
        d = D.load_emobank(data_dir, max_examples)
    elif task == "warriner":
        d = D.load_warriner(data_dir, max_examples)
    else:
        d, num_labels = D.load_semeval14(data_dir, task, max_examples), 3
    # No model selection here: with dev scored, the selection part of train trains too.
    train = d.train + d.select if d.eval_split == "dev" else d.train
    return TaskSplits(_examples(task, train), _examples(task, d.eval), d.eval_split, num_labels)


def write_train_jsonl(path: str, examples: Sequence[Example]) -> None:
    """The examples as JSON Lines (``text``, and ``pair`` / ``label`` / ``valence`` where set),
    whole or not at all. The same examples give the same bytes, and a file that already holds
    them is left untouched, so a resumed run finds the very data it trained on."""
    lines = []
    for e in examples:
        row: dict[str, Any] = {"text": e.text}
        if e.pair is not None:
            row["pair"] = e.pair
        if e.label is not None:
            row["label"] = e.label
        if e.value is not None:
            row["valence"] = e.value
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    content = "".join(lines).encode("utf-8")
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == content:
                return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


def _preset() -> dict[str, Any]:
    return runpy.run_path(CONFIG_FILE)


def base_config() -> ml_collections.ConfigDict:
    """``configs/finetune.py``'s config (no task set: ``ce`` on, ``data.num_labels`` 0)."""
    return _preset()["get_config"]()


def task_config(task: str, *, checkpoint: str, train_path: str, num_labels: int, steps: int,
                seed: int, max_len: int, pooling: str, batch_size: int | None = None,
                learning_rate: float | None = None, cache_dir: str = ""
                ) -> ml_collections.ConfigDict:
    """``configs/finetune.py`` for ``task`` on the encoder ``checkpoint``: the task's term and
    data, ``total_steps = steps`` (warm-up 10% of them); ``batch_size`` / ``learning_rate``
    None keep the preset's."""
    if steps < 1:
        raise ValueError(f"fine-tuning steps must be >= 1, got {steps}")
    spec = TASKS[task]
    preset = _preset()
    c = preset["get_config"]()
    c.name = f"finetune_{task}"
    c.seed = seed
    c.model.name_or_path = str(checkpoint)
    c.model.max_len = max_len
    c.model.pooling = pooling
    c.total_steps = steps
    c.checkpoint_every_steps = steps
    c.optimizer.warmup_steps = preset["warmup_steps"](steps)
    if batch_size is not None:
        c.batch_size = batch_size
    if learning_rate is not None:
        c.optimizer.learning_rate = learning_rate
    d = c.data
    d.source, d.path, d.cache_dir = "jsonl", train_path, cache_dir
    d.text_column, d.num_labels = "text", 0
    o = c.objective
    o.ce.weight = o.regression.weight = 0.0
    if spec.kind == "classification":
        d.label_column, d.num_labels = "label", num_labels
        o.ce.weight = 1.0
    else:
        d.valence_column, d.scale_low, d.scale_high = "valence", 0.0, 1.0
        o.regression.weight = 1.0
    if spec.item == "pair":
        d.pair_column = "pair"
    return c


def score(kind: str, outputs: np.ndarray, gold: Sequence[float]) -> dict[str, float]:
    """acc and macro-F1 of the argmax of (N, C) logits, or Pearson and Spearman r of (N, 1)
    predictions, against the gold classes / ratings."""
    from softmcl_jax.evaluation.metrics import correlation

    gold = np.asarray(gold)
    if kind == "classification":
        from sklearn.metrics import accuracy_score, f1_score

        pred = outputs.argmax(axis=1)
        return {"acc": float(accuracy_score(gold, pred)),
                "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}
    return {"pearson": correlation(outputs[:, 0], gold),
            "spearman": correlation(outputs[:, 0], gold, "spearman")}


def predict(model: Any, params: Any, tokenizer: Any, examples: Sequence[Example], head: str, *,
            max_len: int, batch_size: int = 64) -> np.ndarray:
    """(N, out) head outputs of the examples, one (padded) row each, pairs encoded as the
    training data encodes them (``prepare.pair_arrays``: the tokenizer's pair template)."""
    pairs = [e.pair for e in examples]
    with_pairs = any(p is not None for p in pairs)

    @jax.jit
    def run(p: Any, ids: jax.Array, mask: jax.Array, types: jax.Array) -> jax.Array:
        out = model.forward(p, ids, mask, train=False, rng=None, token_type_ids=types)
        return model.head(p, head, model.pool(out["last_hidden_state"], mask))

    outs = []
    for start in range(0, len(examples), batch_size):
        part = examples[start:start + batch_size]
        texts = [e.text for e in part]
        second = [e.pair for e in part] if with_pairs else None
        enc = tokenizer(texts, second, max_length=max_len, truncation=True,
                        padding="max_length", return_attention_mask=True,
                        return_token_type_ids=True)
        arrays = [np.asarray(enc[k], np.int32).reshape(len(part), max_len)
                  for k in ("input_ids", "attention_mask", "token_type_ids")]
        n = len(part)
        if n < batch_size:  # one static shape: pad the last batch with copies of its first row
            arrays = [np.concatenate([a, np.repeat(a[:1], batch_size - n, 0)]) for a in arrays]
        ids, mask, types = arrays
        outs.append(np.asarray(run(params, ids, mask, types * mask))[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


def trained_params(config: ml_collections.ConfigDict, run_dir: str) -> tuple[Any, Any, Any]:
    """(model, params, tokenizer) of the run's newest good checkpoint, restored as the trainer
    restores it (``train.setup_step``'s abstract state and shardings)."""
    from softmcl_jax import loop, objective, sharding, train

    the_plan = objective.plan(config)
    _, tokenizer, model = loop.setup_model(config, the_plan)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    setup = train.setup_step(model, config, mesh, the_plan)
    ckpt = loop.checkpointer(config, run_dir)
    try:
        restored = ckpt.restore_newest_good(
            train.abstract_with_shardings(setup.abstract, setup.shardings))
    finally:
        ckpt.close()
    if restored is None:
        raise RuntimeError(f"{run_dir}: the fine-tuning run left no checkpoint")
    step, state = restored
    if step != config.total_steps:
        raise RuntimeError(f"{run_dir}: the newest checkpoint is step {step}, not the run's "
                           f"total_steps={config.total_steps}")
    return model, state.params, tokenizer


@dataclasses.dataclass
class Result:
    """One task's scores (``evaluation.tasks.TaskResult`` fields)."""

    task: str  # "<task>_finetune"
    split: str
    n: int
    metrics: dict[str, float]
    notes: str


def run_task(task: str, *, checkpoint: str, data_dir: str, workdir: str, steps: int, seed: int,
             max_len: int, pooling: str, max_examples: int | None = None,
             batch_size: int | None = None, learning_rate: float | None = None) -> Result:
    """Fine-tune ``checkpoint`` on ``task`` in ``WORKDIR/<task>-s<seed>`` with the trainer and
    score the scored split; a finished run with the same config is read back, not rerun."""
    from softmcl_jax import loop
    from softmcl_jax.workdir import check_config

    splits = load_task(data_dir, task, max_examples)
    run_dir = os.path.join(workdir, f"{task}-s{seed}")
    os.makedirs(run_dir, exist_ok=True)
    train_path = os.path.join(run_dir, TRAIN_FILE)
    write_train_jsonl(train_path, splits.train)
    n_train = len(splits.train)
    batch = batch_size if batch_size is not None else int(base_config().batch_size)
    if n_train < batch:
        log.info("%s: %d training examples, fewer than a batch of %d: batch %d", task, n_train,
                 batch, n_train)
        batch = n_train
    config = task_config(task, checkpoint=checkpoint, train_path=train_path,
                         num_labels=splits.num_labels, steps=steps, seed=seed, max_len=max_len,
                         pooling=pooling, batch_size=batch, learning_rate=learning_rate,
                         cache_dir=os.path.join(run_dir, "prepared"))
    scores_path = os.path.join(run_dir, SCORES_FILE)
    if os.path.exists(scores_path):
        check_config(config, run_dir)  # another config in this folder is refused, not reused
        with open(scores_path) as f:
            stored = json.load(f)
        log.info("%s: finished in %s; its scores are read back", task, run_dir)
        return Result(**stored)
    loop.run(config, run_dir)  # resumes from the run's newest checkpoint
    spec = TASKS[task]
    model, params, tokenizer = trained_params(config, run_dir)
    outputs = predict(model, params, tokenizer, splits.eval, HEADS[spec.kind], max_len=max_len)
    gold = [e.label if spec.kind == "classification" else e.value for e in splits.eval]
    c = config
    result = Result(
        f"{task}_finetune", splits.eval_split, len(splits.eval), score(spec.kind, outputs, gold),
        f"trainer run {run_dir}: {'ce' if spec.kind == 'classification' else 'regression'}"
        f"{' on (sentence, aspect) pairs' if spec.item == 'pair' else ''}, AdamW "
        f"lr={c.optimizer.learning_rate:g}, {c.total_steps} steps of {c.batch_size}, warm-up "
        f"{c.optimizer.warmup_steps}; train n={n_train}")
    tmp = scores_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dataclasses.asdict(result), f, indent=1)
    os.replace(tmp, scores_path)
    return result
