"""benchmarks/accelerator.py, the one-command accelerator check, on the CPU.

The slow tests run the script once with ``--tiny`` (every case: tiny random BERT and DeBERTa-v3,
batch 8 x 32, caching at 64 in chunks of 8, fp32, dropout off) and read its JSON and its
BENCHMARKS.md section, written to a temporary file. Cost on 2 CPU cores: 8 XLA compilations of
a whole train step (~8 s each at optimisation level 0) and 2 inductor compilations of the
PyTorch encoders (BERT ~35 s, DeBERTa ~45 s, on the smallest models the script has) make a cold
run ~3.5 min; both compilers' caches are kept across runs (JAX's in the system temp folder,
inductor's default /tmp/torchinductor_<user>), so later runs take ~70 s of CPU (90-130 s wall
on a loaded machine). Hence ``slow``. The fast tests check the case list, the worker restarts
and the goals' verdicts without running a step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile

import pytest

from tests import train_utils as tu

BENCH = os.path.join(tu.ROOT, "benchmarks")
sys.path.insert(0, BENCH)
import accelerator as acc  # noqa: E402

TITLE = "## Accelerator check: CPU, tiny models (benchmarks/accelerator.py)"


def _env() -> dict[str, str]:
    e = tu.env()
    # Faster XLA compiles (test_bench_scripts' flags): these runs check agreement, not speed.
    e["XLA_FLAGS"] += (" --xla_backend_optimization_level=0"
                       " --xla_llvm_disable_expensive_passes=true")
    # A compilation cache that outlives the session: the same tiny programs every run (a cached
    # executable is the same code, see conftest.py).
    e["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"softmcl_test_accelerator_jax_cache_{os.getuid()}")
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return e


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, str, str]:
    """(accelerator.json, the section file's text, stdout) of one ``--tiny`` run."""
    tmp = tmp_path_factory.mktemp("accelerator")
    markdown = tmp / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "accelerator.py"), "--tiny",
                           "--out", str(tmp / "out"), "--markdown", str(markdown)],
                          env=_env(), capture_output=True, text=True, timeout=900, cwd=tu.ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    with open(tmp / "out" / "accelerator.json") as f:
        return json.load(f), markdown.read_text(), proc.stdout


# ------------------------------------------------------------------------------ slow: one run


@pytest.mark.slow
def test_every_case_runs_with_finite_positive_step_times(tiny):
    doc, _, _ = tiny
    assert list(doc["cases"]) == [c.name for c in acc.CASES]
    for name, res in doc["cases"].items():
        assert "error" not in res and "skipped" not in res, (name, res)
        assert len(res["times"]) == acc.TINY.repeats, name
        assert all(math.isfinite(t) and t > 0 for t in res["times"]), (name, res["times"])
        assert res["compile_s"] > 0 and res["flops"] > 0 and res["device"] == "CPU", name
        # No bf16 peak figure for a CPU: MFU is not applicable, the times still are.
        assert res["figures"]["mfu"] is None and res["figures"]["mfu_real_tokens"] is None
    cases = doc["cases"]
    assert cases["jax:softmcl:bert:padded:cache"]["batch"] == acc.TINY.cache_batch
    assert cases["jax:softmcl:bert:packed"]["rows"] < cases["jax:softmcl:bert:padded"]["rows"]
    # The anchored mix's frozen pass counts: more model FLOPs than SoftMCL's on the same rows.
    assert (cases["jax:softmcl_anchored:bert:padded"]["flops"]
            > cases["jax:softmcl:bert:padded"]["flops"])
    # The PyTorch step is charged the padded JAX step's FLOPs.
    assert cases["torch:softmcl:bert:eager"]["flops"] == cases["jax:softmcl:bert:padded"]["flops"]
    assert all(g["value"] is None for g in doc["goals"] if g["figure"] == "mfu")
    assert all(g["met"] is None for g in doc["goals"])  # the goals are an H200's


@pytest.mark.slow
def test_packed_steps_read_the_same_tokens_and_agree_with_padded(tiny):
    checks = tiny[0]["checks"]
    keys = ["softmcl:bert", "softmcl_anchored:bert", "softmcl:deberta", "softmcl:bert:cache"]
    assert checks["packed_same_tokens"] == dict.fromkeys(keys, True)
    for key in keys:  # the same sentences, rounding apart (dropout is off in --tiny)
        assert max(checks["packed_vs_padded"][key].values()) <= 1e-5, (key, checks)


