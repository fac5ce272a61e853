"""The TPU and GPU launchers print the commands they would run (DRY_RUN=1): check them."""

from __future__ import annotations

import os
import subprocess

from tests.train_utils import ROOT


def dry(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["bash", os.path.join(ROOT, "tpu_scripts", script), *args],
                          env={**os.environ, "DRY_RUN": "1", **(env or {})},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_create_picks_the_runtime_for_each_generation():
    for tpu_type, version in [("v4-8", "tpu-ubuntu2204-base"),
                              ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5")]:
        out = dry("tpu.sh", "create", "--name=s", "--zone=z", f"--type={tpu_type}", "--spot")
        assert out.split() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "s", "--zone",
                               "z", "--accelerator-type", tpu_type, "--version", version,
                               "--spot"]


def test_launch_runs_main_on_every_worker_with_shared_checkpoints():
    out = dry("tpu.sh", "launch", "--name=s", "--zone=z", "--bucket=gs://b", "--run=r1", "--",
              "--config.total_steps=100")
    assert "--worker=all" in out and "main.py" in out and "--distributed" in out
    assert "--config.checkpoint_dir=gs://b/runs/r1/checkpoints" in out.replace("\\", "")
    assert "--config.total_steps=100" in out


def test_prepare_runs_once_then_copies_the_folder_to_every_host():
    out = dry("tpu.sh", "prepare", "--name=s", "--zone=z", "--bucket=gs://b", "--out=rev", "--",
              "--config.data.source=text", "--config.data.path=/d/rev.txt.gz").replace("\\", "")
    first, second = out.strip().splitlines()
    assert "--worker=0" in first and "--worker=all" not in first
    assert "-m softmcl_jax.data.prepare --config=configs/softmcl.py" in first
    assert "--out=$HOME/prepared/rev" in first and "--config.data.path=/d/rev.txt.gz" in first
    assert "rsync -r $HOME/prepared/rev gs://b/prepared/rev" in first
    assert "--worker=all" in second and "rsync -r gs://b/prepared/rev ~/prepared/rev" in second
    proc = subprocess.run(["bash", os.path.join(ROOT, "tpu_scripts", "tpu.sh"), "prepare",
                           "--name=s", "--zone=z", "--bucket=gs://b"],
                          env={**os.environ, "DRY_RUN": "1"}, capture_output=True, text=True)
    assert proc.returncode == 2 and "--out is required" in proc.stderr


def test_unknown_tpu_type_and_missing_flags_are_refused():
    for args in (["create", "--name=s", "--zone=z", "--type=v3-8"], ["create", "--zone=z"]):
        proc = subprocess.run(["bash", os.path.join(ROOT, "tpu_scripts", "tpu.sh"), *args],
                              env={**os.environ, "DRY_RUN": "1"}, capture_output=True, text=True)
        assert proc.returncode == 2 and "tpu.sh" in proc.stderr


def test_gpu_multi_node_uses_jax_distributed():
    one = dry("gpu.sh", "--workdir=w")
    assert "--distributed" not in one and "main.py" in one
    many = dry("gpu.sh", "--nodes=2", "--node_rank=1", "--coordinator=h0:29500",
               "--checkpoint_dir=/nfs/c", "--", "--config.batch_size=256")
    for part in ("--distributed", "--coordinator_address=h0:29500", "--num_processes=2",
                 "--process_id=1", "--config.checkpoint_dir=/nfs/c", "--config.batch_size=256"):
        assert part in many
