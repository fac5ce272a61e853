"""The downstream evaluation suite (python -m softmcl_jax.evaluate): metrics against brute-force
references, the split protocol, the aspect representation, the few-shot sampler, and the CLI end
to end on a made-up data folder (real file formats, invented rows) with a tiny random BERT: its
exit status when no task ran, and a training workdir standing for its export/."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import transformers

from softmcl_jax import evaluate
from softmcl_jax.evaluation import data as D
from softmcl_jax.evaluation.embed import Encoder
from softmcl_jax.evaluation.metrics import clustering_metrics, retrieval_metrics
from softmcl_jax.evaluation.probes import sample_per_class
from softmcl_jax.evaluation.tasks import DEFAULT_TASKS, aspect_features
from softmcl_jax.models import from_pretrained
from tests.train_utils import ROOT, tiny_model_dir
from tests.train_utils import env as train_env

# --- made-up data in the real formats --------------------------------------------------------

POS = ["good", "great", "lovely", "superb", "charming", "happy", "bright", "warm"]
NEG = ["bad", "awful", "dull", "boring", "ugly", "sad", "bleak", "cold"]
NOUNS = ["film", "plot", "cast", "script", "ending", "score", "story", "pace", "tone", "set"]


def _sentences(rng: random.Random, n: int) -> list[tuple[int, str]]:
    """(polarity 0..4, sentence): 0/4 strongly negative/positive, 2 neutral."""
    out = []
    for i in range(n):
        p = i % 5  # balanced, so that every class can give k examples after the cap
        noun = rng.choice(NOUNS)
        if p == 2:
            text = f"the {noun} is there and it is a {rng.choice(NOUNS)} ."
        else:
            adj = rng.choice(POS if p > 2 else NEG)
            very = "very " if p in (0, 4) else ""
            text = f"the {noun} is {very}{adj} and the {rng.choice(NOUNS)} is {adj} ."
        out.append((p, text))
    rng.shuffle(out)
    return out


def make_data(folder: str, *, with_test: bool, n: int = 48, seed: int = 0) -> str:
    rng = random.Random(seed)
    splits = ["train", "dev"] + (["test"] if with_test else [])

    def put(rel: str, text: str) -> None:
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    for split in splits:
        rows = _sentences(rng, n)
        put(f"sst2/stsa.binary.{split}",
            "".join(f"{int(p > 2)} {t}\n" for p, t in rows if p != 2))
        put(f"sst5/stsa.fine.{split}", "".join(f"{p} {t}\n" for p, t in rows))
        pairs = _sentences(rng, n // 2)
        put(f"stsb/sts-{split}.csv", "".join(
            f"main-captions\tMSRvid\t2012test\t{i:04d}\t{abs(p - q) * 1.25:.3f}\t{a}\t{b}\n"
            for i, ((p, a), (q, b)) in enumerate(zip(rows, pairs, strict=False))))
        labels = [rng.randrange(4) for _ in range(n)]
        put(f"goemotions/{split}.tsv", "".join(
            f"{['so happy', 'so angry', 'what a surprise', 'it is fine'][y]} number {i}\t"
            f"{y if i % 7 else f'{y},{(y + 1) % 4}'}\tfx{i}\n" for i, y in enumerate(labels)))
        # ABSA: two aspects per sentence, the second occurrence of a repeated term is the target
        # in some rows; polarity -1/0/1.
        seg = []
        for i in range(n):
            pol = rng.choice((-1, 0, 1))
            adj = {-1: rng.choice(NEG), 0: "there", 1: rng.choice(POS)}[pol]
            noun = NOUNS[i % len(NOUNS)]
            if i % 5 == 0:
                seg += [f"the {noun} case is ok but the $T$ is {adj} .", noun, str(pol)]
            else:
                seg += [f"the $T$ is {adj} here {i} .", noun, str(pol)]
        if split != "dev":  # SemEval ships Train and Test only
            name = "Train" if split == "train" else "Test"
            put(f"semeval14_absa/Laptops_{name}.xml.seg", "\n".join(seg) + "\n")
            put(f"semeval14_absa/Restaurants_{name}.xml.seg", "\n".join(seg) + "\n")
    put("goemotions/emotions.txt", "joy\nanger\nsurprise\nneutral\n")
    emo = ["id,split,V,A,D,text"]
    for split in splits:
        for i, (p, t) in enumerate(_sentences(rng, n)):
            # Arousal follows the polarity's strength, dominance its sign with noise: each
            # probe has something to find.
            a, d = 1.5 + abs(p - 2) * 1.2 + rng.random() * 0.3, 2.5 + p * 0.4 + rng.random() * 0.8
            emo.append(f"fx_{split}_{i},{split},{1.5 + p * 0.75:.2f},{a:.2f},{d:.2f},\"{t}\"")
    put("emobank/emobank.csv", "\n".join(emo) + "\n")
    header = (",Word,V.Mean.Sum,V.SD.Sum,V.Rat.Sum,A.Mean.Sum,A.SD.Sum,A.Rat.Sum,D.Mean.Sum,"
              "D.SD.Sum,D.Rat.Sum")
    words = [(w, 7.5 + rng.random()) for w in POS] + [(w, 1.5 + rng.random()) for w in NEG]
    words += [(f"{w}ness", 5 + rng.random()) for w in NOUNS + POS + NEG]
    rows = [f"{i},{w},{v:.2f},1.0,20,3.0,1.0,20,5.0,1.0,20" for i, (w, v) in enumerate(words)]
    put("warriner_vad/Ratings_Warriner_et_al.csv", header + "\n" + "\n".join(rows) + "\n")
    order = [w for w, _ in words]
    rng.shuffle(order)
    cut = {"train": order[:24], "dev": order[24:32], "test": order[32:]}
    for split in splits:
        put(f"warriner_vad/splits/{split}.txt", "\n".join(cut[split]) + "\n")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert")))


# --- retrieval and clustering metrics --------------------------------------------------------

def brute_force_retrieval(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """One query at a time, straight from the definitions."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rr, p1, ap = [], [], []
    for q in range(len(x)):
        others = [j for j in range(len(x)) if j != q]
        sims = [float(x[q] @ x[j]) for j in others]
        ranked = [others[i] for i in sorted(range(len(others)), key=lambda i: -sims[i])]
        rel = [labels[j] == labels[q] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        rr.append(1.0 / (rel.index(True) + 1))
        p1.append(float(rel[0]))
        hits, total = 0, 0.0
        for i in range(r):
            if rel[i]:
                hits += 1
                total += hits / (i + 1)
        ap.append(total / r)
    return {"mrr": np.mean(rr), "p_at_1": np.mean(p1), "map_at_r": np.mean(ap)}


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=70)
    labels[-1] = 9  # a class of one: no relevant item, left out
    x = rng.normal(size=(70, 8)) + 0.8 * np.eye(10)[labels][:, :8]
    got = retrieval_metrics(x, labels, chunk=16)  # several chunks
    ref = brute_force_retrieval(x, labels)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