@pytest.mark.slow
def test_torch_compiled_equals_eager_and_eager_equals_jax(tiny):
    checks = tiny[0]["checks"]
    for model in ("bert", "deberta"):
        assert max(checks["compile_vs_eager"][model].values()) <= 1e-5, (model, checks)
        # tests/test_baselines.py's bound: the PyTorch baseline takes the JAX trainer's steps.
        assert max(checks["torch_vs_jax"][model].values()) <= 1e-4, (model, checks)


@pytest.mark.slow
def test_section_goes_to_the_file_given(tiny):
    doc, text, stdout = tiny
    assert text.startswith("# Benchmarks\n") and TITLE in text and TITLE in stdout
    for name in doc["cases"]:
        assert f"| {name} | tiny-" in text, name
    assert "* BERT-base SoftMCL step MFU, padded: n/a; goal >= 45%" in text
    assert "No peak figure for this device" in text
    with open(os.path.join(tu.ROOT, "BENCHMARKS.md")) as f:
        assert TITLE not in f.read()


# --------------------------------------------------------------------- fast: no step is taken


def test_the_case_list_and_its_selection():
    names = [c.name for c in acc.CASES]
    assert len(names) == len(set(names)) == 12
    assert {n for n in names if n.startswith("jax:")} == {
        f"jax:{o}:{m}:{lay}" for o, m in (("softmcl", "bert"), ("softmcl_anchored", "bert"),
                                          ("softmcl", "deberta")) for lay in acc.LAYOUTS
    } | {f"jax:softmcl:bert:{lay}:cache" for lay in acc.LAYOUTS}
    assert [c.name for c in acc.select("torch:*:bert:*, jax:softmcl:deberta:packed")] == [
        "jax:softmcl:deberta:packed", "torch:softmcl:bert:eager", "torch:softmcl:bert:compile"]
    assert [c.name for c in acc.select("*")] == names
    with pytest.raises(ValueError, match="'jax:nope' matches none"):
        acc.select("jax:nope")


FAKE_WORKER = """
import json, os, sys
spec = json.load(open(sys.argv[sys.argv.index("--spec") + 1]))
if os.environ.get("DIE_AT_START"):
    sys.exit(2)
for name in spec["cases"]:
    base = os.path.join(spec["results"], name.replace(":", "."))
    open(base + ".started", "w").close()
    if name == os.environ.get("DIE_IN"):
        sys.stderr.write("killed in " + name)
        sys.exit(3)
    json.dump({"case": name, "settings": spec["settings"], "times": [1.0]},
              open(base + ".json", "w"))
    os.remove(base + ".started")
"""


def test_a_dead_worker_fails_its_case_and_the_rest_still_run(tmp_path, monkeypatch):
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE_WORKER)
    cases = acc.select("jax:softmcl:bert:*")
    results = tmp_path / "cases"
    results.mkdir()
    monkeypatch.setenv("DIE_IN", "jax:softmcl:bert:packed")

    def run() -> dict:
        acc.run_side("jax", cases, acc.TINY, {}, str(results), str(tmp_path),
                     worker_cmd=[sys.executable, str(fake)])
        assert not list(results.glob("*.started"))
        return acc.collect(str(results), acc.TINY)

    got = run()
    assert list(got) == [c.name for c in cases]
    assert got["jax:softmcl:bert:packed"]["error"].startswith(
        "the jax worker died (exit status 3):\nkilled in jax:softmcl:bert:packed")
    assert all(got[c.name].get("times") == [1.0] for c in cases if c.layout != "packed"
               or c.cache)  # the worker was restarted after the case it died in
    monkeypatch.delenv("DIE_IN")
    monkeypatch.setenv("DIE_AT_START", "1")
    got = run()
    assert all("exit status 2" in got[c.name]["error"] for c in cases)
    # Results of other settings are not mixed in.
    assert acc.collect(str(results), dataclasses.replace(acc.TINY, repeats=3)) == {}


