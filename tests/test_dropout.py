"""layers.Dropout: 16-bit keep decisions, checked against the binomial closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softmcl_jax.models import layers


def _apply(rate, x, key, deterministic=False):
    mod = layers.Dropout(rate)
    return mod.apply({}, x, deterministic, rngs={"dropout": key})


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(64, 12, 64, 64), (33, 7, 383)])  # even and odd last dims
def test_drop_fraction_matches_the_quantised_rate(rate, shape):
    keep = np.asarray(layers.dropout_keep_mask(jax.random.key(0), shape, rate))
    assert keep.shape == shape
    n = keep.size
    q = round(rate * 65536) / 65536
    assert abs(q - rate) <= 0.5 / 65536
    dropped = n - keep.sum()
    sd = np.sqrt(n * q * (1 - q))
    assert abs(dropped - n * q) < 5 * sd, (dropped / n, q)
    # Halves of one 32-bit word and neighbouring elements decide independently.
    flat = keep.reshape(-1, shape[-1])[:, : shape[-1] // 2 * 2].astype(np.float64)
    a, b = flat[:, 0::2].ravel(), flat[:, 1::2].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)


def test_output_is_unbiased_and_scaled():
    x = jnp.full((256, 1024), 2.0)
    y = np.asarray(_apply(0.1, x, jax.random.key(1)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0 * 65536 / (65536 - 6554), rtol=1e-6)
    assert abs(y.mean() - 2.0) < 5 * 2.0 * np.sqrt(0.1 / 0.9 / y.size) * 1.01


def test_keys_give_different_masks_and_same_key_the_same():
    shape = (8, 16, 32)
    m0 = layers.dropout_keep_mask(jax.random.key(0), shape, 0.3)
    m0b = layers.dropout_keep_mask(jax.random.key(0), shape, 0.3)
    m1 = layers.dropout_keep_mask(jax.random.key(1), shape, 0.3)
    assert bool((m0 == m0b).all()) and not bool((m0 == m1).all())


def test_deterministic_rate_zero_and_one():
    x = jax.random.normal(jax.random.key(2), (4, 6))
    np.testing.assert_array_equal(_apply(0.5, x, jax.random.key(0), deterministic=True), x)
    np.testing.assert_array_equal(_apply(0.0, x, jax.random.key(0)), x)
    np.testing.assert_array_equal(_apply(1.0, x, jax.random.key(0)), jnp.zeros_like(x))


def test_bf16_input_keeps_its_dtype():
    x = jnp.ones((4, 10), jnp.bfloat16)
    assert _apply(0.1, x, jax.random.key(0)).dtype == jnp.bfloat16
