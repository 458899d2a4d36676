"""ZOO: finite differences and the ZOO-ADAM / Newton coordinate steps against analytic answers,
exactly 2B + 1 queries per iteration, importance sampling that refreshes, kappa honoured, and the
minimal L2 distance to a linear boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.query import Oracle
from defenses_jax.attacks.query.zoo import (coordinate_step, importance_probabilities,
                                            initial_solver_state, sample_coordinates, zoo,
                                            zoo_query_budget)

SHAPE = (4, 4, 1)
D = 16
W_DIFF = np.random.default_rng(0).normal(size=D)


def two_class(bias):
  """Score 1 - score 0 = w.(x - 0.5) - bias."""
  def fn(x):
    z = (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(W_DIFF, x.dtype) - bias
    return jnp.stack([jnp.zeros_like(z), z], -1)
  return fn


class RecordingOracle(Oracle):
  """Counts, outside the attack, the queries the Oracle answers per example."""

  def __init__(self, logits_fn, *args, **kwargs):  # A plain model's Oracle.
    super().__init__(as_target(logits_fn), *args, **kwargs)
    self.tally = 0

  def query_many(self, xs, counts, key, active=None):
    answers, counts, answered = super().query_many(xs, counts, key, active)
    jax.debug.callback(self._record, answered, xs.shape[1])
    return answers, counts, answered

  def _record(self, answered, q):
    self.tally = self.tally + np.asarray(answered).astype(int) * q


def numpy_adam(w, grad, m, v, t, lr):
  """ZOO-ADAM as the reference's numba solver writes it (bias correction in one factor)."""
  m = 0.9 * m + 0.1 * grad
  v = 0.999 * v + 0.001 * grad ** 2
  corr = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
  return w - lr * corr * m / (np.sqrt(v) + 1e-8), m, v, t + 1


