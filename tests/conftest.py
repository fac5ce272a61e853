import os
import tempfile

# Tests run on the CPU whatever is installed, with full fp32 matmuls: parity bounds are fp32 bounds.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Today's sources are prepared into a cache folder on first use (loop.data_sources): one cache
# for the whole session, so tests that train on the same data prepare it once, and nothing is
# written to ~/.cache.
os.environ.setdefault("SOFTMCL_CACHE_DIR", tempfile.mkdtemp(prefix="softmcl_cache_"))

# JAX's persistent compilation cache, one per session, every program however fast it compiles:
# many tests (in this process and in the main.py subprocesses, which inherit the environment)
# compile the same tiny steps again and again; a cached executable is the same code, so results
# stay bit for bit what a fresh compile gives.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="softmcl_jax_cc_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import transformers  # noqa: E402  (after the environment above is set)

# Tests print the differences they measure (`pytest -s`); keep the reference library's progress
# bars and load reports out of that output.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The tiny random BERT with MiniLM's tokenizer (tests/train_utils.py), once a session."""
    from tests import train_utils

    return train_utils.tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert_session")))


@pytest.fixture(scope="session")
def tiny_run(tiny_model, tmp_path_factory) -> tuple[str, str]:
    """(workdir, model dir) of one finished tiny SimCSE run (``train_utils.TINY_RUN``): 3 steps,
    checkpoints 2 and 3, the export in WORKDIR/export. Shared by the failure tests: copy it
    (``shutil.copytree``) before changing anything in it. Compiled with
    ``train_utils.FAST_COMPILE_FLAGS``: its numbers are compared with no other run's."""
    from tests import train_utils

    workdir = str(tmp_path_factory.mktemp("tiny_run") / "workdir")
    train_utils.run_main_fast("simcse.py", workdir, tiny_model, **train_utils.TINY_RUN)
    return workdir, tiny_model
