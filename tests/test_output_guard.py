"""Outputs are written atomically and never over what is not theirs (issue 25, items 4, 7, 8, 9,
11, 12): the export refuses a user's folder and a training workdir, replaces only an earlier export
of the same run, leaves nothing half-written; the model card is updated under a lock by a rename;
read-only folders, missing steps and truncated weights end in one line (or, for the card, one
warning). Each case runs the real command and hashes what the user had before and after.

Read-only folders: as a normal user they are made with ``chmod``. Root writes through ``chmod``,
so there the command runs under ``_READ_ONLY_SIM``, which denies writes below the named folders
where the Python code writes (``open``, ``os.open``, ``os.mkdir``, renames, ``os.access``), as the
kernel would for another user.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import huggingface_hub
import pytest

from softmcl_jax import export, export_format, model_card
from softmcl_jax.export_format import OWNER_FILE, ExportError, check_out, write_export
from tests import train_utils as tu
from tests.train_utils import one_line_error, run_command, tree_hashes

ROOT = os.geteuid() == 0

_READ_ONLY_SIM = r"""
import builtins, errno, os, runpy, sys
_RO = [os.path.realpath(p) for p in os.environ["SIM_READ_ONLY"].split(os.pathsep)]
def _ro(path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:
        return False
    return any(p == r or p.startswith(r + os.sep) for r in _RO)
def _deny(path):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
_open, _os_open, _mkdir, _replace, _rename, _access = (
    builtins.open, os.open, os.mkdir, os.replace, os.rename, os.access)
def _open_(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and _ro(file):
        _deny(file)
    return _open(file, mode, *a, **k)
def _os_open_(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _ro(path):
        _deny(path)
    return _os_open(path, flags, *a, **k)
def _mkdir_(path, *a, **k):
    if _ro(path) and not os.path.exists(path):
        _deny(path)
    return _mkdir(path, *a, **k)
def _move(real):
    def move(src, dst, *a, **k):
        for p in (src, dst):
            if _ro(p):
                _deny(p)
        return real(src, dst, *a, **k)
    return move
def _access_(path, mode, *a, **k):
    return False if mode & os.W_OK and _ro(path) else _access(path, mode, *a, **k)
builtins.open, os.open, os.mkdir, os.access = _open_, _os_open_, _mkdir_, _access_
os.replace, os.rename = _move(_replace), _move(_rename)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_module(module: str, args: list[str], read_only: list[str] = ()
               ) -> subprocess.CompletedProcess:
    """``python -m module args`` with the folders ``read_only`` unwritable."""
    if not read_only:
        return run_command([sys.executable, "-m", module, *args])
    if ROOT:
        os.environ["SIM_READ_ONLY"] = os.pathsep.join(read_only)  # run_command's env copies it
        try:
            return run_command([sys.executable, "-c", _READ_ONLY_SIM, module, *args])
        finally:
            del os.environ["SIM_READ_ONLY"]
    modes = {}
    for top in read_only:
        for where, _, files in os.walk(top):
            for p in [where] + [os.path.join(where, n) for n in files]:
                modes[p] = os.stat(p).st_mode
                os.chmod(p, modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        return run_command([sys.executable, "-m", module, *args])
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)


@pytest.fixture
def run(tiny_run, tmp_path) -> str:
    """A copy of the shared tiny run (checkpoints 2 and 3, export/), to change."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], workdir)
    return workdir


def exported(*args: str) -> subprocess.CompletedProcess:
    return run_module("softmcl_jax.export", list(args))


def leftovers(out: str) -> list[str]:
    """Temporary or set-aside siblings of ``out`` that an export left behind."""
    parent, name = os.path.split(os.path.abspath(out))
    return [n for n in os.listdir(parent) if n.startswith(name + ".")]


# ------------------------------------------------------------------------- 4: the export


@pytest.mark.slow
def test_export_refuses_a_users_folder_and_a_workdir_and_replaces_its_own(run, tiny_run,
                                                                           tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    (mine / "config.json").write_text('{"mine": true}\n')
    (mine / "notes.txt").write_text("keep me\n")
    before, run_before = tree_hashes(str(mine)), tree_hashes(run)

    line = one_line_error(exported(f"--workdir={run}", f"--out={mine}"))
    assert f"{mine} is not empty and is not an earlier export of this run" in line
    assert "README.md, config.json, notes.txt" in line and "--overwrite" in line
    assert tree_hashes(str(mine)) == before and not leftovers(str(mine))

    # --out=WORKDIR, the easy slip: refused, even with --overwrite; the run is untouched.
    line = one_line_error(exported(f"--workdir={run}", f"--out={run}", "--overwrite"))
    assert f"{run} is or holds the workdir of the run being exported" in line
    assert "refused even with --overwrite" in line and f"{run}/export" in line
    assert tree_hashes(run) == run_before and not leftovers(run)

    # --overwrite replaces the user's folder with the export, whole.
    proc = exported(f"--workdir={run}", f"--out={mine}", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (mine / "notes.txt").exists() and not leftovers(str(mine))
    assert (mine / "model.safetensors").is_file()
    assert model_card.EVAL_START in (mine / "README.md").read_text()
    owner = json.loads((mine / OWNER_FILE).read_text())
    assert owner["workdir"] == os.path.realpath(run) and owner["step"] == 3

    # The run goes on: resumed to step 4, its end-of-run export replaces its earlier export/.
    tu.run_main_fast("simcse.py", run, tiny_run[1], **dict(tu.TINY_RUN, total_steps=4))
    assert json.loads(open(f"{run}/export/{OWNER_FILE}").read())["step"] == 4
    assert not leftovers(f"{run}/export")
    # And the export CLI writes over its own earlier exports: export/ and the folder above.
    for out in (f"{run}/export", str(mine)):
        proc = exported(f"--workdir={run}", f"--out={out}", "--step=2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(open(f"{out}/{OWNER_FILE}").read())["step"] == 2
        assert not leftovers(out)


def _config(**fields):
    return tu.load_config("simcse", **{"model.name_or_path": "tiny", **fields}).to_dict()


def test_check_out_rules(tmp_path):
    """Which folders an export may replace (in-process: the rules behind the refusals)."""
    wd = tmp_path / "wd"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps(_config()))
    cfg = _config()
    check_out(str(tmp_path / "new"), cfg, workdir=str(wd))  # nothing there
    (tmp_path / "empty").mkdir()
    check_out(str(tmp_path / "empty"), cfg, workdir=str(wd))
    check_out(str(wd / "hf"), cfg, workdir=str(wd))  # a new folder inside the run is fine
    for out in (wd, tmp_path, wd / "checkpoints", wd / "checkpoints" / "3"):
        with pytest.raises(ExportError, match="refused even with --overwrite"):
            check_out(str(out), cfg, workdir=str(wd), overwrite=True)
    # Another run's workdir, known by any of its files.
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ExportError, match=r"training workdir \(metrics.jsonl\)"):
        check_out(str(other), cfg, workdir=str(wd), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        check_out(str(tmp_path / "file"), cfg, workdir=str(wd))

    # An export's owner file: the same run (a resume may change total_steps), else refused.
    ours = tmp_path / "ours"
    ours.mkdir()
    owner = {"workdir": os.path.realpath(wd), "step": 3, "config": cfg}
    (ours / OWNER_FILE).write_text(json.dumps(owner))
    check_out(str(ours), _config(total_steps=99), workdir=str(wd))
    with pytest.raises(ExportError, match=r"another run .*batch_size: \d+ -> 16"):
        check_out(str(ours), _config(batch_size=16), workdir=str(wd))
    (ours / OWNER_FILE).write_text(json.dumps(dict(owner, workdir="/elsewhere")))
    with pytest.raises(ExportError, match="an export of the run in /elsewhere"):
        check_out(str(ours), cfg, workdir=str(wd))
    check_out(str(ours), cfg, workdir=str(wd), overwrite=True)
    # ... but a workdir's own export/ stays its own when the workdir has moved.
    shutil.copytree(ours, wd / "export")
    check_out(str(wd / "export"), cfg, workdir=str(wd))
    check_out(str(wd / "export"), cfg)  # as the trainer calls it: the workdir above export/
    # An export/ from before owner files: ours when it holds our card, and only in its workdir.
    legacy = wd / "export"
    (legacy / OWNER_FILE).unlink()
    (legacy / "config.json").write_text("{}")
    (legacy / "README.md").write_text(model_card.render(cfg))
    check_out(str(legacy), cfg)
    shutil.copytree(legacy, tmp_path / "legacy")
    with pytest.raises(ExportError, match="not an earlier export"):
        check_out(str(tmp_path / "legacy"), cfg, workdir=str(wd))


class _Pretrained:
    """Enough of a model for write_export up to save_pretrained, which the tests replace."""

    class config:  # noqa: N801 -- stands in for a transformers config
        hidden_size = 4


def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    cfg = _config()
    out = tmp_path / "out"

    def save(pretrained, params, folder, **_):
        with open(os.path.join(folder, "model.safetensors"), "w") as f:
            f.write(params)
        return folder

    monkeypatch.setattr(export_format, "save_pretrained", save)
    write_export(_Pretrained, "first", str(out), cfg, {"steps": 2})
    before = tree_hashes(str(out))
    assert (out / "model.safetensors").read_text() == "first" and before[OWNER_FILE]

    def half(pretrained, params, folder, **_):
        save(pretrained, params, folder)
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, "x"))

    monkeypatch.setattr(export_format, "save_pretrained", half)
    with pytest.raises(ExportError, match=f"cannot write {out}: No space left on device"):
        write_export(_Pretrained, "second", str(out), cfg, {"steps": 3})
    assert tree_hashes(str(out)) == before and not leftovers(str(out))

    # Permission denied on the temporary sibling (a read-only parent, as root sees it too).
    monkeypatch.setattr(export_format, "save_pretrained", save)
    real_mkdir = os.mkdir

    def denied(path, *a, **k):
        if ".tmp-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", denied)
    with pytest.raises(ExportError, match=f"^cannot write {out}: Permission denied$"):
        write_export(_Pretrained, "second", str(out), cfg, {"steps": 3})
    assert tree_hashes(str(out)) == before and not leftovers(str(out))
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    # A killed export's temporary folder (its PID gone) is removed by the next one.
    stale = tmp_path / "out.tmp-999999999"
    stale.mkdir()
    (stale / OWNER_FILE).write_text("{}")
    write_export(_Pretrained, "second", str(out), cfg, {"steps": 3})
    assert (out / "model.safetensors").read_text() == "second" and not leftovers(str(out))


# ----------------------------------------------------- 9, 11: read-only, a missing step


@pytest.mark.slow
def test_export_into_a_read_only_folder_and_a_missing_step(run, tmp_path):
    parent = tmp_path / "shelf"
    parent.mkdir()
    (parent / "other.txt").write_text("x")
    before, run_before = tree_hashes(str(parent)), tree_hashes(run)
    out = parent / "model"
    line = one_line_error(run_module("softmcl_jax.export", [f"--workdir={run}", f"--out={out}"],
                                     read_only=[str(parent)]))
    assert line == (f"python -m softmcl_jax.export: error: cannot write {out}: Permission "
                    f"denied (its folder {parent} is read-only)")
    assert tree_hashes(str(parent)) == before

    line = one_line_error(exported(f"--workdir={run}", f"--out={out}", "--step=99"))
    assert line == (f"python -m softmcl_jax.export: error: {run}/checkpoints: no checkpoint of "
                    "step 99 to export; the steps there are 2, 3")
    assert tree_hashes(run) == run_before and not out.exists()


def test_a_workdir_without_checkpoints_says_so(tiny_run, tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(f"{run}/checkpoints")
    shutil.copy(f"{tiny_run[0]}/config.json", run)
    with pytest.raises(SystemExit) as info:
        export.main([f"--workdir={run}", f"--out={tmp_path / 'out'}"])
    assert info.value.code == (f"python -m softmcl_jax.export: error: {run}/checkpoints: no "
                               "checkpoint to export; it holds no checkpoint")
    shutil.rmtree(f"{run}/checkpoints")
    with pytest.raises(SystemExit, match="no checkpoint directory, so nothing to export"):
        export.main([f"--workdir={run}", f"--out={tmp_path / 'out'}"])
    assert not os.path.exists(f"{run}/checkpoints")  # not created by looking
    with pytest.raises(SystemExit, match=r"config.json: missing; is .* a softmcl_jax workdir"):
        export.main([f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- 7: the card under a lock

_WRITER = r"""
import os, sys, time
from softmcl_jax import model_card
folder, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(os.path.join(folder, "..", f"ready-{name}"), "w").close()
while not os.path.exists(os.path.join(folder, "..", "go")):  # both start together
    time.sleep(0.001)
for i in range(rounds):
    rows = "\n".join(f"| {name} | {i} | {j} |" for j in range(200))
    assert model_card.set_evaluation(folder, f"| who | round | row |\n|---|---|---|\n{rows}")
"""
ROUNDS = 150


def _one_whole_table(text: str) -> tuple[str, str]:
    """The card's (writer, round); fails unless its table is one writer's, whole."""
    assert text.count(model_card.EVAL_START) == 1 and text.count(model_card.EVAL_END) == 1
    table = text.split(model_card.EVAL_START)[1].split(model_card.EVAL_END)[0]
    rows = table.strip().splitlines()[2:]
    assert len(rows) == 200, len(rows)
    cells = {tuple(r.split(" | ")[:2]) for r in rows}
    assert len(cells) == 1, sorted(cells)[:3]
    return next(iter(cells))


def test_concurrent_card_writers_leave_one_whole_table(tmp_path):
    """Two processes update the card at once, 150 times each, while this one reads it: every
    read is a whole card holding one writer's whole table, and so is the end."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "README.md").write_text(model_card.render(_config()))
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), name, str(ROUNDS)],
                                env=tu.env(), cwd=tu.ROOT, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    while not all((tmp_path / f"ready-{n}").exists() for n in "ab"):
        assert all(w.poll() is None for w in writers), writers[0].stderr.read()[-2000:]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    seen = set()
    while any(w.poll() is None for w in writers):
        text = (folder / "README.md").read_text()
        if "Not evaluated yet" not in text:
            seen.add(_one_whole_table(text))
    for w in writers:
        assert w.wait() == 0, w.stderr.read()[-2000:]
    text = (folder / "README.md").read_text()
    assert _one_whole_table(text)[1] == str(ROUNDS - 1)
    assert {who for who, _ in seen} == {"| a", "| b"}, seen  # the two did overlap
    assert huggingface_hub.ModelCard(text).data.to_dict()["library_name"] == \
        "sentence-transformers"
    assert sorted(os.listdir(folder)) == [model_card.LOCK_FILE, "README.md"]  # no temporaries


def test_threads_of_one_process_take_turns_too(tmp_path):
    """flock is per open file, and each thread writes its own temporary file."""
    (tmp_path / "README.md").write_text(model_card.render(_config()))
    errors = []

    def write(name: str) -> None:
        try:
            for i in range(30):
                rows = "\n".join(f"| {name} | {i} | {j} |" for j in range(200))
                model_card.set_evaluation(str(tmp_path), f"| a | b | c |\n|---|---|---|\n{rows}")
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _one_whole_table((tmp_path / "README.md").read_text())[1] == "29"
    assert sorted(os.listdir(tmp_path)) == [model_card.LOCK_FILE, "README.md"]


# --------------------------------------------- 8, 12: evaluate on a read-only or broken export


def _data(tmp_path) -> str:
    from tests.test_evaluate_suite import make_data

    return make_data(str(tmp_path / "data"), with_test=False, n=24)


EVAL_ARGS = ["--tasks=sst2", "--max_examples=24", "--no_progress"]


@pytest.mark.slow
def test_evaluate_on_a_read_only_export_warns_once_and_succeeds(run, tmp_path):
    export_dir = f"{run}/export"
    before = tree_hashes(export_dir)
    out = tmp_path / "results.json"
    proc = run_module("softmcl_jax.evaluate",
                      [f"--checkpoint={export_dir}", f"--data_dir={_data(tmp_path)}",
                       f"--output={out}", *EVAL_ARGS], read_only=[export_dir])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    n = json.loads(out.read_text())["sst2"]["n"]
    assert f"| sst2 | dev | {n} |" in proc.stdout
    warned = [line for line in proc.stderr.splitlines() if "model card" in line]
    assert len(warned) == 1, proc.stderr[-3000:]
    assert warned[0].startswith("WARNING ") and (
        f"the model card {export_dir}/README.md was not updated: Permission denied" in warned[0])
    assert tree_hashes(export_dir) == before


@pytest.mark.slow
def test_evaluate_on_a_truncated_export_says_to_export_again(run, tiny_run, tmp_path):
    weights = f"{run}/export/model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    out = tmp_path / "results.json"
    line = one_line_error(run_module(
        "softmcl_jax.evaluate", [f"--checkpoint={run}", f"--data_dir={_data(tmp_path)}",
                                 f"--output={out}", *EVAL_ARGS]))
    # The owner file names the run the export came from (the fixture's, copied here).
    assert line == (f"python -m softmcl_jax.evaluate: error: {weights}: unreadable safetensors "
                    "file (Error while deserializing header: incomplete metadata, file not fully "
                    f"covered); export it again: python -m softmcl_jax.export "
                    f"--workdir={os.path.realpath(tiny_run[0])} --out={run}/export")
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_errors_are_one_line(tmp_path, tiny_model, capsys):
    from softmcl_jax import evaluate

    data = _data(tmp_path)
    with pytest.raises(SystemExit) as info:
        evaluate.main([f"--checkpoint={tmp_path / 'missing'}", f"--data_dir={data}"])
    assert info.value.code == (f"python -m softmcl_jax.evaluate: error: {tmp_path / 'missing'}: "
                               "no such checkpoint folder")
    with pytest.raises(SystemExit, match="cannot write --output=.*: its folder .* is missing"):
        evaluate.main([f"--checkpoint={tiny_model}", f"--data_dir={data}",
                       f"--output={tmp_path / 'no' / 'r.json'}"])
    # A named task whose files are missing: main raises, the command prints one line.
    shutil.rmtree(os.path.join(data, "emobank"), ignore_errors=True)
    proc = run_module("softmcl_jax.evaluate", [f"--checkpoint={tiny_model}", f"--data_dir={data}",
                                               "--tasks=emobank", "--no_progress"])
    assert "emobank" in one_line_error(proc)
    # A card that is not ours gets no lock file and no table.
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "README.md").write_text("# theirs\n")
    assert not model_card.set_evaluation(str(folder), "| x |")
    assert os.listdir(folder) == ["README.md"]
    capsys.readouterr()


def test_evaluate_refuses_max_len_past_the_position_table(tmp_path, tiny_model):
    from softmcl_jax import evaluate

    # The tiny BERT's table holds 64 positions: 65 would run off it inside the first batch.
    with pytest.raises(SystemExit, match=r"--max_len=65: 65 tokens, but the encoder's position "
                                         r"table holds 64"):
        evaluate.main([f"--checkpoint={tiny_model}", f"--data_dir={_data(tmp_path)}",
                       "--max_len=65"])
