"""Sign-PGD on an antithetic ES gradient (the attack that broke k-WTA): the estimate on a
linear model, the known L-inf answer, queries counted exactly and frozen examples that stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target, attack_info
from defenses_jax.attacks.query import Oracle, es_sign_pgd
from defenses_jax.attacks.query.es_sign_pgd import (antithetic_gradient,
                                                    es_sign_pgd_query_budget)

D = 64
W = np.random.default_rng(0).choice([-1.0, 1.0], D) * np.random.default_rng(1).uniform(
    0.5, 1.5, D)
L1 = float(np.abs(W).sum())


def two_class(bias):
  """score 1 - score 0 = w.(x - 0.5) - bias: at x = 0.5 class 0 wins by `bias`, and the
  smallest L-inf perturbation that flips it is bias / ||w||_1 (the box is not in the way)."""
  bias = jnp.asarray(bias, jnp.float32)

  def logits(x):
    z = (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(W, x.dtype)
    return jnp.stack([jnp.zeros_like(z), z - bias[: x.shape[0]]], -1)

  return logits


def test_the_antithetic_estimate_points_along_the_margin_gradient():
  oracle = Oracle(as_target(two_class(np.full(2, 1.0))), "scores", 10**6)
  x = jnp.full((2, 8, 8, 1), 0.5)
  y = jnp.zeros(2, jnp.int32)
  g, counts, answered = jax.jit(lambda x: antithetic_gradient(
      oracle, x, y, oracle.initial_counts(2), jax.random.key(0), n=4000, sigma=8 / 255,
      chunk=500))(x)
  # margin = score 0 - score 1 = -w.(x - 0.5) + bias: its gradient is -w, exactly linear, so
  # each antithetic pair measures 2 sigma (-w.u) with no error; only the directions' spread
  # is left.
  g = np.asarray(g).reshape(2, -1)
  cosine = g @ -W / (np.linalg.norm(g, axis=1) * np.linalg.norm(W))
  assert np.all(cosine > 0.97), cosine
  np.testing.assert_array_equal(counts, [8000, 8000])
  assert bool(answered.all())


def run(bias, eps, **params):
  bias = np.asarray(bias, np.float32)
  params = dict(eps=eps, steps=60, step_size=0.01, samples=(400,), boundaries=(), **params)
  budget = es_sign_pgd_query_budget(**params)
  oracle = Oracle(as_target(two_class(bias)), "scores", budget)
  x = jnp.full((len(bias), 8, 8, 1), 0.5)
  y = jnp.zeros(len(bias), jnp.int32)
  x_adv, info = jax.jit(lambda x, k: es_sign_pgd(oracle, x, y, k, **params))(
      x, jax.random.key(1))
  return np.asarray(x_adv), info, budget, np.asarray(x)


def test_it_finds_the_known_linf_answer_and_fails_where_none_exists():
  # Minimal L-inf distances 0.05 (reachable within eps 0.1) and 0.15 (not).
  x_adv, info, budget, x = run([0.05 * L1, 0.15 * L1, -1.0], eps=0.1)
  assert list(np.asarray(info["success"])) == [True, False, True]
  assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
  assert float(two_class(np.array([0.05 * L1]))(jnp.asarray(x_adv[:1]))[0, 1]) > 0
  np.testing.assert_array_equal(x_adv[1], x[1])  # A failure comes back as x.
  queries = np.asarray(info["queries"])
  # Never fooled: the whole budget, 1 + 60 x (2 x 400 + 1); fooled at once (x already
  # misclassified): one query; fooled on the way: frozen before the budget ran out.
  assert budget == 1 + 60 * 801 and attack_info("es_sign_pgd").oracle_budget(
      dict(steps=60, samples=(400,), boundaries=())) == budget
  assert queries[1] == budget and queries[2] == 1 and 1 < queries[0] < budget


def test_the_direction_count_grows_as_the_reference_schedule():
  assert es_sign_pgd_query_budget() == 1 + 20 * 201 + 20 * 2001 + 60 * 40001
  assert es_sign_pgd_query_budget(steps=30) == 1 + 20 * 201 + 10 * 2001
  with pytest.raises(ValueError, match="one more entry"):
    es_sign_pgd(Oracle(as_target(two_class(np.ones(1))), "scores", 10), jnp.full((1, 8, 8, 1), 0.5),
                jnp.zeros(1, jnp.int32), jax.random.key(0), samples=(10, 20), boundaries=())
  with pytest.raises(ValueError, match="scores"):
    es_sign_pgd(Oracle(as_target(two_class(np.ones(1))), "labels", 10), jnp.full((1, 8, 8, 1), 0.5),
                jnp.zeros(1, jnp.int32), jax.random.key(0))
