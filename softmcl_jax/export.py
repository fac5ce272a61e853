"""Write a trained encoder as a Hugging Face and sentence-transformers model with a model card.

    python -m softmcl_jax.export --workdir=WORKDIR --out=DIR [--step=N] [--with_mlm_head]
        [--overwrite]

Reads ``WORKDIR/config.json`` (written by the trainer) to rebuild the model, restores only the
encoder's parameters of the newest (or the given) checkpoint onto one device (not the heads, Adam
moments, EMA or queues), and writes ``config.json``, ``model.safetensors``, the tokenizer files,
the sentence-transformers files (the run's pooling and max length) and ``README.md`` (the card;
``WORKDIR/run_info.json``, which a finished run writes, adds the data count, hardware and probe):
``transformers.AutoModel.from_pretrained(DIR)`` and ``SentenceTransformer(DIR)`` load it.

``DIR`` is written whole or not at all (a temporary sibling, then a rename), and only over an
earlier export of the same run, an empty folder, or nothing; ``--overwrite`` replaces another
non-empty folder, never a training workdir (``export_format.check_out``). Every refusal, a
missing step and an unwritable ``DIR`` end in one line and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from softmcl_jax import loop, sharding
from softmcl_jax.checkpoint import non_finite_leaves
from softmcl_jax.export_format import ExportError, check_out, read_run_info, write_export
from softmcl_jax.models import CheckpointError
from softmcl_jax.workdir import CONFIG_FILE, checkpoint_directory, load_config


def _steps_there(steps: list[int]) -> str:
    return (f"the steps there are {', '.join(map(str, steps))}" if steps
            else "it holds no checkpoint")


def export(workdir: str, out: str, *, step: int | None = None, with_mlm_head: bool = False,
           overwrite: bool = False) -> str:
    """Export checkpoint ``step`` (None: the newest) of ``workdir`` into ``out``; returns it.

    Raises ``ExportError`` (``out`` may not be replaced, or cannot be written; a workdir that is
    not a run's), ``FileNotFoundError`` (no such checkpoint, naming the steps there are) and
    ``ValueError`` (non-finite weights) before anything is written.
    """
    config = load_config(workdir)
    if "model" not in config or "objective" not in config:
        raise ExportError(f"{os.path.join(workdir, CONFIG_FILE)} is not a training run's config "
                          "(no model and objective sections); --workdir is the folder main.py "
                          "trained in")
    # Refused before the slow part (the model and the checkpoint), and again when writing.
    check_out(out, config, workdir=workdir, overwrite=overwrite)
    # Where loop.checkpointer looks; checked first, since the Checkpointer creates it.
    ckpt_dir = checkpoint_directory(config.checkpoint_dir, workdir)
    if "://" not in ckpt_dir and not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint directory, so nothing to export "
                                f"(has {workdir} saved a checkpoint yet?)")
    ckpt = loop.checkpointer(config, workdir)
    try:
        steps = ckpt.all_steps()
        if (step is None and not steps) or (step is not None and step not in steps):
            which = "no checkpoint" if step is None else f"no checkpoint of step {step}"
            raise FileNotFoundError(f"{ckpt.directory}: {which} to export; "
                                    f"{_steps_there(steps)}")
        step = steps[-1] if step is None else step
        pretrained, _, _ = loop.setup_model(config)
        # The encoder's parameters are the base checkpoint's shapes, laid out on one device.
        mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            pretrained.params, sharding.param_shardings(pretrained.params, mesh))
        encoder = ckpt.restore_subtree(step, {"params": {"encoder": target}})
    finally:
        ckpt.close()
    encoder = jax.device_get(encoder["params"]["encoder"])
    bad = non_finite_leaves(encoder)
    if bad:
        raise ValueError(f"{workdir}: checkpoint {step} holds non-finite encoder weights "
                         f"({', '.join(bad[:3])}); not exported")
    info = read_run_info(workdir)
    if info.get("steps") != step:  # the run's probe measured another checkpoint
        info = {k: v for k, v in info.items() if not k.startswith("probe_")}
    info["steps"] = step
    return write_export(pretrained, encoder, out, config, info, with_mlm_head=with_mlm_head,
                        workdir=workdir, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m softmcl_jax.export",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
    p.add_argument("--with_mlm_head", action="store_true",
                   help="write the *ForMaskedLM layout (AutoModelForMaskedLM)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that is not an earlier export of this run "
                        "(its files are deleted); a training workdir is refused even so")
    a = p.parse_args(argv)
    try:
        out = export(a.workdir, a.out, step=a.step, with_mlm_head=a.with_mlm_head,
                     overwrite=a.overwrite)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as e:
        # What the user must fix, said plainly: one line, no traceback, exit status 1.
        sys.exit(f"{p.prog}: error: {' '.join(str(e).split())}")
    print(out)


if __name__ == "__main__":
    main()
