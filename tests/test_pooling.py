"""models/pooling.py: the tiled max pool gives nn.max_pool's values and gradients exactly, ties
included, and falls back to it for pools it does not cover."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.models import pooling

CASES = [  # (input shape, window): even and odd sizes, a square and an oblong window.
    ((3, 8, 8, 4), (2, 2)),
    ((3, 9, 7, 2), (2, 2)),
    ((2, 9, 9, 3), (3, 3)),
    ((2, 8, 9, 3), (2, 3)),
]


def _tied_input(shape, seed=0):
  """Values in {0, 1, 2}: most windows hold their maximum more than once."""
  return jnp.asarray(np.random.default_rng(seed).integers(0, 3, shape), jnp.float32)


@pytest.mark.parametrize("shape,window", CASES)
def test_values_and_gradients_are_max_pools_exactly_with_ties(shape, window):
  x = _tied_input(shape)
  plain = lambda z: nn.max_pool(z, window, strides=window)
  ours = lambda z: pooling.max_pool(z, window, strides=window)
  np.testing.assert_array_equal(ours(x), plain(x))
  g = jax.random.normal(jax.random.key(1), plain(x).shape)
  want = jax.vjp(plain, x)[1](g)[0]
  got = jax.jit(lambda z, t: jax.vjp(ours, z)[1](t)[0])(x, g)
  # select-and-scatter's rule: each window's gradient to its first maximum, row-major.
  np.testing.assert_array_equal(got, want)
  assert np.count_nonzero(np.asarray(got)) == np.count_nonzero(np.asarray(g))


def test_a_gradient_penalty_through_the_pool_is_max_pools():
  """Reverse over reverse: the derivative of a loss on the input gradient (conv -> pool)."""
  x = _tied_input((2, 8, 8, 3)) / 2 + jax.random.uniform(jax.random.key(0), (2, 8, 8, 3)) / 8
  conv = nn.Conv(4, (3, 3), padding="SAME")
  params = conv.init(jax.random.key(1), x)

  def penalty(pool):
    loss = lambda p, z: jnp.sum(jnp.tanh(pool(conv.apply(p, z), (2, 2), (2, 2))) ** 2)
    return lambda p: jnp.sum(jax.grad(loss, 1)(p, x) ** 2)
  want = jax.grad(penalty(lambda z, w, s: nn.max_pool(z, w, strides=s)))(params)
  got = jax.grad(penalty(pooling.max_pool))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


@pytest.mark.parametrize("kwargs", [{"strides": (1, 1)}, {"strides": (2, 2), "padding": "SAME"},
                                    {}])  # flax's default stride is 1, not the window.
def test_other_pools_fall_back_to_flax(kwargs):
  x = _tied_input((2, 9, 9, 3))
  plain = lambda z: nn.max_pool(z, (2, 2), **kwargs)
  ours = lambda z: pooling.max_pool(z, (2, 2), **kwargs)
  np.testing.assert_array_equal(ours(x), plain(x))
  g = jnp.ones_like(plain(x))
  np.testing.assert_array_equal(jax.vjp(ours, x)[1](g)[0], jax.vjp(plain, x)[1](g)[0])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite is for XLA CPU")
def test_the_gradient_compiles_without_windowed_reductions_or_scatters():
  """XLA CPU compiles max_pool's gradient as a select-and-scatter, or as a reduce-window that
  tracks each window's argmax and a scatter: the slow part this replaces."""
  x = _tied_input((2, 8, 8, 4))
  ops = lambda pool: set(re.findall(r"= \S+ ([a-z-]+)\(", jax.jit(jax.grad(
      lambda z: jnp.sum(pool(z, (2, 2), (2, 2)) ** 2))).lower(x).compile().as_text()))
  windowed = {"reduce-window", "scatter", "select-and-scatter"}
  assert windowed & ops(lambda z, w, s: nn.max_pool(z, w, strides=s))
  assert not windowed & ops(pooling.max_pool)
