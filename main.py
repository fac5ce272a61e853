"""softmcl_jax trainer entry point: ``python main.py --config=configs/softmcl.py --workdir=DIR``.

Every config field can be overridden on the command line (``--config.x.y=value``).
"""

from __future__ import annotations

import importlib.util
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if importlib.util.find_spec("softmcl_jax.train") is None:
        # The trainer is issue 6; until it lands, say so instead of pretending to train.
        print("softmcl_jax.train does not exist yet (the trainer is issue 6). "
              "`make run` runs the encoder parity check meanwhile.", file=sys.stderr)
        sys.exit(2)
    from softmcl_jax import train

    train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
