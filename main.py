"""softmcl_jax trainer entry point: ``python main.py --config=configs/softmcl.py --workdir=DIR``.

Every config field can be overridden on the command line (``--config.x.y=value``).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from softmcl_jax import cli_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir",
                                "Where checkpoints, metrics and the export go.")
# Multi-host: on a TPU VM pod slice `--distributed` alone suffices (JAX finds its peers); on GPU
# nodes give the coordinator, the process count and this process's id.
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _DISTRIBUTED.value:
        import jax

        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    # orbax logs every file it renames through absl at INFO; keep the run's own log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    from softmcl_jax import loop
    from softmcl_jax.data.records import DataError
    from softmcl_jax.models import CheckpointError
    from softmcl_jax.workdir import ConfigMismatch, WorkdirBusy

    try:
        loop.run(_CONFIG.value, _WORKDIR.value)
    except (loop.Diverged, ConfigMismatch, WorkdirBusy, DataError, CheckpointError,
            ValueError) as e:
        # What the user must fix, said plainly: no traceback, exit status 1.
        logging.getLogger("main").error("%s: %s", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    # A bad config file or override is one line and exit status 1, before JAX is imported.
    app.run(main, flags_parser=cli_config.parse_flags)
