"""The trainer end to end (main.py in a subprocess), and the train state's pure pieces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from softmcl_jax import objective, train
from softmcl_jax.data import load_vader_sentences
from tests import train_utils as tu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model  # the session's tiny BERT: its data is prepared and its steps compiled once


def losses(workdir: str) -> np.ndarray:
    return np.array([m["loss"] for m in tu.read_metrics(workdir)])


def test_enqueue_wraps_in_place():
    q = train.Queue(keys=jnp.zeros((6, 2)), values=jnp.zeros(6), valid=jnp.zeros(6, bool),
                    ptr=jnp.array(0, jnp.int32))
    for i in range(4):  # 4 writes of 2 into 6 slots: the 4th overwrites the 1st
        q = train.enqueue(q, jnp.full((2, 2), i + 1.0), jnp.full(2, i + 1.0),
                          jnp.array([True, i != 1]))
    np.testing.assert_array_equal(q.values, [4, 4, 2, 2, 3, 3])
    np.testing.assert_array_equal(q.valid, [True, True, True, False, True, True])
    assert int(q.ptr) == 2


def test_queue_size_must_be_a_multiple_of_the_keys_per_step():
    c = tu.load_config("softmcl")
    c.batch_size = 32
    c.objective.soft_sentence.queue_size = 100
    with pytest.raises(ValueError, match=r"soft_sentence.queue_size=100 must be 0 or a positive "
                                         r"multiple of the keys written per step \(32\)"):
        objective.plan(c)
    c.objective.soft_sentence.queue_size = 96
    c.objective.soft_word.queue_size = 192  # 32 sentences x 4 words = 128 keys per step
    with pytest.raises(ValueError, match=r"soft_word.queue_size=192 .* \(128\)"):
        objective.plan(c)


def test_one_device_equals_eight_and_fsdp(model_dir, tmp_path):
    """Same losses on 1 CPU device, 8 simulated data-parallel ones, and 4 data x 2 fsdp.

    Unpacked, with dropout: the masks follow the sentences, whatever the devices. Packed, each
    device packs its own sentences, so the rows (and dropout's masks over them) depend on the
    device count: the packed runs compare with dropout off."""
    runs = {
        "1": dict(devices=1),
        "8": dict(devices=8),
        "4x2": dict(devices=8, mesh__data=4, mesh__fsdp=2),
    }
    no_dropout = tu.tiny_model_dir(str(tmp_path / "no_dropout_bert"), dropout=False)
    for packing, model, names in ((False, model_dir, tuple(runs)), (True, no_dropout, ("1", "8"))):
        curves = {}
        for name in names:
            workdir = str(tmp_path / f"{name}_{packing}")
            tu.run_main_fast("softmcl.py", workdir, model, **dict(tu.SOFTMCL_TINY, total_steps=20,
                                                            data__packing=packing), **runs[name])
            curves[name] = losses(workdir)
        assert len(curves["1"]) == 20
        for name in names[1:]:
            rel = np.abs(curves[name] - curves["1"]) / np.abs(curves["1"])
            print(f"losses over 20 steps, {'packed' if packing else 'unpacked'}, {name} devices "
                  f"vs 1: max relative difference {rel.max():.2e}")
            assert rel.max() <= 1e-4, (name, curves[name], curves["1"])


def _wait_for_metrics(workdir: str, proc: subprocess.Popen, lines: int) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        if os.path.exists(path) and sum(1 for _ in open(path)) >= lines:
            return
        time.sleep(0.01)
    raise TimeoutError(f"{path} never reached {lines} lines")


def test_sigkill_then_resume_equals_uninterrupted(model_dir, tmp_path):
    fields = dict(tu.SOFTMCL_TINY, total_steps=60)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    tu.run_main_fast("softmcl.py", full, model_dir, **fields)

    proc = subprocess.Popen(tu.main_command("softmcl.py", killed, model_dir, **fields),
                            env=tu.fast_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_metrics(killed, proc, 10)  # the checkpoint of step 8 is on disk by now
    proc.kill()
    proc.wait()
    interrupted_at = len(tu.read_metrics(killed))
    assert not os.path.exists(os.path.join(killed, "export")), "the run finished before the kill"
    tu.run_main_fast("softmcl.py", killed, model_dir, **fields)  # the same command again

    print(f"killed after step {interrupted_at}, resumed from the last checkpoint")
    a, b = tu.read_metrics(full), tu.read_metrics(killed)
    assert [m["step"] for m in b] == list(range(1, 61))
    assert a == b  # every metric of every step, bit for bit
    wa = load_file(os.path.join(full, "export", "model.safetensors"))
    wb = load_file(os.path.join(killed, "export", "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_sigterm_saves_then_exits(model_dir, tmp_path):
    workdir = str(tmp_path / "run")
    fields = dict(tu.SOFTMCL_TINY, total_steps=200, checkpoint_every_steps=1000)
    proc = subprocess.Popen(tu.main_command("softmcl.py", workdir, model_dir, **fields),
                            env=tu.fast_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_metrics(workdir, proc, 5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                   if s.isdigit())
    last_logged = tu.read_metrics(workdir)[-1]["step"]
    print(f"SIGTERM at step {last_logged}: checkpoints {steps}")
    assert steps == [last_logged] and 5 <= last_logged < 200
    assert "preemption requested" in err


def _labelled_file(path: str, fmt: str, n: int = 64) -> str:
    """Made-up labels (valence quartiles) on shipped VADER sentences, in a reader's format."""
    sentences = load_vader_sentences(("tweets",))[:n]
    with open(path, "w") as f:
        for i, s in enumerate(sentences):
            label = min(int(s.valence * 4), 3)
            text = " ".join(s.text.split())
            f.write(f"{text}\t{label}\tid{i}\n" if fmt == "goemotions" else f"{label} {text}\n")
    return path


@pytest.mark.parametrize("config,extra", [
    ("simcse.py", {}),
    ("softcse.py", {"objective__softcse__mode": "temperature"}),
    ("retrofit.py", {"data__num_labels": 4}),
    ("lcl.py", {"data__num_labels": 4}),
    ("softmcl.py", {"model__dtype": "bfloat16", "model__remat": True}),
])
def test_every_method_trains_and_exports(config, extra, model_dir, tmp_path):
    fields = dict(tu.SOFTMCL_TINY if config == "softmcl.py" else tu.TINY, total_steps=6, **extra)
    if config == "retrofit.py":
        fields["data__path"] = _labelled_file(str(tmp_path / "go.tsv"), "goemotions")
    if config == "lcl.py":
        fields["data__path"] = _labelled_file(str(tmp_path / "sst.txt"), "sst")
    workdir = str(tmp_path / "run")
    tu.run_main_fast(config, workdir, model_dir, **fields)
    curve = losses(workdir)
    print(f"{config} {extra}: losses {np.round(curve, 3).tolist()}")
    assert len(curve) == 6 and np.all(np.isfinite(curve))
    model, info = transformers.AutoModel.from_pretrained(os.path.join(workdir, "export"),
                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_export_cli_matches_end_of_run_export(model_dir, tmp_path):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
    tu.run_main_fast("softmcl.py", workdir, model_dir, **dict(tu.SOFTMCL_TINY, total_steps=4))
    proc = subprocess.run([sys.executable, "-m", "softmcl_jax.export", f"--workdir={workdir}",
                           f"--out={out}"], env=tu.fast_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(os.path.join(workdir, "export", "model.safetensors"))
    b = load_file(os.path.join(out, "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # sentence-transformers reads it as a plain transformers folder (mean pooling).
    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(out, device="cpu").encode(["a happy day", "a sad day"])
    assert emb.shape == (2, 64) and np.all(np.isfinite(emb))
