"""models/dropout.py: masks from 8 or 16 bits per value, checked against the random words."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.models import dropout


def _apply(rate, x, key, **fields):
  return dropout.Dropout(rate, deterministic=False, **fields).apply({}, x,
                                                                   rngs={"dropout": key})


@pytest.mark.parametrize("rate,bits", [(0.25, 8), (0.5, 8), (0.3, 16)])
def test_the_mask_is_read_from_the_random_words(rate, bits):
  """Known answer: the key's 32-bit words split little-endian into 8- or 16-bit values; a
  value below round(rate * 2^bits) drops its activation."""
  shape, key = (8, 16, 33), jax.random.key(11)  # A size no multiple of 4: a partial word.
  size = 8 * 16 * 33
  per_word = 32 // bits
  words = np.asarray(jax.random.bits(jax.random.fold_in(key, 0), (-(-size // per_word),),
                                     jnp.uint32))
  values = words.astype("<u4").view("<u1" if bits == 8 else "<u2")[:size].reshape(shape)
  threshold = round(rate * 2**bits)
  x = jnp.arange(1.0, size + 1).reshape(shape)
  got = dropout.Dropout(rate, deterministic=False).apply(
      {}, x, rng=jax.random.fold_in(key, 0))
  keep_probability = 1 - threshold / 2**bits
  want = np.where(values >= threshold, np.asarray(x) / np.float32(keep_probability), 0.0)
  # XLA may multiply by the reciprocal: equal up to one rounding.
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.3, 0.1])
def test_the_dropped_fraction_is_the_rate_and_the_mean_is_kept(rate):
  x = jnp.ones((400, 1000))
  y = np.asarray(_apply(rate, x, jax.random.key(3)))
  dropped = np.mean(y == 0)
  assert abs(dropped - rate) < 4 * np.sqrt(rate * (1 - rate) / y.size)
  # Kept values are scaled by the exact keep probability: the mean is 1 up to sampling noise.
  assert abs(y.mean() - 1) < 4 * np.sqrt(rate / (1 - rate) / y.size)


def test_same_key_same_mask_and_keys_differ():
  x = jnp.ones((64, 64))
  a, b = _apply(0.5, x, jax.random.key(0)), _apply(0.5, x, jax.random.key(0))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, _apply(0.5, x, jax.random.key(1)))


def test_values_of_a_word_are_independent_positions():
  """Neighbouring values come from the same word: their masks must still differ."""
  x = jnp.ones((1, 4096))
  y = np.asarray(_apply(0.5, x, jax.random.key(5))).reshape(-1, 4) == 0
  # Under independence each of the 16 patterns of 4 neighbours appears 64 +- 8 times.
  counts = np.bincount(y @ np.array([1, 2, 4, 8]), minlength=16)
  assert counts.min() > 30 and counts.max() < 100


def test_broadcast_dims_share_the_mask():
  y = np.asarray(_apply(0.5, jnp.ones((8, 6, 5)), jax.random.key(2), broadcast_dims=(1,)))
  assert (y == y[:, :1, :]).all() and 0 < (y == 0).mean() < 1


def test_deterministic_zero_and_one_are_flaxs_edge_cases():
  x = jax.random.normal(jax.random.key(0), (5, 4))
  np.testing.assert_array_equal(dropout.Dropout(0.5, deterministic=True).apply({}, x), x)
  np.testing.assert_array_equal(_apply(0.0, x, jax.random.key(0)), x)
  np.testing.assert_array_equal(_apply(1.0, x, jax.random.key(0)), jnp.zeros_like(x))
  g = jax.grad(lambda z: _apply(1.0, z, jax.random.key(0)).sum())(x)
  assert np.isfinite(np.asarray(g)).all()


def test_gradient_is_the_mask_over_the_keep_probability():
  x = jax.random.normal(jax.random.key(0), (50, 20))
  y, back = jax.vjp(lambda z: _apply(0.25, z, jax.random.key(4)), x)
  g = back(jnp.ones_like(y))[0]
  np.testing.assert_allclose(g, np.where(np.asarray(y) != 0, 1 / 0.75, 0.0), rtol=1e-6)


def test_bfloat16_stays_bfloat16():
  y = _apply(0.25, jnp.ones((8, 8), jnp.bfloat16), jax.random.key(0))
  assert y.dtype == jnp.bfloat16


def test_a_rate_outside_zero_one_is_refused():
  with pytest.raises(ValueError, match="rate"):
    dropout.keep_mask(jax.random.key(0), 1.5, (3,))


def test_it_is_a_flax_dropout_for_modules_that_check():
  assert isinstance(dropout.Dropout(0.5), nn.Dropout)
