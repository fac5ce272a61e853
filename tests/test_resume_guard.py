"""Resume compares what the run computes from, not only its config (issue 25, items 1-3): the
probe split, the data files, the tokenizer, and where the checkpoints are.

The CLI tests each refuse one resume of a finished 3-step run and check that nothing the user
had changed (``tree_hashes`` before and after); the rest is the comparison itself, in process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import ml_collections
import pytest

from softmcl_jax import workdir as wd
from tests import train_utils as tu

# ------------------------------------------------------------------------ the comparison


def _manifest(path: str = "data/mut.csv", sha: str = "a" * 64, size: int = 2000,
              rows: int = 64, **over) -> dict:
    """The identity fields and counts of a manifest (prepare.manifest_of), for a CSV folder."""
    m = {
        "format": 1,
        "tokenizer": {"name_or_path": "minilm", "vocab_hash": "v" * 64, "pad_id": 0,
                      "size": 30522},
        "max_len": 32,
        "lexicon": {"name": "vader", "hash": "e" * 64, "words": "", "words_hash": None,
                    "affect": []},
        "assign": "first", "neutral_band": 0.05,
        "data": {"source": "csv", "path": path, "text_column": "text", "max_examples": 0,
                 "lexicon": "vader", "lexicon_words": ""},
        "source_files": [{"role": "data", "path": path, "bytes": size, "sha256": sha},
                         {"role": "lexicon",
                          "resource": "softmcl_jax.data/resources/vader_lexicon.txt"}],
        "held_out": None, "shard_rows": 262144, "rows": rows, "shards": [],
        "flags": {"valence": False},
    }
    m.update(over)
    return m


def _inputs(*manifests: dict, probe: dict | None = None, vocab: str = "v" * 64) -> dict:
    return wd.inputs_fingerprint(wd.tokenizer_fingerprint("minilm", vocab), probe,
                                 list(manifests) or [_manifest()])


def test_the_same_inputs_differ_in_nothing_wherever_the_files_lie():
    assert wd.input_differences(_inputs(), _inputs()) == []
    # The cache folder of a run moves with its files' mtimes, and a file may be read through
    # another path: the rows are made from the same bytes.
    moved = _manifest(path="/elsewhere/mut.csv")
    assert wd.input_differences(_inputs(), _inputs(moved)) == []
    # What a manifest holds beyond what its rows are made from (shards, statistics) is not it.
    assert wd.input_differences(_inputs(), _inputs(_manifest(shards=[{"file": "x"}]))) == []


def test_a_rewritten_data_file_is_named_with_its_hash_size_and_rows():
    new = _manifest(sha="b" * 64, size=1000, rows=32)
    assert wd.input_differences(_inputs(), _inputs(new)) == [
        f"data file data/mut.csv: sha256 {'a' * 12} (2000 bytes) -> sha256 {'b' * 12} "
        "(1000 bytes)",
        "data (csv data/mut.csv): rows 64 -> 32",
    ]


def test_files_read_no_more_or_newly_and_a_changed_lexicon_or_setting():
    stored = _manifest()
    new = _manifest(data={**stored["data"], "text_column": "body"})
    new["source_files"] = [{"role": "data", "path": "data/other.csv", "bytes": 5,
                            "sha256": "c" * 64}, stored["source_files"][1]]
    new["lexicon"] = {**stored["lexicon"], "hash": "f" * 64}
    assert wd.input_differences(_inputs(stored), _inputs(new)) == [
        f"data file data/mut.csv: sha256 {'a' * 12} (2000 bytes) -> not read now",
        f"data file data/other.csv: not read before -> sha256 {'c' * 12} (5 bytes)",
        f"data (csv data/mut.csv): lexicon.hash {'e' * 12} -> {'f' * 12}",
        'data (csv data/mut.csv): settings.text_column "text" -> "body"',
    ]


def test_the_tokenizer_and_the_probe_split_count_even_where_no_folder_records_them():
    probe = wd.probe_fingerprint(["a good day"], ["a bad day", "fine"])
    assert probe["texts"] == 3
    assert wd.probe_fingerprint(["a good day"], ["a bad day", "fine!"]) != probe
    diff = wd.input_differences(_inputs(), _inputs(probe=probe, vocab="w" * 64))
    assert diff == [
        f"tokenizer: minilm (vocabulary sha256 {'v' * 12}) -> minilm (vocabulary sha256 "
        f"{'w' * 12})",
        f"the probe's held-out VADER texts: none (probe off) -> 3 texts, sha256 "
        f"{probe['sha256'][:12]}",
    ]
    # A mixture's folders are compared in the run's order, each named by what it was made of.
    two = _inputs(_manifest(), _manifest(path="b.csv", sha="d" * 64))
    changed = _inputs(_manifest(), _manifest(path="b.csv", sha="d" * 64, rows=9))
    assert wd.input_differences(two, changed) == [
        "data source 2 of 2 (csv b.csv): rows 64 -> 9"]


def test_check_inputs_refuses_on_resume_only_and_warns_once_for_an_old_workdir(tmp_path,
                                                                               caplog):
    workdir = str(tmp_path)
    stored, new = _inputs(), _inputs(_manifest(sha="b" * 64, rows=32))
    # A workdir without progress may start over on other data; nothing is compared.
    wd.check_inputs(new, workdir, resuming=False)
    # A run from before inputs.json: one warning, and the run goes on.
    (tmp_path / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="softmcl_jax.workdir"):
        wd.check_inputs(new, workdir, resuming=True)
    assert [r.getMessage() for r in caplog.records if "could not be compared" in
            r.getMessage()] == [f"{workdir}: no inputs.json (the run started before inputs were "
                                "recorded): its data files, tokenizer and probe split could not "
                                "be compared with this run's; they are recorded now and compared "
                                "from the next resume on"]
    wd.write_inputs(stored, workdir)
    assert sorted(os.listdir(workdir)) == ["config.json", "inputs.json"]  # no temporary left
    assert json.load(open(tmp_path / "inputs.json")) == stored
    wd.check_inputs(stored, workdir, resuming=True)
    with pytest.raises(wd.ConfigMismatch) as e:
        wd.check_inputs(new, workdir, resuming=True)
    assert str(e.value).startswith(f"{workdir} holds a run trained on other inputs")
    assert "data (csv data/mut.csv): rows 64 -> 32" in str(e.value)
    (tmp_path / "inputs.json").write_text("{")
    with pytest.raises(wd.ConfigMismatch, match="inputs.json: unreadable"):
        wd.check_inputs(stored, workdir, resuming=True)


def test_probe_fields_that_choose_the_held_out_sentences_may_not_change():
    base = {"probe": {"enabled": False, "n_train": 2000, "n_test": 1000, "seed": 0,
                      "batch_size": 64}}
    changed = {"probe": {"enabled": True, "n_train": 100, "n_test": 50, "seed": 1,
                         "batch_size": 8}}
    assert wd.config_differences(base, changed) == [
        "probe.enabled: false -> true", "probe.n_test: 1000 -> 50",
        "probe.n_train: 2000 -> 100", "probe.seed: 0 -> 1"]


def _config(checkpoint_dir: str = "") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"checkpoint_dir": checkpoint_dir})


def test_a_checkpoint_dir_away_from_the_runs_progress_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    os.makedirs(os.path.join(workdir, "checkpoints", "3"))
    os.makedirs(os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp-1"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"checkpoint_dir": ""}, f)
    elsewhere = str(tmp_path / "elsewhere")
    wd.check_checkpoint_dir(_config(), workdir)  # the same folder
    with pytest.raises(wd.ConfigMismatch) as e:
        wd.check_checkpoint_dir(_config(elsewhere), workdir)
    old = os.path.join(workdir, "checkpoints")
    assert str(e.value) == (
        f"{workdir}: config.checkpoint_dir is now {elsewhere}, which holds no checkpoint, but "
        f"the run in this workdir checkpointed to {old}: {old} holds checkpoint(s) 2, 3. "
        "Resuming would start again from step 0 and rewrite the metrics. Move the checkpoints "
        f"into {elsewhere}, or resume with no --config.checkpoint_dir, or train in another "
        "--workdir")
    # Metrics alone are progress too (the checkpoints were deleted, or never landed).
    shutil.rmtree(old)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)))
        f.write('{"step": 8, "lo')  # torn by a crash
    with pytest.raises(wd.ConfigMismatch, match=r"metrics.jsonl has steps 1\.\.7\. Resuming"):
        wd.check_checkpoint_dir(_config(elsewhere), workdir)
    # The user moved the checkpoints: the new folder holds them, the run resumes from there.
    os.makedirs(os.path.join(elsewhere, "3"))
    wd.check_checkpoint_dir(_config(elsewhere), workdir)
    assert wd.has_progress(workdir, elsewhere) and wd.checkpoint_steps(elsewhere) == [3]
    # And back: the stored folder is named in the way back.
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"checkpoint_dir": elsewhere}, f)
    with pytest.raises(wd.ConfigMismatch, match=f"resume with --config.checkpoint_dir={elsewhere}"):
        wd.check_checkpoint_dir(_config(""), workdir)
    # A new workdir has no progress anywhere.
    wd.check_checkpoint_dir(_config(elsewhere), str(tmp_path / "new"))
    assert not wd.has_progress(str(tmp_path / "new"), str(tmp_path / "none"))


# ------------------------------------------------------------------------- the CLI


def _copy(tiny_run, tmp_path) -> tuple[str, str]:
    workdir = str(tmp_path / "workdir")
    shutil.copytree(tiny_run[0], workdir)
    return workdir, tiny_run[1]


def _refused(argv: list[str], *folders: str) -> str:
    """Run ``argv``, expect a refusal (exit 1, no traceback) that changed nothing in
    ``folders``; return its stderr."""
    before = [tu.tree_hashes(f) for f in folders]
    proc = tu.run_command(argv)
    print(proc.stderr[-1500:])
    tu.one_line_error(proc)
    assert [tu.tree_hashes(f) for f in folders] == before
    return proc.stderr


@pytest.mark.slow
def test_enabling_the_probe_on_resume_is_refused(tiny_run, tmp_path):
    """The issue's case: exit 0, "resumed at step 3", and 17 trained-on sentences became probe
    sentences."""
    workdir, model_dir = _copy(tiny_run, tmp_path)
    err = _refused(tu.main_command("simcse.py", workdir, model_dir,
                                   **dict(tu.TINY_RUN, total_steps=4, probe__enabled=True)),
                   workdir)
    assert "these fields differ (stored -> new):\n  probe.enabled: false -> true\n" in err


@pytest.mark.slow
def test_a_rewritten_data_file_is_refused_naming_it(tiny_model, tmp_path):
    """The issue's case: data/mut.csv rewritten from 64 to 32 rows, then resumed: exit 0."""
    data = tmp_path / "data"
    data.mkdir()
    csv = data / "mut.csv"
    csv.write_text("text\n" + "".join(f"sentence number {i} is here\n" for i in range(64)))
    workdir = str(tmp_path / "run")
    fields = dict(tu.TINY_RUN, data__source="csv", data__path=str(csv), data__max_examples=0)
    tu.run_main_fast("simcse.py", workdir, tiny_model, **fields)
    stored = json.load(open(os.path.join(workdir, "inputs.json")))
    assert stored["data"][0]["rows"] == 64
    assert stored["data"][0]["files"][0] == {
        "role": "data", "path": str(csv), "bytes": os.path.getsize(csv),
        "sha256": wd.hashlib.sha256(csv.read_bytes()).hexdigest()}
    old = stored["data"][0]["files"][0]
    csv.write_text("text\n" + "".join(f"sentence number {i} is here\n" for i in range(32)))
    new_sha = wd.hashlib.sha256(csv.read_bytes()).hexdigest()
    err = _refused(tu.main_command("simcse.py", workdir, tiny_model, **fields),
                   workdir, str(data))
    assert (f"data file {csv}: sha256 {old['sha256'][:12]} ({old['bytes']} bytes) -> sha256 "
            f"{new_sha[:12]} ({os.path.getsize(csv)} bytes)") in err
    assert f"data (csv {csv}): rows 64 -> 32" in err
    assert f"{workdir} holds a run trained on other inputs" in err


