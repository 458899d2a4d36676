"""Square Attack: every query inside the ball and the box, the known answer on a linear model,
queries counted by the Oracle and stopping at the budget, AutoAttack's L2 bump shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.query import Oracle
from defenses_jax.attacks.query.square import _eta_rectangles, _meta_pseudo_gaussian, square

SHAPE = (8, 8, 1)
D = int(np.prod(SHAPE))
W_DIFF = np.random.default_rng(0).choice([-1.0, 1.0], D) * np.random.default_rng(1).uniform(
    0.5, 1.5, D)


def linear_logits(x):
  """Two classes; score 1 - score 0 = w.(x - 0.5) - b, with b per example set by the test."""
  z = (x.reshape(x.shape[0], -1) - 0.5) @ jnp.asarray(W_DIFF, x.dtype)
  return jnp.stack([jnp.zeros_like(z), z], -1)


def shifted(bias):
  return lambda x: linear_logits(x) - jnp.stack([jnp.zeros_like(bias), bias], -1)


class RecordingOracle(Oracle):
  """An Oracle that also tells the host every point it answered and how many queries it
  answered per example: an account of the attack's queries kept outside the attack."""

  def __init__(self, logits_fn, *args, **kwargs):  # A plain model's Oracle.
    super().__init__(as_target(logits_fn), *args, **kwargs)
    self.points, self.tally = [], None

  def query(self, x, counts, key, active=None):
    answers, counts, answered = super().query(x, counts, key, active)
    jax.debug.callback(self._record, x, answered)
    return answers, counts, answered

  def _record(self, x, answered):
    x, answered = np.asarray(x), np.asarray(answered)
    self.points.append(x[answered])
    self.tally = answered.astype(int) if self.tally is None else self.tally + answered


