"""Fine-tuning as trainer runs (softmcl_jax.finetune, ``evaluate --finetune``): the regression loss
against its closed form, the regression term's masking, text pairs through rows, packing and the
encoder (packed == padded, token types reach the model), and the CLI end to end on made-up data
in the real formats with a tiny random BERT: the JSON, resume/skip, and a real learning check."""

from __future__ import annotations

import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from softmcl_jax import finetune, losses, objective, terms
from softmcl_jax.data.pipeline import Pipeline
from softmcl_jax.data.prepare import pair_arrays
from softmcl_jax.data.records import Sentence
from softmcl_jax.data.rows import MemorySource, decode_row, encode_row, pad_rows, rows_from_encoded
from softmcl_jax.data.valence import encode_sentences
from softmcl_jax.models import from_pretrained
from tests.test_evaluate_suite import make_data
from tests.train_utils import run_command_fast, tiny_model_dir

# --- the regression loss and term ------------------------------------------------------------


def test_regression_loss_is_the_mean_squared_error_over_rated_rows():
    rng = np.random.default_rng(0)
    p, y = rng.normal(size=7).astype(np.float32), rng.uniform(size=7).astype(np.float32)
    valid = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    y_garbage = np.where(valid, y, np.nan)  # absent rows may hold anything
    got = losses.regression_squared_error(jnp.asarray(p), jnp.asarray(y_garbage),
                                          valid=jnp.asarray(valid))
    want = np.mean((p[valid] - y[valid]) ** 2)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    per_row = losses.regression_squared_error(jnp.asarray(p), jnp.asarray(y_garbage),
                                              valid=jnp.asarray(valid), reduction="none")
    np.testing.assert_allclose(np.asarray(per_row), np.where(valid, (p - y) ** 2, 0), rtol=1e-6)
    empty = losses.regression_squared_error(jnp.asarray(p), jnp.asarray(y),
                                            valid=jnp.zeros(7, bool))
    assert float(empty) == 0.0


def _stub_context(pooled: jax.Array, w: jax.Array, rating: np.ndarray, valid: np.ndarray):
    """The two things the regression term reads of objective.Context: the batch and a head's
    output of the pooled vectors (here the linear map ``w``)."""
    return types.SimpleNamespace(
        batch={"sentence_valence": jnp.asarray(rating)}, valid=jnp.asarray(valid),
        projected=lambda ref, head: pooled @ w)


def test_regression_term_reads_only_rated_rows_and_their_gradient():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)
    rating = np.array([0.2, -1.0, 0.9, 0.5, -1.0, 0.1], np.float32)  # -1: no rating
    valid = np.array([1, 1, 1, 0, 1, 1], bool)  # row 3 is padding
    knobs = finetune.base_config().objective.regression
    used = valid & (rating >= 0)

    def value(x):
        return terms.TERMS["regression"].loss(_stub_context(x, w, rating, valid), knobs).value

    out = terms.TERMS["regression"].loss(_stub_context(x, w, rating, valid), knobs)
    np.testing.assert_array_equal(np.asarray(out.rows), used)
    pred = np.asarray(x @ w)[:, 0]
    np.testing.assert_allclose(float(out.value), np.mean((pred[used] - rating[used]) ** 2),
                               rtol=1e-6)
    grad = np.asarray(jax.grad(value)(x))
    assert np.all(grad[~used] == 0) and np.all(np.abs(grad[used]).sum(-1) > 0)
    # Closed form: d/dx_i mean_j (x_j w - y_j)^2 = 2 (x_i w - y_i) w / n.
    want = 2 * (pred - rating)[:, None] * np.asarray(w)[:, 0][None] / used.sum()
    np.testing.assert_allclose(grad[used], want[used], rtol=1e-5, atol=1e-7)


