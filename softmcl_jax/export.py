"""Write a trained encoder as a Hugging Face and sentence-transformers model with a model card.

    python -m softmcl_jax.export --workdir=WORKDIR --out=DIR [--step=N] [--with_mlm_head]

Reads ``WORKDIR/config.json`` (written by the trainer) to rebuild the model, restores only the
encoder's parameters of the newest (or the given) checkpoint onto one device (not the heads, Adam
moments, EMA or queues), and writes ``config.json``, ``model.safetensors``, the tokenizer files,
the sentence-transformers files (the run's pooling and max length) and ``README.md`` (the card;
``WORKDIR/run_info.json``, which a finished run writes, adds the data count, hardware and probe):
``transformers.AutoModel.from_pretrained(DIR)`` and ``SentenceTransformer(DIR)`` load it.
"""

from __future__ import annotations

import argparse

import jax

from softmcl_jax import loop, sharding
from softmcl_jax.checkpoint import non_finite_leaves
from softmcl_jax.export_format import read_run_info, write_export
from softmcl_jax.workdir import load_config


def export(workdir: str, out: str, *, step: int | None = None,
           with_mlm_head: bool = False) -> str:
    """Export checkpoint ``step`` (None: the newest) of ``workdir`` into ``out``; returns it."""
    config = load_config(workdir)
    pretrained, _, _ = loop.setup_model(config)
    # The encoder's parameters are the base checkpoint's shapes, laid out on one device.
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          pretrained.params, sharding.param_shardings(pretrained.params, mesh))
    ckpt = loop.checkpointer(config, workdir)
    step = step if step is not None else ckpt.latest_step()
    encoder = ckpt.restore_subtree(step, {"params": {"encoder": target}})["params"]["encoder"]
    ckpt.close()
    encoder = jax.device_get(encoder)
    bad = non_finite_leaves(encoder)
    if bad:
        raise ValueError(f"{workdir}: checkpoint {step or 'newest'} holds non-finite encoder "
                         f"weights ({', '.join(bad[:3])}); not exported")
    info = read_run_info(workdir)
    if info.get("steps") != step:  # the run's probe measured another checkpoint
        info = {k: v for k, v in info.items() if not k.startswith("probe_")}
    info["steps"] = step
    return write_export(pretrained, encoder, out, config, info, with_mlm_head=with_mlm_head)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
    p.add_argument("--with_mlm_head", action="store_true",
                   help="write the *ForMaskedLM layout (AutoModelForMaskedLM)")
    a = p.parse_args(argv)
    print(export(a.workdir, a.out, step=a.step, with_mlm_head=a.with_mlm_head))


if __name__ == "__main__":
    main()