@pytest.mark.slow
def test_a_moved_checkpoint_dir_is_refused_until_the_checkpoints_are_there(tiny_run, tmp_path):
    """The issue's case: restarted from step 0 in a workdir with checkpoints 2 and 3 and
    rewrote metrics.jsonl from step 1."""
    workdir, model_dir = _copy(tiny_run, tmp_path)
    elsewhere = str(tmp_path / "elsewhere")
    argv = tu.main_command("simcse.py", workdir, model_dir,
                           **dict(tu.TINY_RUN, total_steps=4, checkpoint_dir=elsewhere))
    err = _refused(argv, workdir)
    old = os.path.join(workdir, "checkpoints")
    assert (f"config.checkpoint_dir is now {elsewhere}, which holds no checkpoint, but the run "
            f"in this workdir checkpointed to {old}: {old} holds checkpoint(s) 2, 3 and "
            f"{workdir}/metrics.jsonl has steps 1, 2, 3.") in err
    assert not os.path.exists(elsewhere)
    # Moved there, they resume; a workdir from before inputs.json says once that its inputs
    # could not be compared, and records them.
    shutil.move(old, elsewhere)
    os.remove(os.path.join(workdir, "inputs.json"))
    proc = tu.run_command_fast(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {elsewhere} at step 3" in proc.stderr
    assert proc.stderr.count("could not be compared") == 1
    assert json.load(open(os.path.join(workdir, "inputs.json")))["data"][0]["rows"] == 32
    assert [r["step"] for r in tu.read_metrics(workdir)] == [1, 2, 3, 4]