def test_regression_term_plan_needs_a_rating_and_a_regressor_head():
    c = finetune.base_config()
    c.objective.ce.weight, c.objective.regression.weight = 0.0, 1.0
    the_plan = objective.plan(c)
    assert ("regressor", "regressor") in the_plan.heads
    assert "sentence_valence" in the_plan.batch_keys
    assert ("regression", "sentence:valence") in the_plan.data
    c.objective.regression.target = "joy"
    with pytest.raises(ValueError, match="config.objective.regression.target"):
        objective.plan(c)


# --- text pairs: rows, packing, the encoder ---------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # No dropout: the packed and the padded pass must be comparable.
    return tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert_nodrop")), dropout=False)


PAIRS = [("the battery is good but the screen is dull .", "battery", 2),
         ("the screen is dull .", "screen", 0), ("a fine keyboard", "keyboard", 1),
         ("the battery is good but the screen is dull .", "screen", 0),
         ("the price was there .", "price", 1), ("great service and a warm room", "room", 2),
         ("cold food", "food", 0), ("the staff", "staff", 1)]


def _pair_blobs(tokenizer, max_len: int = 32) -> list[bytes]:
    sentences = [Sentence(t, label=y, pair=a) for t, a, y in PAIRS]
    enc = encode_sentences(sentences, tokenizer, {}, max_len=max_len)
    enc.arrays.update(pair_arrays(sentences, tokenizer, max_len, lexicon=False))
    return rows_from_encoded(enc.arrays)


