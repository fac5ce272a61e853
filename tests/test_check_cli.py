"""python -m softmcl_jax.data.check: every bad row is listed as PATH:LINE: what, and the exit
status says whether every row was good."""

from __future__ import annotations

import subprocess
import sys

import pytest

from softmcl_jax.data import check
from tests.train_utils import ROOT, env

HEADER = "id,split,V,A,D,text\n"
GOOD = [
    'a,train,3.0,3.0,3.0,"fine text"\n',
    'b,train,4.5,2.0,3.0,"fine, with a comma"\n',
    'c,dev,1.5,3.0,3.0,"ok"\n',
    'd,test,3.0,3.0,3.0,"ok again"\n',
    'e,train,2.0,3.0,3.0,"good"\n',
    'f,dev,2.5,3.0,3.0,"still good"\n',
]
# Rows by the file line they are on (line 1 is the header).
BAD = {
    4: ('x,train,9.0,3.0,3.0,"valence off the scale"\n', "valence 9.0 is outside"),
    7: ('y,nosplit,3.0,3.0,3.0,"a bad split"\n', "unknown split 'nosplit'"),
    9: ('z,dev,3.0,3.0,3.0,""\n', "empty text"),
}


def _emobank(path, bad: bool):
    """Nine rows on lines 2..10; with ``bad`` those on lines 4, 7 and 9 are bad."""
    rows, good = [HEADER], iter(GOOD)
    for line in range(2, 11):
        if bad and line in BAD:
            rows.append(BAD[line][0])
        else:
            rows.append(next(good, f'g{line},train,3.0,3.0,3.0,"more"\n'))
    path.write_text("".join(rows))
    return path


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softmcl_jax.data.check", *args], env=env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_bad_row_is_listed_and_the_exit_status_is_1(tmp_path):
    path = _emobank(tmp_path / "bad.csv", bad=True)
    proc = _check("--format=emobank", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    listed = [line for line in lines if line.startswith(f"{path}:")]
    assert len(listed) == 3, proc.stdout
    for got, (number, (_, what)) in zip(listed, sorted(BAD.items()), strict=True):
        assert got.startswith(f"{path}:{number}: ") and what in got, got
    assert "  records: 6" in lines and "  skipped bad rows: 3" in lines


def test_a_good_file_exits_0(tmp_path):
    path = _emobank(tmp_path / "good.csv", bad=False)
    proc = _check("--format=emobank", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{path}:" not in proc.stdout  # no bad row listed
    assert "  records: 9" in proc.stdout and "  skipped bad rows: 0" in proc.stdout


def test_raise_stops_at_the_first_bad_row(tmp_path, capsys):
    path = _emobank(tmp_path / "bad.csv", bad=True)
    assert check.main(["--format=emobank", "--on_bad_row=raise", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:4: valence 9.0 is outside" in out and "stopped at the first bad row" in out
    assert f"{path}:7:" not in out and f"{path}:9:" not in out


def test_several_files_exit_1_if_any_row_is_bad(tmp_path, capsys):
    good = _emobank(tmp_path / "good.csv", bad=False)
    bad = _emobank(tmp_path / "bad.csv", bad=True)
    assert check.main(["--format=emobank", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert [line.split(":")[1] for line in out.splitlines()
            if line.startswith(f"{bad}:")] == ["4", "7", "9"]
    assert check.main(["--format=emobank", str(good), str(good)]) == 0


def test_a_file_level_problem_is_not_called_a_bad_row(tmp_path, capsys):
    path = tmp_path / "noheader.csv"
    path.write_text("id,split,A,D,text\na,train,3.0,3.0,ok\n")  # no V column
    for policy in ("skip", "raise"):
        assert check.main(["--format=emobank", f"--on_bad_row={policy}", str(path)]) == 1
        out = capsys.readouterr().out
        assert f"{path}:" in out and "stopped at the first bad row" not in out


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_missing_file(tmp_path, capsys, policy):
    assert check.main(["--format=emobank", f"--on_bad_row={policy}",
                       str(tmp_path / "missing.csv")]) == 1
    assert "cannot read" in capsys.readouterr().out