def test_perfect_and_random_embeddings():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 20)
    centres = rng.normal(size=(6, 16))
    perfect = centres[labels] + 1e-3 * rng.normal(size=(120, 16))
    r = retrieval_metrics(perfect, labels)
    assert r == {"mrr": 1.0, "p_at_1": 1.0, "map_at_r": 1.0}
    c = clustering_metrics(perfect, labels)
    assert c["ami"] == pytest.approx(1.0) and c["ari"] == pytest.approx(1.0)
    assert c["fms"] == pytest.approx(1.0)
    noise = rng.normal(size=(120, 16))
    r = retrieval_metrics(noise, labels)
    assert r["map_at_r"] < 0.35 and r["p_at_1"] < 0.4  # chance: about 1/6
    c = clustering_metrics(noise, labels)
    assert abs(c["ari"]) < 0.1 and abs(c["ami"]) < 0.1


# --- few-shot sampler, protocol helpers ------------------------------------------------------

def test_sample_per_class_exact_and_deterministic():
    labels = np.asarray([0] * 10 + [1] * 7 + [2] * 30)
    a = sample_per_class(labels, 5, seed=3)
    assert np.array_equal(a, sample_per_class(labels, 5, seed=3))
    assert not np.array_equal(a, sample_per_class(labels, 5, seed=4))
    assert len(set(a.tolist())) == 15
    assert np.bincount(labels[a]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="fewer than k=8"):
        sample_per_class(labels, 8, seed=0)


