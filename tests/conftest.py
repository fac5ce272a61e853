import os

# Tests run on the CPU whatever is installed, with full fp32 matmuls: parity bounds are fp32 bounds.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import transformers  # noqa: E402  (after the environment above is set)

# Tests print the differences they measure (`pytest -s`); keep the reference library's progress
# bars and load reports out of that output.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
