"""softmcl_jax trainer entry point: ``python main.py --config=configs/softmcl.py --workdir=DIR``.

Every config field can be overridden on the command line (``--config.x.y=value``).
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir",
                                "Where checkpoints, metrics and the export go.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # orbax logs every file it renames through absl at INFO; keep the run's own log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    from softmcl_jax import loop

    loop.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
