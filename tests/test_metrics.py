"""softmcl_jax.metrics: JSON-lines log, resume truncation, TensorBoard events, progress output."""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import struct
import sys

import numpy as np
import pytest

from softmcl_jax import metrics
from softmcl_jax.metrics import MetricWriter, ProgressBar, read_metrics


def event_files(tb_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")), key=os.path.getmtime)


def read_events(paths: list[str]) -> list:
    """Every Event in the event files ``paths`` (TFRecord framing, read by hand so the test needs
    neither tensorflow nor tensorboard)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            pos += 12  # length, its masked crc32c
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos:pos + length])
            events.append(ev)
            pos += length + 4  # payload, its crc
    return events


def scalars_in(events: list) -> list[tuple[int, str, float]]:
    return [(ev.step, v.tag, v.simple_value) for ev in events if ev.HasField("summary")
            for v in ev.summary.value]


def test_jsonl_round_trip(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as w:
        w.write(0, {"loss": 1.5, "lr": np.float32(1e-5), "tokens": np.int64(4096)})
        w.write(1, {"loss": float("nan"), "acc": np.array(0.25)})
        # Lines are flushed as written: readable before close.
        assert [r["step"] for r in read_metrics(str(tmp_path))] == [0, 1]
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert rows[0] == {"step": 0, "loss": 1.5, "lr": pytest.approx(1e-5), "tokens": 4096}
    assert isinstance(rows[0]["tokens"], int)
    assert math.isnan(rows[1]["loss"]) and rows[1]["acc"] == 0.25
    with pytest.raises(ValueError, match="reserved"):
        MetricWriter(str(tmp_path), tensorboard=False).write(2, {"step": 3})
    with pytest.raises(ValueError, match="not a scalar"):
        MetricWriter(str(tmp_path), tensorboard=False).write(2, {"v": np.zeros(3)})


def test_resume_truncation_equals_uninterrupted_run(tmp_path):
    def log_steps(w, steps):
        for s in steps:
            w.write(s, {"loss": 1.0 / (s + 1)})

    with MetricWriter(str(tmp_path / "full"), tensorboard=False) as w:
        log_steps(w, range(10))

    # Crash after logging step 6 (and half of step 7); resume from the checkpoint at step 4.
    run = tmp_path / "resumed"
    with MetricWriter(str(run), tensorboard=False) as w:
        log_steps(w, range(7))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    assert [r["step"] for r in read_metrics(str(run))] == list(range(7))  # torn line skipped
    with MetricWriter(str(run), tensorboard=False) as w:
        assert w.truncate_after(4) == 4  # steps 4, 5, 6 and the torn line
        log_steps(w, range(4, 10))

    full = (tmp_path / "full" / "metrics.jsonl").read_bytes()
    assert (run / "metrics.jsonl").read_bytes() == full
    assert MetricWriter(str(tmp_path / "new"), tensorboard=False).truncate_after(0) == 0


def test_malformed_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(str(path))


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboardX")
    with MetricWriter(str(tmp_path)) as w:
        assert w.tensorboard
        for s in range(3):
            w.write(s, {"loss": 0.5 * s, "lr": 0.125})
    events = read_events(event_files(str(tmp_path / "tb")))
    got = scalars_in(events)
    assert (2, "loss", 1.0) in got and (0, "lr", 0.125) in got and len(got) == 6

    # Resume at step 1: the new file starts with a purge marker at step 1 (TensorBoard then hides
    # the old file's events at steps >= 1) and holds the re-logged steps.
    with MetricWriter(str(tmp_path)) as w:
        w.truncate_after(1)
        w.write(1, {"loss": 9.0})
    files = event_files(str(tmp_path / "tb"))
    assert len(files) == 2  # a reopened writer never overwrites the previous file
    assert scalars_in(read_events(files[:1])) == got
    new = read_events(files[1:])
    starts = [ev for ev in new if ev.HasField("session_log")]
    assert starts and starts[0].step == 1 and starts[0].session_log.status == 1  # START
    assert (1, "loss", 9.0) in scalars_in(new)


def test_tensorboard_does_not_import_torch():
    pytest.importorskip("tensorboardX")
    code = ("import sys; from softmcl_jax.metrics import _import_tensorboardx; "
            "assert _import_tensorboardx() is not None; assert 'torch' not in sys.modules; "
            "import importlib.util; print(importlib.util.find_spec('torch') is not None)")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]


def test_tensorboard_missing_is_reported(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics, "_import_tensorboardx", lambda: None)
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.metrics"):
        w = MetricWriter(str(tmp_path))
    assert not w.tensorboard and "tensorboardX is not installed" in caplog.text
    w.write(0, {"loss": 1.0})
    w.close()
    assert read_metrics(str(tmp_path)) == [{"step": 0, "loss": 1.0}]
    assert not os.path.exists(tmp_path / "tb")


def test_inactive_writer_writes_nothing(tmp_path):
    w = MetricWriter(str(tmp_path / "x"), active=False)
    w.write(0, {"loss": 1.0})
    assert w.truncate_after(0) == 0
    w.close()
    assert not os.path.exists(tmp_path / "x")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logs_lines_when_not_a_tty(caplog):
    with caplog.at_level(logging.INFO, logger="softmcl_jax.metrics"):
        with ProgressBar(10, initial=2, log_every=3, stream=io.StringIO()) as bar:
            for s in range(3, 11):
                bar.update(s, {"loss": 0.123456})
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split()[1] for ln in lines] == ["5/10", "8/10", "10/10"]
    assert "loss=0.1235" in lines[0] and "step/s" in lines[0] and "ETA" in lines[0]


def test_progress_tqdm_on_a_tty():
    out = _Tty()
    with ProgressBar(5, stream=out) as bar:
        for s in range(1, 6):
            bar.update(s, {"loss": 2.0})
    text = out.getvalue()
    assert "5/5" in text and "loss=2" in text


def test_metrics_file_is_json_lines(tmp_path):
    with MetricWriter(str(tmp_path), tensorboard=False) as w:
        w.write(3, {"a": 1})
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line) == {"step": 3, "a": 1}
