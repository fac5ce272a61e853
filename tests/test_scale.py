"""Scaling out: several processes (jax.distributed on 127.0.0.1) and parameter (fsdp) sharding."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import train_utils as tu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tu.tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(model_dir, tmp_path):
    """Two jax.distributed processes (1 CPU device each) train what one process with 2 does."""
    fields = dict(tu.SOFTMCL_TINY, total_steps=5)
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    port = free_port()
    procs = [subprocess.Popen(
        tu.main_command("softmcl.py", multi, model_dir, **fields)
        + ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
        env=tu.env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    tu.run_main("softmcl.py", single, model_dir, devices=2, **fields)
    a = [m["loss"] for m in tu.read_metrics(multi)]
    b = [m["loss"] for m in tu.read_metrics(single)]
    rel = np.abs(np.subtract(a, b)) / np.abs(b)
    print(f"2 processes vs 1 process (2 devices), 5 steps: max relative loss difference "
          f"{rel.max():.2e}")
    assert len(a) == 5 and rel.max() <= 1e-6
    assert os.path.exists(os.path.join(multi, "export", "model.safetensors"))


SHARDING_WORKER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/configs")
    import softmcl
    from softmcl_jax import loop, sharding, train
    c = softmcl.get_config()
    c.model.name_or_path = {model!r}
    c.batch_size, c.head.dim = 8, 16
    c.objective.soft_sentence.queue_size, c.objective.soft_word.queue_size = 16, 64
    out = {{}}
    for name, (data, fsdp) in {{"unsharded": (8, 1), "fsdp": (4, 2)}}.items():
        c.mesh.data, c.mesh.fsdp = data, fsdp
        mesh = sharding.make_mesh(data, fsdp)
        pretrained, _, model = loop.setup_model(c)
        init, _, shard, _ = train.setup_step(model, c, mesh)
        state = init()
        emb = state.params["encoder"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
        mu = state.opt_state[1][0].mu["encoder"]["bert"]["embeddings"]["word_embeddings"]
        ema = state.ema_params["encoder"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
        q = state.queues["soft_sentence"].keys
        out[name] = {{
            "embedding": [list(s.data.shape) for s in emb.addressable_shards],
            "adam_mu": [list(s.data.shape) for s in mu["embedding"].addressable_shards],
            "ema": [list(s.data.shape) for s in ema.addressable_shards],
            "queue": [list(s.data.shape) for s in q.addressable_shards],
        }}
    print("RESULT" + json.dumps(out))
""")


def test_fsdp_really_shards_parameters_and_optimizer_state(model_dir):
    code = SHARDING_WORKER.format(root=tu.ROOT, model=model_dir)
    proc = subprocess.run([sys.executable, "-c", code], env=tu.env(8), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    shapes = json.loads(line[len("RESULT"):])
    print(json.dumps(shapes))
    # (30522, 64) word embeddings: whole on every device without fsdp; split along the vocab
    # over the fsdp axis (2) with it, and so are their Adam moments and EMA copy.
    assert shapes["unsharded"]["embedding"] == [[30522, 64]] * 8
    for part in ("embedding", "adam_mu", "ema"):
        assert shapes["fsdp"][part] == [[15261, 64]] * 8, part
    # Queues are split along K over all 8 devices in both layouts.
    assert shapes["fsdp"]["queue"] == shapes["unsharded"]["queue"] == [[2, 16]] * 8


def test_bf16_losses_track_fp32_on_minilm(tmp_path):
    """Mixed precision (bf16 matmuls, fp32 params/optimizer/losses) on the real MiniLM."""
    fields = dict(tu.SOFTMCL_TINY, total_steps=20, optimizer__learning_rate=5e-5,
                  export__enabled=False, checkpoint_every_steps=1000)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        workdir = str(tmp_path / dtype)
        tu.run_main("softmcl.py", workdir, "minilm", model__dtype=dtype, **fields)
        curves[dtype] = np.array([m["loss"] for m in tu.read_metrics(workdir)])
    rel = np.abs(curves["bfloat16"] - curves["float32"]) / np.abs(curves["float32"])
    print(f"MiniLM, 20 steps: bf16 vs fp32 loss max relative difference {rel.max():.2e}")
    assert len(rel) == 20 and rel.max() <= 1e-2
