"""benchmarks/compare_st.py, scaling.py and run.py keep working: they run end to end at the
tiniest sizes (a random 2-layer BERT, batch 8 or 4, max_len 32 or 16, 1 or 2 timed steps), print
their tables and, for scaling.py, write the figure; BENCHMARKS.md is never written
(``--no_write``). Their workers' one-line protocol (workers.py) is checked on its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import train_utils as tu

BENCH = os.path.join(tu.ROOT, "benchmarks")
sys.path.insert(0, BENCH)
import compare_st  # noqa: E402
import scaling  # noqa: E402
import workers  # noqa: E402

TINY = ["--batch", "8", "--seq", "32", "--repeats", "2", "--sentences", "64"]


def _env() -> dict[str, str]:
    e = tu.env()
    # Faster XLA compiles: these tests check that the scripts run, not what they measure.
    e["XLA_FLAGS"] += (" --xla_backend_optimization_level=0"
                       " --xla_llvm_disable_expensive_passes=true")
    return e


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tu.tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert")))


# ------------------------------------------------------------------------------ fast: pieces

def test_a_workers_result_line_comes_back_and_a_failure_names_the_worker():
    def run(code: str) -> dict:
        code = f"import sys; sys.path.insert(0, {BENCH!r}); from workers import emit; {code}"
        return workers.run_worker([sys.executable, "-c", code], dict(os.environ), "side x")

    assert run("print('noise'); emit({'a': [1, 2]})") == {"a": [1, 2]}
    with pytest.raises(RuntimeError, match=r"side x failed \(exit status 3\):\n.*boom"):
        run("emit({}); sys.stderr.write('boom'); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"side x failed \(no result line\)"):
        run("print('done')")
    assert workers.peak_rss_mib() > 1


def test_sides_and_their_groups():
    sides = compare_st.select_sides("jax:simcse:*,st:*,torch:lcl,jax:lcl:packed")
    assert sides == ["jax:simcse:unpacked", "jax:simcse:packed", "jax:simcse:packed-fixed",
                     "jax:simcse:bucketed", "jax:lcl:packed", "st:mnrl", "st:triplet",
                     "torch:lcl"]
    assert compare_st.groups(sides) == [
        ("simcse", ["st:mnrl", "jax:simcse:unpacked", "jax:simcse:packed",
                    "jax:simcse:packed-fixed", "jax:simcse:bucketed"]),
        ("lcl", ["st:triplet", "jax:lcl:packed", "torch:lcl"])]
    assert len(compare_st.select_sides("*")) == 5 * 4 + 2 + 5
    with pytest.raises(ValueError, match="matches none"):
        compare_st.select_sides("jax:nope:*")
    assert compare_st.buckets(64) == (16, 32, 48, 64)


def test_layouts_set_the_packing_fields():
    """Packing is the preset default, so the unpacked and bucketed sides must turn it off."""
    kw = dict(model="minilm", batch=8, seq=32, csv_path="x.csv")
    got = {lay: compare_st.config_for("simcse", layout=lay, **kw).data
           for lay in compare_st.LAYOUTS}
    assert [got[lay].packing for lay in compare_st.LAYOUTS] == [False, True, True, False]
    assert tuple(got["packed-fixed"].packing_quantiles) == (1.0,)
    assert len(got["packed"].packing_quantiles) > 1
    assert tuple(got["bucketed"].bucket_lengths) == compare_st.buckets(32)
    assert not got["packed"].bucket_lengths
    with pytest.raises(ValueError, match="unknown layout"):
        compare_st.config_for("simcse", layout="rolled", **kw)


def test_dynamic_padding_cuts_padding_only():
    import numpy as np

    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], np.int32)
    batch = {"input_ids": mask * 7, "attention_mask": mask, "labels": np.array([1, 2]),
             "sentence_valence": np.zeros((2, 6), np.float32)}
    out = compare_st.trim_to_longest(batch)
    assert out["input_ids"].shape == out["attention_mask"].shape == (2, 3)
    assert out["sentence_valence"].shape == (2, 6)  # not a token array: left alone
    assert compare_st.real_tokens(out) == (5, 6)


def test_queue_sizes_are_multiples_of_the_keys_per_step():
    config = tu.load_config("softmcl", batch_size=48)
    assert scaling.set_queues(config, 1000) == (1008, 1152)  # 48 and 48 x 4 keys per step
    assert scaling.set_queues(config, 0) == (0, 0)
    assert scaling.set_queues(tu.load_config("simcse"), 1024) is None
    assert scaling.loglog_slope([8, 16, 32], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert scaling.loglog_slope([0, 8], [1.0, 2.0]) is None


# --------------------------------------------------------------------- slow: the scripts run


@pytest.mark.slow
def test_compare_st_runs(model_dir, tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n")
    out = _run("compare_st.py", "--model", model_dir, *TINY, "--no_write",
               "--markdown", str(markdown),
               "--sides", "jax:simcse:packed,jax:lcl:bucketed,st:*,torch:lcl")
    assert "| method | side | padding | s/step (median) |" in out
    for row in ("| simcse | sentence-transformers MultipleNegativesRankingLoss |",
                "| simcse | ours (JAX) | packed,", "| lcl | ours (JAX) | buckets 8/16/24/32 |",
                "| lcl | sentence-transformers BatchAllTripletLoss |",
                "| lcl | our PyTorch baseline | dynamic"):
        assert row in out, out
    assert markdown.read_text() == "# Benchmarks\n"  # --no_write


@pytest.mark.slow
def test_scaling_runs(model_dir, tmp_path):
    png = tmp_path / "scaling.png"
    out = _run("scaling.py", "--model", model_dir, "--batches", "8", "--batch_methods",
               "simcse", "--seq", "32", "--queues", "0,32", "--queue_batch", "8",
               "--length_seq", "32", "--length_batch", "8", "--long_tokens", "24",
               "--repeats", "2", "--sentences", "64", "--png", str(png), "--no_write",
               "--markdown", str(tmp_path / "BENCHMARKS.md"))
    assert "| curve | method | batch |" in out
    for line in ("* **Batch, simcse, unpacked**", "* **Batch, simcse, packed**",
                 "* **Queue, softmcl, unpacked**", "* **Queue, softmcl, packed**",
                 "* **Length, simcse**", "| queue | softmcl | 8 | 32 | 32, 32 | sample | packed |",
                 "| length | simcse | 8 | 32 | - | reviews | packed |"):
        assert line in out, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "BENCHMARKS.md").exists()  # --no_write


def test_run_runs(model_dir):
    """benchmarks/run.py: the JAX and PyTorch steps of one method and the embedding timing."""
    out = _run("run.py", "--methods=simcse", "--batch=4", "--seq=16", "--repeats=1",
               "--eval_texts=8", f"--model={model_dir}", "--no_write")
    assert "| simcse |" in out and "PyTorch / JAX time" in out