def _fake(name: str, median: float, mfu: float, settings=acc.FULL) -> dict:
    peak = acc.encoder.PEAK_BF16_FLOPS["NVIDIA H200"]
    return dict(case=name, settings=dataclasses.asdict(settings), architecture="bert-base",
                device="NVIDIA H200", times=[median] * 3, batch=256, rows=256, seq=128,
                flops=mfu * peak * median, useful_flops=0.6 * mfu * peak * median,
                compile_s=1.0, first_loss=1.0, losses=[1.0], grad_norms=[2.0],
                real_tokens=[100], memory_gib=1.0)


def test_goals_are_judged_against_the_h200_figures():
    cases = {"jax:softmcl:bert:padded": _fake("jax:softmcl:bert:padded", 0.10, 0.46),
             "jax:softmcl:bert:packed": _fake("jax:softmcl:bert:packed", 0.08, 0.40),
             "jax:softmcl:deberta:padded": _fake("jax:softmcl:deberta:padded", 0.2, 0.30),
             "torch:softmcl:bert:compile": _fake("torch:softmcl:bert:compile", 0.12, 0.38),
             "torch:softmcl:bert:eager": dict(case="torch:softmcl:bert:eager",
                                              architecture="bert-base",
                                              error="RuntimeError: CUDA out of memory")}
    doc = acc.document(cases, acc.FULL, "python benchmarks/accelerator.py")
    title, body = acc.section(doc)
    assert title == "Accelerator check: NVIDIA H200 (benchmarks/accelerator.py)"
    for line in ("* BERT-base SoftMCL step MFU, padded: 46.0% (met); goal >= 45%",
                 "* BERT-base SoftMCL step MFU, packed: 40.0% (missed); goal >= 45%",
                 "* BERT-base SoftMCL step vs torch.compile, padded: 1.20x (missed); goal >= 1.3x",
                 "* BERT-base SoftMCL step vs torch.compile, packed: 1.50x (met); goal >= 1.3x",
                 "* DeBERTa-v3-base SoftMCL step MFU, padded: 30.0% (missed); goal >= 35%",
                 "* DeBERTa-v3-base SoftMCL step MFU, packed: n/a; goal >= 35%",
                 "| torch:softmcl:bert:eager | bert-base | | | failed: RuntimeError: CUDA out "
                 "of memory",
                 "MFU against the 989 TFLOP/s dense bf16 peak."):
        assert line in body, (line, body)
    assert doc["checks"]["compile_vs_eager"] == {}  # eager failed: nothing to compare


def test_the_torch_steps_options_keep_the_step(tmp_path):
    """What the PyTorch cases switch on: MLM logits at the scored positions only give the loss
    and gradients of logits everywhere; bf16 autocast runs the encoder in bf16 (its hidden
    states move by bf16 rounding) and keeps the step (the loss within that rounding)."""
    import step_mfu
    import torch

    from baselines.torch_train import TorchTrainer

    path = acc.encoder.random_checkpoint("tiny-bert", str(tmp_path / "model"),
                                         hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0)

    def trainer(dtype: str, **kw) -> tuple[TorchTrainer, dict]:
        config = step_mfu.step_config(acc.config_file("softmcl"), path, batch=8, seq=32,
                                      dtype=dtype)
        # Same seed: the same torch-drawn MLM head and heads in every trainer.
        return TorchTrainer(config, path, **kw), step_mfu.synthetic_batch(config, 2000, 0)

    (t_full, batch), (t_at, _) = trainer("float32"), trainer("float32", mlm_at_targets=True)
    t_bf16, _ = trainer("bfloat16", mlm_at_targets=True)
    ids, mask = (torch.as_tensor(batch[k]).long() for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        h32, h16 = (t.encode(t.online, ids, mask, mlm=False)[0] for t in (t_at, t_bf16))
    moved = float((h16.float() - h32).norm() / h32.norm())
    full, at, bf16 = (t.step(batch) for t in (t_full, t_at, t_bf16))
    print(f"\nbf16 hidden states vs fp32: {moved:.1e}; loss {bf16['loss']} vs {at['loss']}")
    assert 5e-5 < moved < 3e-2  # fp32 rounding alone is ~1e-7
    for key in ("loss/mlm", "loss", "grad_norm"):
        assert at[key] == pytest.approx(full[key], rel=1e-6), key
        assert bf16[key] == pytest.approx(at[key], rel=2e-2), key