def test_all_coordinates_with_exact_differences_is_a_bias_corrected_adam_step():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    a, c = rng.uniform(0.5, 2.0, (2, 6)), rng.normal(size=(2, 6))
    f = lambda w: np.sum(a * w ** 2 + c * w + np.sin(w), -1)
    grad_f = lambda w: 2 * a * w + c + np.cos(w)
    objective = lambda points: (jnp.sum(a[:, None] * points ** 2 + c[:, None] * points
                                        + jnp.sin(points), -1), None)
    state = initial_solver_state(2, 6, jnp.float64)
    idx = jnp.tile(jnp.arange(6), (2, 1))
    w, m, v, t = np.zeros((2, 6)), np.zeros((2, 6)), np.zeros((2, 6)), np.ones((2, 6))
    for _ in range(3):
      state, losses, _ = coordinate_step(objective, state, idx, h=1e-4, learning_rate=0.1,
                                         solver="adam")
      np.testing.assert_allclose(losses[:, 0], f(w), rtol=1e-8)  # Row 0: the current point.
      w, m, v, t = numpy_adam(w, grad_f(w), m, v, t, 0.1)
      np.testing.assert_allclose(state.w, w, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(state.t, 4)
    # Fewer coordinates: only the sampled ones move, and only their counters advance.
    state = initial_solver_state(2, 6, jnp.float64)
    state, _, _ = coordinate_step(objective, state, jnp.asarray([[0, 3], [5, 1]]), h=1e-4,
                                  learning_rate=0.1, solver="adam")
    moved = np.asarray(state.w) != 0
    np.testing.assert_array_equal(moved, [[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(state.t), 1 + moved)


def test_newton_step_reaches_a_quadratics_minimum_and_clamps_negative_curvature():
  with jax.enable_x64(True):
    a = np.asarray([[0.5, 2.0, -1.0]])  # The third coordinate is concave.
    c = np.asarray([[1.0, -3.0, 0.5]])
    objective = lambda p: (jnp.sum(a[:, None] * p ** 2 + c[:, None] * p, -1), None)
    state, _, _ = coordinate_step(objective, initial_solver_state(1, 3, jnp.float64),
                                  jnp.asarray([[0, 1, 2]]), h=1e-4, learning_rate=1.0,
                                  solver="newton")
    # w = -g / hess: -c / (2a) where the curvature is positive, -c / 1 where it is negative.
    np.testing.assert_allclose(state.w, [[-1.0, 0.75, -0.5]], rtol=1e-6)


def test_exactly_two_b_plus_one_queries_per_iteration():
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  oracle = RecordingOracle(two_class(1e4), "scores", 10_000)
  params = dict(binary_search_steps=2, max_iterations=5, coordinates=4, early_stop_iters=100)
  _, info = jax.jit(lambda x, y, k: zoo(oracle, x, y, k, **params))(
      x, jnp.zeros(2, jnp.int32), jax.random.key(0))
  np.testing.assert_array_equal(info["queries"], [2 * 5 * 9] * 2)
  np.testing.assert_array_equal(oracle.tally, [2 * 5 * 9] * 2)
  assert zoo_query_budget(**params) == 90
  assert zoo_query_budget() == 9 * 1000 * 257
  # A smaller Oracle budget stops each example at the last whole iteration that fits.
  small = RecordingOracle(two_class(1e4), "scores", 40)
  _, info = jax.jit(lambda x, y, k: zoo(small, x, y, k, **params))(
      x, jnp.zeros(2, jnp.int32), jax.random.key(0))
  np.testing.assert_array_equal(info["queries"], [36, 36])
  np.testing.assert_array_equal(small.tally, [36, 36])


def test_importance_probabilities_are_blockwise_and_refresh_with_the_modifier():
  shape = (16, 16, 2)  # Blocks of side 16 // 8 = 2, per channel.
  w = np.zeros((1,) + shape, np.float32)
  w[0, 4, 6, 1] = -3.0  # One large coordinate: its 2 x 2 block (channel 1) gets the mass.
  w[0, 10, 0, 0] = 1.0
  p = np.asarray(importance_probabilities(jnp.asarray(w.reshape(1, -1)), shape)).reshape(shape)
  assert p.sum() == pytest.approx(1.0, rel=1e-5)
  np.testing.assert_allclose(p[4:6, 6:8, 1], p[4, 6, 1])  # Constant within the block.
  uniform = 0.1 / p.size
  assert p[4, 6, 1] == pytest.approx(0.9 * 3 / (4 * 3 + 4 * 1) + uniform, rel=1e-5)
  assert p[0, 0, 0] == pytest.approx(uniform, rel=1e-5)  # Starved blocks keep the uniform share.
  # Zero modifier (the first iteration): uniform.
  np.testing.assert_allclose(importance_probabilities(jnp.zeros((1, p.size)), shape), 1 / p.size)
  # Sampling without replacement follows the probabilities: the heavy block is drawn first.
  idx = np.asarray(sample_coordinates(jax.random.key(0), jnp.asarray(p.reshape(1, -1)), 4))
  assert len(set(idx[0])) == 4


def test_finds_the_minimal_l2_distance_to_a_linear_boundary_and_honours_kappa():
  # For a linear model the smallest L2 change to reach margin kappa is (bias + kappa) / ||w||
  # (x at 0.5: the box does not bind). ZOO with B = d is coordinate Adam on the CW objective.
  bias = 1.0
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  y = jnp.zeros(2, jnp.int32)
  oracle = Oracle(as_target(two_class(bias)), "scores", 10**7)
  for kappa in (0.0, 2.0):
    x_adv, info = jax.jit(lambda x, y, k: zoo(oracle, x, y, k, kappa=kappa, coordinates=D,
                                              binary_search_steps=6, max_iterations=300,
                                              learning_rate=0.05, initial_const=1.0))(
        x, y, jax.random.key(0))
    assert info["success"].all()
    optimum = (1.0 + kappa) / np.linalg.norm(W_DIFF)
    assert np.all(np.asarray(info["l2"]) <= 1.1 * optimum), (info["l2"], optimum)
    assert np.all(np.asarray(info["l2"]) >= optimum * (1 - 1e-3))
    margins = np.asarray(two_class(bias)(x_adv) @ jnp.asarray([-1.0, 1.0]))
    assert np.all(margins >= kappa - 1e-4)  # Success means margin >= kappa, on log-probs too.


def test_targeted_tanh_and_reduced_space():
  w3 = jnp.asarray(np.random.default_rng(3).normal(size=(D, 3)), jnp.float32)
  logits = lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w3
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  clean = np.asarray(logits(x)).argmax(-1)
  targets = jnp.asarray((clean + 1) % 3, jnp.int32)
  oracle = Oracle(as_target(logits), "scores", 10**6)
  for extra in ({"use_tanh": True}, {"reduced_size": 2}):
    x_adv, info = jax.jit(lambda x, y, k: zoo(oracle, x, y, k,
                                              binary_search_steps=3, max_iterations=200,
                                              coordinates=8, initial_const=1.0,
                                              learning_rate=0.05, target="given",
                                              targets=targets, **extra))(
        x, jnp.asarray(clean, jnp.int32), jax.random.key(1))
    assert info["success"].all(), extra
    np.testing.assert_array_equal(np.asarray(logits(x_adv)).argmax(-1), targets)
    assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0


def test_bad_input_is_refused_before_compute():
  x, y = jnp.zeros((2,) + SHAPE), jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match="scores"):
    zoo(Oracle(as_target(two_class(0.0)), "labels", 10), x, y, jax.random.key(0))
  oracle = Oracle(as_target(two_class(0.0)), "scores", 10)
  with pytest.raises(ValueError, match="solver"):
    zoo(oracle, x, y, jax.random.key(0), solver="sgd")
  with pytest.raises(ValueError, match="target"):
    zoo(oracle, x, y, jax.random.key(0), target="least_likely")
  with pytest.raises(ValueError, match="kappa"):
    zoo(oracle, x, y, jax.random.key(0), kappa=-1.0)


def test_the_objective_honours_kappa_on_log_probabilities():
  from defenses_jax.attacks.query.zoo import zoo_objective
  # Two classes with logits (0, -3): margin of the wrong class -3, on logits and log-probs.
  scores = jnp.asarray([[[0.0, -3.0], [0.0, 4.0]]])  # (N=1, Q=2, K=2)
  l2sq = jnp.asarray([[0.5, 0.25]])
  for use_log in (True, False):
    losses = zoo_objective(scores, l2sq, jnp.asarray([0]), None, jnp.asarray([2.0]), 5.0,
                           use_log)
    # Row 0: 0.5 + 2 * (5 - (-3)); row 1: margin 4 < kappa 5, so 0.25 + 2 * 1.
    np.testing.assert_allclose(losses, [[16.5, 2.25]], rtol=1e-6)
  targeted = zoo_objective(scores, l2sq, jnp.asarray([0]), jnp.asarray([1]), jnp.asarray([1.0]),
                           0.0, True)
  np.testing.assert_allclose(targeted, [[3.5, 0.25]], rtol=1e-6)
