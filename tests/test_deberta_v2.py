"""Parity of the Flax DeBERTa-v2/v3 with transformers' DebertaV2ForMaskedLM (tiny configs)."""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from softmcl_jax.models import deberta_v2, from_pretrained
from softmcl_jax.models.hf import torch_key

B, L, LENGTHS = 3, 24, (24, 17, 9)
COMMON = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, relative_attention=True, pad_token_id=0)
CONFIGS = {
    # v3: log buckets (mid 16 < L=24), shared key, LayerNorm'd rel embeddings, no abs positions.
    "v3": dict(position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
               norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
               type_vocab_size=0, legacy=True),
    "v3_lm_head": dict(position_buckets=32, max_relative_positions=64,
                       pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                       position_biased_input=False, type_vocab_size=0, legacy=False),
    # v2: no buckets, span 16 < L so the clamp is exercised; ConvLayer, embed_proj, token types.
    "v2": dict(position_buckets=-1, max_relative_positions=16, pos_att_type=["c2p", "p2c"],
               share_att_key=False, position_biased_input=True, type_vocab_size=2,
               conv_kernel_size=3, conv_act="gelu", embedding_size=48, legacy=True),
}


# --- fixtures --------------------------------------------------------------------------------

def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, COMMON["vocab_size"], size=(B, L))
    mask = (np.arange(L)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = ids * mask  # padding id 0
    ids[0, 5] = 0  # a real pad token: its embedding row gets no gradient in torch
    token_types = rng.integers(0, 2, size=(B, L)) * mask
    return ids, mask, token_types


@functools.cache
def setup(name: str):
    torch.manual_seed(0)
    hf_config = transformers.DebertaV2Config(**COMMON, **CONFIGS[name])
    model = transformers.DebertaV2ForMaskedLM(hf_config).eval()
    with torch.no_grad():  # move off the init (LN = 1, biases = 0, tiny weights)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids, mask, tt = _inputs(1)
    if not hf_config.type_vocab_size:
        tt = np.zeros_like(tt)
    # Through the shared loader, so that it is what the parity covers.
    folder = tempfile.mkdtemp(prefix=f"deberta_{name}_")
    model.save_pretrained(folder)
    pre = from_pretrained(folder)
    assert pre.newly_initialized == ()
    assert isinstance(pre.module, deberta_v2.DebertaV2MaskedLM)
    module, params = pre.module, pre.params
    jargs = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(tt, jnp.int32))
    return model, module, params, (ids, mask, tt), jargs


def _apply(module, params, jargs, **kw):
    return module.apply({"params": params}, *jargs, **kw)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_parity(name: str):
    model, module, params, (ids, mask, tt), jargs = setup(name)
    targs = [torch.as_tensor(a) for a in (ids, mask, tt)]
    with torch.no_grad():
        base = model.deberta(*targs).last_hidden_state.numpy()
        logits = model(*targs).logits.numpy()
    out = jax.jit(functools.partial(_apply, module))(params, jargs)
    d_h = float(np.abs(np.asarray(out["last_hidden_state"]) - base).max())
    d_l = float(np.abs(np.asarray(out["logits"]) - logits).max())
    print(f"\n{name}: last_hidden_state max|Δ| = {d_h:.2e}, logits max|Δ| = {d_l:.2e}")
    assert out["logits"].dtype == jnp.float32
    assert d_h <= 1e-4 and d_l <= 1e-3