def run(oracle, x, y, **params):
  return jax.jit(lambda x, y, k: square(oracle, x, y, k, **params))(x, y, jax.random.key(0))


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.8)])
def test_every_query_stays_in_the_ball_and_the_box(norm, eps):
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (3,) + SHAPE), jnp.float32)
  x = x.at[0].set(0.0)  # At a corner of the box: the box clips half of every move.
  y = jnp.zeros(3, jnp.int32)
  oracle = RecordingOracle(shifted(jnp.full(3, 100.0)), "scores", 300)  # Never fooled.
  x_adv, info = run(oracle, x, y, eps=eps, norm=norm, max_queries=300)
  np.testing.assert_array_equal(x_adv, x)  # Failures come back unchanged.
  assert not info["success"].any()
  queried = np.concatenate(oracle.points)
  assert len(queried) > 600  # The recorder saw the run: most of 3 x 300 queries.
  starts = np.concatenate([np.asarray(x)[np.asarray(a)] for a in [[True] * 3]])
  assert queried.min() >= 0.0 and queried.max() <= 1.0
  # Each answered point belongs to one of the three examples: its distance to the nearest x.
  dist = np.abs(queried[:, None] - starts[None]).reshape(len(queried), 3, -1)
  if norm == "linf":
    assert dist.max(-1).min(-1).max() <= eps + 1e-6
  else:
    l2 = np.sqrt(np.sum(dist ** 2, -1)).min(-1)
    assert l2.max() <= eps * (1 + 1e-5)
    assert l2[len(l2) // 2:].min() > 0.5 * eps  # L2 Square keeps its mass near the sphere.


def test_linf_finds_the_analytic_corner_and_never_beats_the_analytic_minimum():
  # The largest drop of the margin inside the L-inf ball is eps * ||w||_1 (the sign corner; x
  # sits at 0.5, so the box does not clip). One example needs 80% of it, one 120%.
  eps = 0.05
  best_drop = eps * np.abs(W_DIFF).sum()
  bias = jnp.asarray([0.8 * best_drop, 1.2 * best_drop], jnp.float32)
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  y = jnp.zeros(2, jnp.int32)
  oracle = RecordingOracle(shifted(bias), "scores", 2000)
  x_adv, info = run(oracle, x, y, eps=eps, max_queries=2000)
  np.testing.assert_array_equal(info["success"], [True, False])
  assert float(shifted(bias)(x_adv)[0, 1] - shifted(bias)(x_adv)[0, 0]) > 0
  assert float(info["linf"][0]) <= eps + 1e-6
  # The attack reports exactly the queries the Oracle answered; the unreachable example runs
  # until its budget is spent (minus the candidates equal to its best point, never sent).
  np.testing.assert_array_equal(info["queries"], oracle.tally)
  assert 1 < int(info["queries"][0]) < int(info["queries"][1]) <= 2000


def test_l2_finds_a_reachable_boundary():
  eps = 1.0
  best_drop = eps * np.linalg.norm(W_DIFF)  # Along w, unclipped at x = 0.5.
  bias = jnp.asarray([0.5 * best_drop, 1.05 * best_drop], jnp.float32)
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  oracle = Oracle(as_target(shifted(bias)), "scores", 3000)
  _, info = run(oracle, x, jnp.zeros(2, jnp.int32), eps=eps, norm="l2", max_queries=3000)
  np.testing.assert_array_equal(info["success"], [True, False])
  assert float(info["l2"][0]) <= eps * (1 + 1e-5)


def test_targeted_and_the_oracle_budget_stops_an_example():
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  three = lambda z: jnp.concatenate([linear_logits(z), jnp.full((2, 1), -50.0)], -1)
  oracle = RecordingOracle(three, "scores", 40)  # Class 2 is out of reach.
  _, info = run(oracle, x, jnp.zeros(2, jnp.int32), eps=0.05, max_queries=5000,
                target="given", targets=jnp.asarray([2, 2]))
  assert not info["success"].any()
  np.testing.assert_array_equal(info["queries"], [40, 40])  # The Oracle's budget, not 5,000.
  np.testing.assert_array_equal(oracle.tally, [40, 40])


def test_bad_input_is_refused_before_compute():
  x, y = jnp.zeros((2,) + SHAPE), jnp.zeros(2, jnp.int32)
  oracle = Oracle(as_target(linear_logits), "scores", 10)
  with pytest.raises(ValueError, match="eps > 0"):
    square(oracle, x, y, jax.random.key(0), eps=0.0)
  with pytest.raises(ValueError, match="images"):
    square(oracle, x.reshape(2, -1), y, jax.random.key(0), eps=0.1)
  with pytest.raises(ValueError, match="target"):
    square(oracle, x, y, jax.random.key(0), eps=0.1, target="least_likely")
  with pytest.raises(ValueError, match="loss"):
    square(oracle, x, y, jax.random.key(0), eps=0.1, loss="dlr")


def test_l2_bumps_match_autoattack():
  # AutoAttack's eta_rectangles(3, 3): ring 0 weighs 1 + 1/4, ring 1 weighs 1/4; unit norm.
  expected = np.full((3, 3), 0.25)
  expected[1, 1] = 1.25
  np.testing.assert_allclose(_eta_rectangles(3, 3), expected / np.linalg.norm(expected))
  bump = _meta_pseudo_gaussian(4)  # Positive top half, negative bottom half, unit norm.
  assert (bump[:2] > 0).all() and (bump[2:] < 0).all()
  assert np.linalg.norm(bump) == pytest.approx(1.0)


def test_l2_queries_lie_on_the_sphere_when_the_box_does_not_clip():
  # |delta_i| <= ||delta||_2 = 0.4 < 0.5: around x = 0.5 the box never clips, so every query is
  # the rescaled perturbation at exactly radius eps (AutoAttack keeps the L2 mass at eps).
  x = jnp.full((2,) + SHAPE, 0.5, jnp.float32)
  oracle = RecordingOracle(shifted(jnp.full(2, 100.0)), "scores", 200)
  run(oracle, x, jnp.zeros(2, jnp.int32), eps=0.4, norm="l2", max_queries=200)
  queried = np.concatenate(oracle.points)
  np.testing.assert_allclose(np.linalg.norm((queried - 0.5).reshape(len(queried), -1), axis=-1),
                             0.4, rtol=1e-4)
