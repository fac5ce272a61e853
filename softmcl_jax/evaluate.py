"""The downstream suite's command line; the work is in ``softmcl_jax.evaluation``.

    python -m softmcl_jax.evaluate --checkpoint=DIR --data_dir=../shared/data
        [--tasks=sst2,emobank,...] [--pooling=mean] [--max_examples=2000] [--output=r.json]
    python -m softmcl_jax.evaluate --checkpoint=DIR --data_dir=../shared/data --seed=0
        --finetune=sst2,sst5,emobank,semeval14_laptops,semeval14_restaurants,warriner
        --finetune_steps=500 --workdir=FT_DIR --output=ft.json

``--finetune=TASKS`` fine-tunes the encoder on each task as a trainer run (``configs/finetune.py``,
``softmcl_jax.finetune``; results ``<task>_finetune``), in ``--workdir`` (a second call resumes
or skips each run); it is the same as naming ``<task>_finetune`` in ``--tasks``.

``--checkpoint`` is a Hugging Face folder, a sentence-transformers folder (evaluated with the
pooling of its ``1_Pooling/config.json``), a hub id, or a training workdir (its exported encoder
``WORKDIR/export``, with the run's pooling); ``--pooling`` overrides (``evaluation.checkpoints``).
Markdown goes to stdout, numbers to ``--output``, and, when the folder is an export of ours, the
table into its model card (``README.md``; ``--no_card`` leaves it alone; a card that cannot be
written, e.g. a read-only export, is one warning: the evaluation still succeeded). The exit
status is 1, with one line, when no task ran (every default task skipped for missing files, with
the reasons), or when the encoder cannot be loaded (a truncated ``model.safetensors`` of an
export: the line says how to export it again) or ``--output`` cannot be written.

Tasks, split and regularisation protocol: ``softmcl_jax/evaluation/`` (``tasks.py``,
``data.py``); the trainer's valence probe: ``evaluation.probe``; embeddings:
``evaluation.embed``. The names below are re-exported for existing callers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from softmcl_jax import model_card
from softmcl_jax.evaluation import DEFAULT_TASKS, SLOW_TASKS, SuiteConfig, report
from softmcl_jax.evaluation.checkpoints import (
    EXPORT_DIR,
    export_again,
    max_seq_length,
    resolve_checkpoint,
)
from softmcl_jax.evaluation.data import MissingData
from softmcl_jax.evaluation.probe import ProbeSplit, probe_split, vader_probe_split, valence_probe
from softmcl_jax.evaluation.suite import DEFAULT_MAX_LEN, run_suite
from softmcl_jax.finetune import TASKS as FINETUNE_TASKS
from softmcl_jax.models import DTYPES, CheckpointError
from softmcl_jax.models.heads import POOLINGS
from softmcl_jax.models.hf import check_length, load_config, max_positions, resolve_name

log = logging.getLogger("softmcl_jax.evaluate")  # also when run as __main__


PROG = "python -m softmcl_jax.evaluate"


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The CLI; returns the JSON-able results (also written to ``--output``).

    Raises ``SystemExit`` (status 1, the message on stderr) when no task ran, e.g. an empty
    ``--data_dir``, naming each skipped task and why; ``--output`` is then not written. Also
    when ``--checkpoint`` is a training workdir without an exported encoder, when the encoder
    cannot be loaded (a missing folder, a truncated ``model.safetensors``: an export of ours
    names the command that writes it again), and when ``--output`` cannot be written. A task
    named in ``--tasks`` whose files are missing raises ``MissingData`` (the command line
    prints it as one line).
    """
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Downstream evaluation of a Hugging Face-format encoder: markdown report on "
                    "stdout, numbers in --output.")
    p.add_argument("--checkpoint", required=True,
                   help="encoder folder (config.json, weights, tokenizer), hub id, 'minilm', "
                        "or a training workdir (its export/ is evaluated)")
    p.add_argument("--data_dir", default=os.environ.get("SOFTMCL_DATA_DIR"),
                   help="data folder laid out like ../shared/data (default: $SOFTMCL_DATA_DIR)")
    p.add_argument("--tasks", default=None,
                   help=f"comma list (default: every one the data folder has of "
                        f"{','.join(DEFAULT_TASKS)}; also {','.join(SLOW_TASKS)})")
    p.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="default: the run's model.pooling for a training workdir, else mean")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_len", type=int, default=None,
                   help="tokens per sentence (default: the encoder's sentence-transformers "
                        "max_seq_length, where SentenceTransformer truncates, else "
                        f"{DEFAULT_MAX_LEN})")
    p.add_argument("--max_examples", type=int, default=None, help="cap per split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--fewshot_k", default="8,16,32")
    p.add_argument("--fewshot_seeds", default="0,1,2,3,4")
    p.add_argument("--finetune", default="",
                   help="fine-tune on these tasks (comma list of "
                        f"{','.join(FINETUNE_TASKS)}) as trainer runs; results <task>_finetune")
    p.add_argument("--workdir", default="",
                   help="where the fine-tuning runs go, one folder per task and seed (a second "
                        "call resumes or skips them); default: temporary folders")
    p.add_argument("--finetune_steps", type=int, default=500)
    p.add_argument("--finetune_lr", type=float, default=None,
                   help="default: configs/finetune.py's (2e-5)")
    p.add_argument("--finetune_batch_size", type=int, default=None,
                   help="default: configs/finetune.py's (32)")
    p.add_argument("--goemotions_drop_neutral", action="store_true",
                   help="leave neutral comments out of the clustering and retrieval")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--no_card", action="store_true",
                   help="do not write the table into the encoder folder's model card")
    p.add_argument("--output", default=None, help="write {task: {metric: value, split, n}}")
    a = p.parse_args(argv)
    if not a.data_dir:
        p.error("--data_dir is required (or set SOFTMCL_DATA_DIR)")
    if not os.path.isdir(a.data_dir):
        p.error(f"--data_dir={a.data_dir}: not a folder")
    if a.max_len is not None and a.max_len < 1:
        p.error(f"--max_len={a.max_len} must be >= 1")
    if a.output:  # found out now, not after the tasks ran
        where = os.path.dirname(os.path.abspath(a.output))
        if not os.path.isdir(where) or not os.access(where, os.W_OK):
            raise SystemExit(f"{p.prog}: error: cannot write --output={a.output}: its folder "
                             f"{where} is missing or read-only")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SuiteConfig(
        data_dir=a.data_dir, max_examples=a.max_examples, seed=a.seed,
        fewshot_k=_int_list(a.fewshot_k), fewshot_seeds=_int_list(a.fewshot_seeds),
        finetune_steps=a.finetune_steps, finetune_lr=a.finetune_lr,
        finetune_batch_size=a.finetune_batch_size,
        goemotions_drop_neutral=a.goemotions_drop_neutral, progress=not a.no_progress,
        finetune_workdir=a.workdir)
    tasks = None if a.tasks in (None, "", "default") else [
        t.strip() for t in a.tasks.split(",") if t.strip()]
    if tasks == []:
        p.error(f"--tasks={a.tasks} names no task")
    finetuned = [t.strip() for t in a.finetune.split(",") if t.strip()]
    unknown = [t for t in finetuned if t not in FINETUNE_TASKS]
    if unknown:
        p.error(f"--finetune={a.finetune}: unknown task(s) {unknown}; fine-tuning tasks: "
                f"{','.join(FINETUNE_TASKS)}")
    if finetuned:  # without --tasks, only the fine-tuning
        named = [] if a.tasks in (None, "") else (tasks or list(DEFAULT_TASKS))
        tasks = list(dict.fromkeys([*named, *(f"{t}_finetune" for t in finetuned)]))
    try:
        path, run_pooling = resolve_checkpoint(a.checkpoint)
        declared = max_seq_length(a.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{p.prog}: error: {e}") from None
    config.checkpoint = str(path)  # what a fine-tuning run's model.name_or_path loads
    pooling = a.pooling or run_pooling or "mean"
    max_len = a.max_len or declared or DEFAULT_MAX_LEN
    if os.path.isfile(os.path.join(path, "config.json")):  # else loading says what is missing
        try:  # a longer input than the position table would fail inside the first batch
            hf_config = load_config(path)
            limit = max_positions(hf_config)
            if a.max_len is None and limit is not None and max_len > limit:
                max_len = limit  # a default, not the user's choice: fit it to the encoder
            check_length(hf_config, max_len, f"--max_len={max_len}")
        except (CheckpointError, ValueError) as e:
            raise SystemExit(f"{p.prog}: error: {_one_line(e)}") from None
    if a.max_len is None:
        log.info("max_len=%d: %s (--max_len overrides)", max_len,
                 "the encoder's max_seq_length" if declared else "the default")
    if run_pooling and not a.pooling:
        log.info("pooling=%s: the run's model.pooling (--pooling overrides)", pooling)
    elif run_pooling and a.pooling != run_pooling:
        log.warning("--pooling=%s, but the run trained with model.pooling=%s", a.pooling,
                    run_pooling)
    try:
        results, skipped = run_suite(path, tasks, config, pooling=pooling,
                                     max_len=max_len, batch_size=a.batch_size, dtype=a.dtype)
    except CheckpointError as e:
        again = export_again(path) if os.path.isdir(path) else ""
        hint = f"; export it again: {again}" if again else ""
        raise SystemExit(f"{p.prog}: error: {_one_line(e)}{hint}") from None
    header = {"checkpoint": a.checkpoint}
    if path != resolve_name(a.checkpoint):  # a training workdir: say which folder was loaded
        header["encoder"] = path
    header.update(data_dir=a.data_dir, pooling=pooling, max_len=max_len,
                  max_examples=a.max_examples, seed=a.seed)
    print(report.markdown(results, header=header, skipped=skipped), end="", flush=True)
    if not results:
        why = "".join(f"\n  {task}: {reason}" for task, reason in skipped.items())
        raise SystemExit(f"{p.prog}: error: no task ran on --data_dir={a.data_dir}; "
                         f"skipped:{why or ' none'}")
    if a.output:
        try:
            report.write_json(results, a.output)
        except OSError as e:
            raise SystemExit(f"{p.prog}: error: cannot write --output={a.output}: "
                             f"{e.strerror or e} (the table is above)") from None
    if not a.no_card and os.path.isdir(path):
        _fill_card(path, report.markdown(results, header=header, skipped=skipped, title=False))
    return report.to_json(results)


def _fill_card(folder: str, table: str) -> None:
    """The table into ``folder``'s model card, if it has one of ours; a card that cannot be
    written is a warning, not a failed evaluation."""
    card = os.path.join(folder, model_card.CARD_FILE)
    try:
        written = model_card.set_evaluation(folder, table)
    except OSError as e:
        log.warning("the model card %s was not updated: %s (%s); the results are above "
                    "(--no_card skips the card)", card, e.strerror or e, e.filename or folder)
        return
    if written:
        log.info("wrote the table into the model card %s", card)


def _cli() -> None:
    """``main`` as a command: a task's missing files or a bad argument value is one line, exit
    status 1, no traceback."""
    try:
        main()
    except (MissingData, CheckpointError, ValueError, OSError) as e:
        sys.exit(f"{PROG}: error: {_one_line(e)}")


__all__ = [
    "EXPORT_DIR",
    "ProbeSplit",
    "main",
    "max_seq_length",
    "probe_split",
    "resolve_checkpoint",
    "run_suite",
    "valence_probe",
    "vader_probe_split",
]


if __name__ == "__main__":
    _cli()