def test_holdout_keeps_duplicate_texts_together_and_cap_is_fixed():
    items = [f"text {i % 30}" for i in range(90)]  # every text three times
    kept, held = D.holdout(items, lambda t: t, 0.1, "x")
    assert len(held) == 9 and not set(kept) & set(held)
    assert (kept, held) == D.holdout(items, lambda t: t, 0.1, "x")
    capped = D.cap(list(range(100)), 10)
    assert capped == sorted(capped) and capped == D.cap(list(range(100)), 10)
    assert set(D.cap(list(range(100)), 20)) >= set(capped)  # growing the cap only adds


# --- the aspect representation ---------------------------------------------------------------

def test_aspect_span_uses_the_marked_occurrence(tmp_path):
    path = tmp_path / "a.seg"
    path.write_text("  the battery lasts but the $T$ died .\nbattery\n-1\n")
    (ex,) = D.read_semeval14(str(path))
    start, end = D.aspect_span(ex.text, ex.aspect, ex.where)
    assert ex.text[start:end] == "battery" and start == ex.text.rindex("battery")
    assert D.aspect_span(ex.text, ex.aspect, "") == (4, 11)  # no source line: first occurrence


def test_aspect_features_are_sentence_and_aspect_token_mean(model_dir):
    pre = from_pretrained(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = Encoder(pre, pre.params, tok, max_len=32, batch_size=4, progress=False)
    text = "the battery lasts but the battery charger died ."
    start = text.rindex("battery charger")
    item = D.AspectItem(text, "battery charger", 0, (start, start + len("battery charger")))
    feats = aspect_features(enc, [item, item], "t")
    assert feats.shape == (2, 128)
    ids = tok(text)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    hidden = np.asarray(pre.encode(pre.params, np.asarray([ids]), np.ones((1, len(ids)))))[0]
    # [CLS] the battery lasts but the battery charge ##r died . [SEP]: the second "battery",
    # and a term of several sub-tokens.
    assert pieces[6:9] == ["battery", "charge", "##r"]
    np.testing.assert_allclose(feats[0, 64:], hidden[6:9].mean(0), atol=1e-5)
    np.testing.assert_allclose(feats[0, :64], hidden.mean(0), atol=1e-5)
    # A word alone: the mean over its sub-tokens, specials excluded.
    w_ids = tok("sunbeam")["input_ids"]
    w_hidden = np.asarray(pre.encode(pre.params, np.asarray([w_ids]),
                                     np.ones((1, len(w_ids)))))[0]
    np.testing.assert_allclose(enc.words(["sunbeam"])[0], w_hidden[1:-1].mean(0), atol=1e-5)


# --- the CLI end to end ----------------------------------------------------------------------

ALL_TASKS = [*DEFAULT_TASKS, "sst2_finetune", "sst5_finetune"]
RANGES = {"acc": (0, 1), "macro_f1": (0, 1), "pearson": (-1, 1), "spearman": (-1, 1),
          "ami": (-1, 1), "ari": (-1, 1), "fms": (0, 1), "mrr": (0, 1), "p_at_1": (0, 1),
          "map_at_r": (0, 1)}


def _run(model_dir: str, data_dir: str, out: str, tasks: list[str], capsys) -> tuple[dict, str]:
    got = evaluate.main([
        f"--checkpoint={model_dir}", f"--data_dir={data_dir}", f"--tasks={','.join(tasks)}",
        "--max_examples=40", "--max_len=32", "--batch_size=16", "--fewshot_k=2,4",
        "--fewshot_seeds=0,1", "--finetune_steps=2", "--finetune_batch_size=8",
        "--no_progress", f"--output={out}"])
    with open(out) as f:
        assert json.load(f) == got
    return got, capsys.readouterr().out


@pytest.mark.parametrize("with_test", [True, False], ids=["test_present", "test_absent"])
def test_cli_end_to_end(model_dir, tmp_path, capsys, with_test):
    data_dir = make_data(str(tmp_path / "data"), with_test=with_test)
    # Fine-tuning compiles a training step (most of this test's time): once is enough.
    tasks = ALL_TASKS if with_test else list(DEFAULT_TASKS)
    got, md = _run(model_dir, data_dir, str(tmp_path / "r.json"), tasks, capsys)
    split = "test" if with_test else "dev"
    assert list(got) == tasks
    for task, entry in got.items():
        assert entry["split"] == split, task
        assert isinstance(entry["n"], int) and entry["n"] > 0, task
        metrics = {k: v for k, v in entry.items() if k not in ("split", "n")}
        assert metrics, task
        for name, value in metrics.items():
            base = name if name in RANGES else "acc"  # acc_k{k}_mean / _std
            lo, hi = RANGES[base]
            assert value is not None and lo - 1e-9 <= value <= hi + 1e-9, (task, name, value)
        assert f"| {task} | {split} | {entry['n']} |" in md
    assert {"acc_k2_mean", "acc_k2_std", "acc_k4_mean", "acc_k4_std"} <= set(got["sst2_fewshot"])
    assert {"ami", "ari", "fms", "mrr", "p_at_1", "map_at_r"} <= set(got["goemotions"])
    # Sizes: the capped scored split (emobank: 48 rows per split, capped at 40).
    assert got["emobank"]["n"] == 40 and got["sst5"]["n"] == 40
    # Arousal and dominance: the same sentences as valence, their own targets.
    assert got["emobank_arousal"]["n"] == got["emobank_dominance"]["n"] == 40
    assert got["emobank_arousal"]["pearson"] != got["emobank"]["pearson"]
    if with_test:
        assert got["semeval14_laptops"]["n"] == 40  # Test, capped
        # Fine-tuning is a trainer run (softmcl_jax.finetune), not a loop of its own.
        assert md.count("trainer run") == 2 and md.count("2 steps of 8") == 2
    else:
        assert "held out" in md and "of Train sentences" in md


def test_default_tasks_skip_missing_data_and_named_missing_raise(model_dir, tmp_path, capsys):
    data_dir = make_data(str(tmp_path / "data"), with_test=False)
    for sub in ("semeval14_absa", "goemotions", "warriner_vad", "emobank", "sst5"):
        for root, _, files in os.walk(os.path.join(data_dir, sub)):
            for f in files:
                os.remove(os.path.join(root, f))
    got = evaluate.main([f"--checkpoint={model_dir}", f"--data_dir={data_dir}",
                         "--tasks=default", "--max_examples=24", "--max_len=32",
                         "--fewshot_k=2", "--fewshot_seeds=0", "--no_progress"])
    assert set(got) == {"sst2", "stsb", "sst2_fewshot"}
    md = capsys.readouterr().out
    assert "Not run (data missing)" in md and "goemotions" in md
    with pytest.raises(D.MissingData, match="emobank.csv"):
        evaluate.main([f"--checkpoint={model_dir}", f"--data_dir={data_dir}",
                       "--tasks=emobank", "--no_progress"])


# --- a run never ends silently wrong: no task ran, a training workdir ------------------------

def test_cli_exits_nonzero_when_no_task_ran(model_dir, tmp_path):
    """An empty data folder: every default task is skipped, so the process must fail, naming
    each task and why."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "softmcl_jax.evaluate", f"--checkpoint={model_dir}",
         f"--data_dir={empty}", "--no_progress", f"--output={out}"],
        env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "no task ran" in proc.stderr
    for task in DEFAULT_TASKS:
        assert f"\n  {task}: missing: " in proc.stderr, task
    assert "Not run (data missing)" in proc.stdout
    assert not out.exists()  # no results file that looks like a finished evaluation


def _workdir(folder, model_dir: str | None, pooling: str = "cls"):
    """A folder laid out like the trainer's: its config.json, checkpoints/, maybe export/."""
    folder.mkdir()
    (folder / "checkpoints").mkdir()
    config = {"name": "softmcl", "seed": 0,
              "model": {"name_or_path": "minilm", "pooling": pooling, "max_len": 32},
              "objective": {"soft_sentence": {"weight": 1.0}}}
    (folder / "config.json").write_text(json.dumps(config))
    if model_dir is not None:
        shutil.copytree(model_dir, folder / "export")
    return folder


def test_resolve_checkpoint_uses_a_workdirs_export_and_pooling(model_dir, tmp_path):
    wd = _workdir(tmp_path / "run", model_dir)
    path, pooling = evaluate.resolve_checkpoint(str(wd))
    assert path == str(wd / "export") and pooling == "cls"
    assert from_pretrained(path).config.hidden_size == 64  # the exported tiny encoder
    # An encoder folder (a transformers config.json) is itself, with no pooling of its own.
    assert evaluate.resolve_checkpoint(model_dir) == (model_dir, None)
    assert evaluate.resolve_checkpoint(path) == (path, None)
    # A workdir is known by its checkpoints/ even without the trainer's config.json ...
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    shutil.copytree(model_dir, bare / "export")
    assert evaluate.resolve_checkpoint(str(bare)) == (str(bare / "export"), None)
    # ... and by its config.json without checkpoints/ (checkpoint_dir elsewhere).
    elsewhere = _workdir(tmp_path / "elsewhere", model_dir, pooling="mean")
    (elsewhere / "checkpoints").rmdir()
    assert evaluate.resolve_checkpoint(str(elsewhere)) == (str(elsewhere / "export"), "mean")


def test_resolve_checkpoint_without_export_says_how_to_export(tmp_path, capsys):
    wd = _workdir(tmp_path / "run", None)
    command = f"python -m softmcl_jax.export --workdir={wd} --out={wd / 'export'}"
    with pytest.raises(FileNotFoundError, match="training workdir") as info:
        evaluate.resolve_checkpoint(str(wd))
    assert command in str(info.value)
    with pytest.raises(SystemExit) as info:  # the CLI: the same words, no traceback
        evaluate.main([f"--checkpoint={wd}", f"--data_dir={tmp_path}", "--no_progress"])
    assert command in str(info.value.code) and "model_type" not in str(info.value.code)


def test_cli_on_a_workdir_evaluates_its_export_with_the_runs_pooling(model_dir, tmp_path,
                                                                      capsys):
    wd = _workdir(tmp_path / "run", model_dir, pooling="cls")
    data_dir = make_data(str(tmp_path / "data"), with_test=False)
    args = [f"--checkpoint={wd}", f"--data_dir={data_dir}", "--tasks=sst2", "--max_examples=24",
            "--max_len=32", "--no_progress"]
    got = evaluate.main(args)
    md = capsys.readouterr().out
    assert list(got) == ["sst2"]
    assert f"- encoder: `{wd / 'export'}`" in md and "- pooling: `cls`" in md
    # The same numbers as the export folder itself with --pooling=cls; an explicit --pooling
    # wins over the run's.
    assert evaluate.main([*args[1:], f"--checkpoint={wd / 'export'}", "--pooling=cls"]) == got
    capsys.readouterr()
    evaluate.main([*args, "--pooling=mean"])
    assert "- pooling: `mean`" in capsys.readouterr().out


# --- a sentence-transformers export: its pooling, and the table in its model card ------------

def _export(folder, model_dir: str, pooling: str) -> str:
    """``model_dir``'s tiny encoder written as this library exports a run (ST files, card)."""
    from softmcl_jax.export_format import write_export
    from tests.train_utils import load_config

    pre = from_pretrained(model_dir)
    config = load_config("softmcl", **{"model.pooling": pooling, "model.max_len": 32})
    return write_export(pre, pre.params, str(folder), config, {"steps": 3})


def test_cli_truncates_where_the_export_says_unless_told(model_dir, tmp_path, capsys):
    """No --max_len: the export's sentence_bert_config.json max_seq_length (what
    SentenceTransformer truncates at); the numbers equal an explicit --max_len of that value."""
    export = _export(tmp_path / "export", model_dir, "mean")
    data_dir = make_data(str(tmp_path / "data"), with_test=False)
    args = [f"--data_dir={data_dir}", "--tasks=sst2,stsb", "--max_examples=24", "--no_progress",
            "--no_card"]
    config_file = os.path.join(export, "sentence_bert_config.json")
    with open(config_file) as f:
        assert json.load(f)["max_seq_length"] == 32  # model.max_len of the run
    with open(config_file, "w") as f:
        json.dump({"max_seq_length": 6, "do_lower_case": False}, f)
    got = evaluate.main([f"--checkpoint={export}", *args])
    assert "- max_len: `6`" in capsys.readouterr().out
    assert got == evaluate.main([f"--checkpoint={export}", "--max_len=6", *args])
    assert got != evaluate.main([f"--checkpoint={export}", "--max_len=32", *args])
    with open(config_file, "w") as f:
        json.dump({"max_seq_length": "long"}, f)
    with pytest.raises(SystemExit, match="sentence_bert_config.json: max_seq_length='long'"):
        evaluate.main([f"--checkpoint={export}", *args])
    with pytest.raises(SystemExit):
        evaluate.main([f"--checkpoint={export}", "--max_len=0", *args])
    assert "--max_len=0 must be >= 1" in capsys.readouterr().err
    # A plain transformers folder declares nothing: the suite's default.
    assert evaluate.max_seq_length(model_dir) is None


def test_cli_on_a_sentence_transformers_export_uses_its_pooling_and_fills_its_card(
        model_dir, tmp_path, capsys):
    export = _export(tmp_path / "export", model_dir, "cls")
    data_dir = make_data(str(tmp_path / "data"), with_test=False)
    args = [f"--data_dir={data_dir}", "--tasks=sst2,stsb", "--max_examples=24", "--max_len=32",
            "--no_progress"]
    got = evaluate.main([f"--checkpoint={export}", f"--output={tmp_path / 'r.json'}", *args])
    assert "- pooling: `cls`" in capsys.readouterr().out  # from 1_Pooling/config.json
    # The same numbers as the plain transformers folder with --pooling=cls (no card there).
    assert evaluate.main([f"--checkpoint={model_dir}", "--pooling=cls", *args]) == got
    card = open(os.path.join(export, "README.md")).read()
    table = card.split("## Evaluation")[1].split("## Usage")[0]
    assert "Not evaluated yet" not in table
    for task, entry in got.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {task} |"))
        for name, value in entry.items():
            if name not in ("split", "n"):
                assert f"{name} {value:.4f}" in row, (task, name, row)
    # --no_card leaves the card alone.
    before = open(os.path.join(export, "README.md")).read()
    evaluate.main([f"--checkpoint={export}", "--no_card", *args[:-1], "--max_examples=12",
                   "--no_progress"])
    assert open(os.path.join(export, "README.md")).read() == before