def test_pair_rows_store_segments_and_single_rows_are_unchanged(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    blobs = _pair_blobs(tok)
    rows = [decode_row(b) for b in blobs]
    ref = tok(PAIRS[0][0], PAIRS[0][1])
    np.testing.assert_array_equal(rows[0].input_ids, ref["input_ids"])
    np.testing.assert_array_equal(rows[0].token_type, ref["token_type_ids"])
    assert encode_row(rows[0]) == blobs[0]
    padded = pad_rows(rows, max_len=32, pad_id=0, token_types=True)
    n = len(ref["input_ids"])
    np.testing.assert_array_equal(padded["token_type_ids"][0, :n], ref["token_type_ids"])
    assert not padded["token_type_ids"][0, n:].any()
    # A single text stores no segments: its bytes are the format's before pairs existed
    # (header, 5 bytes a token, 16 a word, 12 of sentence ratings, 4 a label).
    single = rows_from_encoded(encode_sentences([Sentence("cold food", label=0)], tok, {},
                                                max_len=32).arrays)[0]
    assert decode_row(single).token_type is None and len(single) == 12 + 5 * 4 + 12
    assert "token_type_ids" not in pad_rows([decode_row(single)], max_len=32, pad_id=0)


def _context_pooled(model, the_plan, config, params, batch) -> np.ndarray:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ctx = objective.Context(model, the_plan, config, params, None, None, batch, {},
                            jax.random.PRNGKey(0))
    return np.asarray(ctx.pooled("online/clean"))


def test_packed_pairs_give_the_padded_vectors_and_token_types_reach_the_model(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    pretrained = from_pretrained(model_dir, dropout=0.0)
    source = MemorySource(_pair_blobs(tok), max_len=32, pad_id=0)
    vectors = {}
    for packing in (False, True):
        c = finetune.base_config()
        c.data.pair_column, c.data.num_labels, c.data.packing = "pair", 3, packing
        c.model.max_len, c.batch_size = 32, len(PAIRS)
        the_plan = objective.plan(c)
        model = objective.build_model(pretrained, the_plan, c)
        params = {"encoder": pretrained.params, "heads": model.init_heads(jax.random.PRNGKey(0))}
        unpacked = {v: k for k, v in objective.PACKED.items()}
        keys = {unpacked.get(k, k) for k in the_plan.batch_keys} - set(objective.PACKING_KEYS)
        pipe = Pipeline([source], global_batch_size=len(PAIRS), seed=0, max_len=32, pad_id=0,
                        keys=keys, packing_rows=(4,) if packing else None, process_index=0,
                        process_count=1, prefetch=0)
        batch = pipe.batch(0)
        if packing:
            assert batch["packed_input_ids"].shape[0] == 4  # several pairs a row
            assert batch["packed_token_type_ids"].any()
        vectors[packing] = _context_pooled(model, the_plan, c, params, batch)
        if not packing:
            # The same tokens as one segment (token types 0) give other vectors.
            flat = dict(batch, token_type_ids=np.zeros_like(batch["token_type_ids"]))
            as_one = _context_pooled(model, the_plan, c, params, flat)
            assert np.abs(as_one - vectors[False]).max() > 1e-3
    np.testing.assert_allclose(vectors[True], vectors[False], atol=2e-5)


# --- the CLI ---------------------------------------------------------------------------------

ALL = ",".join(finetune.TASKS)


def _evaluate(model_dir: str, data_dir: str, out: str, workdir: str, tasks: str,
              *extra: str) -> tuple[dict, str]:
    proc = run_command_fast([
        sys.executable, "-m", "softmcl_jax.evaluate", f"--checkpoint={model_dir}",
        f"--data_dir={data_dir}", f"--finetune={tasks}", "--max_len=32", "--no_progress",
        "--no_card", f"--workdir={workdir}", f"--output={out}", *extra])
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f), proc.stderr


def test_cli_finetunes_every_task_type_and_skips_finished_runs(model_dir, tmp_path):
    data_dir = make_data(str(tmp_path / "data"), with_test=False)
    workdir = str(tmp_path / "ft")
    args = ("--finetune_steps=2", "--finetune_batch_size=8")
    got, log = _evaluate(model_dir, data_dir, str(tmp_path / "a.json"), workdir, ALL, *args)
    assert list(got) == [f"{t}_finetune" for t in finetune.TASKS]
    for task, spec in finetune.TASKS.items():
        entry = got[f"{task}_finetune"]
        assert entry["split"] == "dev" and entry["n"] > 0
        names = {"acc", "macro_f1"} if spec.kind == "classification" else {"pearson", "spearman"}
        assert set(entry) == names | {"split", "n"}, task
        run = os.path.join(workdir, f"{task}-s0")
        # A trainer run: its config, metrics and final checkpoint.
        with open(os.path.join(run, "config.json")) as f:
            config = json.load(f)
        assert config["total_steps"] == 2 and config["optimizer"]["learning_rate"] == 2e-5
        assert config["data"]["pair_column"] == ("pair" if spec.item == "pair" else "")
        assert os.path.isdir(os.path.join(run, "checkpoints", "2"))
        with open(os.path.join(run, "metrics.jsonl")) as f:
            term = "ce" if spec.kind == "classification" else "regression"
            assert [json.loads(line)[f"loss/{term}"] for line in f]
    # The word task trains on the words alone.
    with open(os.path.join(workdir, "warriner-s0", finetune.TRAIN_FILE)) as f:
        first = json.loads(f.readline())
    assert " " not in first["text"] and 0 <= first["valence"] <= 1
    # A second call reads the finished runs back: same numbers, no training.
    again, log = _evaluate(model_dir, data_dir, str(tmp_path / "b.json"), workdir, ALL, *args)
    assert again == got
    assert log.count("its scores are read back") == len(finetune.TASKS)


def test_finetuning_learns_a_learnable_task(tmp_path):
    """Polarity words decide the SST-2 label and the EmoBank valence of the made-up data: a few
    dozen steps of the trainer (at a tiny model's learning rate) learn both on dev."""
    model_dir = tiny_model_dir(str(tmp_path / "model"))
    data_dir = make_data(str(tmp_path / "data"), with_test=False, n=120)
    got, _ = _evaluate(model_dir, data_dir, str(tmp_path / "r.json"), str(tmp_path / "ft"),
                       "sst2,emobank", "--finetune_steps=60", "--finetune_batch_size=16",
                       "--finetune_lr=1e-3")
    assert got["sst2_finetune"]["acc"] >= 0.9, got
    assert got["emobank_finetune"]["pearson"] >= 0.8, got