def _scalar_fns(jargs, mask):
    rng = np.random.default_rng(2)
    r_h = rng.standard_normal((B, L, COMMON["hidden_size"])).astype(np.float32)
    r_l = rng.standard_normal((B, L, COMMON["vocab_size"])).astype(np.float32) * 0.01
    m = mask[..., None].astype(np.float32)

    def jax_loss(module, params):
        out = _apply(module, params, jargs)
        return jnp.sum(out["last_hidden_state"] * r_h * m) + jnp.sum(out["logits"] * r_l * m)

    def torch_loss(h, logits):
        return (h * torch.from_numpy(r_h * m)).sum() + (logits * torch.from_numpy(r_l * m)).sum()

    return jax_loss, torch_loss


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_gradient_parity(name: str):
    model, module, params, (ids, mask, tt), jargs = setup(name)
    jax_loss, torch_loss = _scalar_fns(jargs, mask)
    model.zero_grad()
    out = model(*[torch.as_tensor(a) for a in (ids, mask, tt)], output_hidden_states=True)
    torch_loss(out.hidden_states[-1], out.logits).backward()
    t_grads = {k: p.grad for k, p in model.named_parameters()}
    grads = jax.jit(jax.grad(functools.partial(jax_loss, module)))(params)
    norms = {}  # torch key -> (||g_torch||, ||g_jax - g_torch||)
    for path, g in traverse_util.flatten_dict(grads).items():
        tg = t_grads[torch_key(path)].numpy()
        if path[-1] == "kernel":
            tg = tg.T if tg.ndim == 2 else tg.transpose(2, 1, 0)
        norms[torch_key(path)] = (np.linalg.norm(tg), np.linalg.norm(np.asarray(g) - tg))
    # Some gradients are exactly zero in exact arithmetic (e.g. pos_key_proj.bias adds q_i . b to
    # a whole score row, which softmax ignores); both sides are then rounding noise, compared in
    # absolute terms against a floor far below any real gradient.
    floor = 1e-5 * float(np.median([n for n, _ in norms.values()]))
    zero = {k: d for k, (n, d) in norms.items() if n < floor}
    assert all(d < floor for d in zero.values()), f"zero gradients differ: {zero} (>= {floor})"
    rel = {k: d / (n + 1e-30) for k, (n, d) in norms.items() if k not in zero}
    worst_key = max(rel, key=rel.get)
    print(f"\n{name}: worst gradient relative error ||g_jax - g_torch|| / ||g_torch|| = "
          f"{rel[worst_key]:.2e} ({worst_key}); zero-in-exact-arithmetic: {sorted(zero)}")
    assert rel[worst_key] <= 1e-4, (
        f"relative gradient error ||g_jax - g_torch|| / ||g_torch|| = {rel[worst_key]:.2e} > 1e-4 "
        f"at {worst_key}")


def test_bf16_compute_keeps_fp32_params():
    _, module, params, _, jargs = setup("v3")
    bf16 = deberta_v2.DebertaV2MaskedLM(module.config, dtype=jnp.bfloat16)
    template = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), *jargs)["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(template)} == {jnp.dtype(jnp.float32)}
    ref = _apply(module, params, jargs)
    out = jax.jit(functools.partial(_apply, bf16))(params, jargs)
    h = np.asarray(out["last_hidden_state"], np.float32)
    d = float(np.abs(h - np.asarray(ref["last_hidden_state"])).max())
    print(f"\nbf16 vs fp32: last_hidden_state max|Δ| = {d:.2e}")
    assert out["logits"].dtype == jnp.float32
    assert np.isfinite(h).all() and np.isfinite(np.asarray(out["logits"])).all()
    assert d < 0.1


def test_remat_matches():
    _, module, params, (_, mask, _), jargs = setup("v2")
    remat = deberta_v2.DebertaV2MaskedLM(module.config, remat=True)
    jax_loss, _ = _scalar_fns(jargs, mask)
    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(functools.partial(jax_loss, m)))(params)
                          for m in (module, remat))
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    # XLA fuses the recomputation differently, so equal only up to fp32 rounding.
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        assert np.linalg.norm(b - a) <= 1e-5 * np.linalg.norm(a) + 1e-7


def test_dropout_only_in_train():
    _, module, params, _, jargs = setup("v2")
    run = jax.jit(lambda key, train: _apply(module, params, jargs, train=train, mlm=False,
                                            rngs={"dropout": key})["last_hidden_state"],
                  static_argnums=1)
    k0, k1 = jax.random.split(jax.random.PRNGKey(3))
    eval_out, a, a2, b = run(k0, False), run(k0, True), run(k0, True), run(k1, True)
    assert not np.allclose(a, eval_out) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)


@pytest.mark.parametrize("bucket,max_pos", [(-1, -1), (32, 64), (256, 512), (64, 128), (8, 16)])
def test_relative_positions_match_transformers(bucket: int, max_pos: int):
    for q, k in [(1, 1), (7, 7), (24, 24), (100, 50), (513, 513), (1024, 1024)]:
        want = build_relative_position(torch.empty(q, 1), torch.empty(k, 1), bucket, max_pos)[0]
        got = deberta_v2.relative_positions(q, k, bucket, max_pos)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{q}x{k}")


def test_from_hf_rejects_unsupported():
    bad = [dict(pos_att_type=["c2x"]), dict(legacy=False, embedding_size=48),
           dict(conv_kernel_size=4), dict(hidden_act="nope"),
           dict(position_buckets=64, max_relative_positions=30)]
    for extra in bad:
        with pytest.raises(ValueError):
            deberta_v2.DebertaConfig.from_hf(transformers.DebertaV2Config(**{**COMMON, **extra}))
