"""JSMA: the chunked pair search against a brute force over all pairs, the known first pair on a
two-class linear softmax (increase and decrease), no repeated feature 0 when no pair is valid,
and the feature budget gamma."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target, jsma
from defenses_jax.attacks.jsma import best_pair

D = 36
rng = np.random.default_rng(0)
W2 = rng.normal(size=(D, 2)).astype(np.float32)
X = rng.uniform(0.2, 0.8, (6, 6, 6, 1)).astype(np.float32)
two_class = lambda z: z.reshape(z.shape[0], -1) @ W2


@pytest.mark.parametrize("increase", [True, False])
def test_chunked_pair_search_matches_a_brute_force_over_all_pairs(increase):
  alpha = rng.normal(size=(3, 37)).astype(np.float32)
  beta = rng.normal(size=(3, 37)).astype(np.float32)
  score, p, q = best_pair(jnp.asarray(alpha), jnp.asarray(beta), increase, chunk_size=8)
  for i in range(3):
    a = alpha[i][:, None] + alpha[i][None, :]
    b = beta[i][:, None] + beta[i][None, :]
    valid = ((a > 0) & (b < 0) if increase else (a < 0) & (b > 0)) & ~np.eye(37, dtype=bool)
    scores = np.where(valid, -a * b, 0.0)
    best = np.argmax(scores)
    assert (int(p[i]), int(q[i])) == divmod(int(best), 37)
    assert float(score[i]) == pytest.approx(scores.max(), rel=1e-5)


@pytest.mark.parametrize("theta", [0.1, -0.1])
def test_first_pair_on_a_two_class_linear_softmax_is_known(theta):
  # dF_t/dx = F_t F_o (W_t - W_o) and beta = -alpha: the pair is the two largest entries of
  # W_t - W_o (increase) or the two smallest (decrease). gamma allows exactly one pair.
  y = np.argmax(two_class(X), -1)
  t = 1 - y
  x_adv, info = jsma(as_target(two_class), jnp.asarray(X), jnp.asarray(y), jax.random.key(0),
                     theta=theta, gamma=2 / D, target="given", targets=jnp.asarray(t))
  changed = np.asarray(x_adv).reshape(len(X), -1) - X.reshape(len(X), -1)
  for i in range(len(X)):
    direction = W2[:, t[i]] - W2[:, y[i]]
    expected = np.argsort(direction)[-2:] if theta > 0 else np.argsort(direction)[:2]
    assert sorted(np.flatnonzero(changed[i])) == sorted(expected)
    np.testing.assert_allclose(changed[i][expected], theta, rtol=1e-5)
  np.testing.assert_array_equal(info["l0"], 2)


def test_a_saturated_softmax_picks_the_same_first_pair_as_an_unsaturated_one():
  # Logits scaled by 1000: F_t is e^-hundreds, 0 in float32, so dF_t/dx vanishes and the
  # probability form of JSMA finds no pair. The pair is a property of W_t - W_o, not the scale.
  y = np.argmax(two_class(X), -1)
  t = jnp.asarray(1 - y)
  confident = lambda z: 1000.0 * two_class(z)
  assert float(jax.nn.softmax(confident(jnp.asarray(X)))[np.arange(len(X)), t].max()) == 0.0
  first = lambda f: np.asarray(jsma(as_target(f), jnp.asarray(X), jnp.asarray(y), jax.random.key(0),
                                    gamma=2 / D, target="given", targets=t)[0])
  changed = first(confident).reshape(len(X), -1) != X.reshape(len(X), -1)
  np.testing.assert_array_equal(changed, first(two_class).reshape(len(X), -1) != X.reshape(
      len(X), -1))
  assert (changed.sum(-1) == 2).all()


def test_no_valid_pair_changes_nothing_instead_of_feature_zero():
  constant = lambda z: jnp.zeros((z.shape[0], 3)) + jnp.asarray([1.0, 0.0, 0.0])
  x_adv, info = jsma(as_target(constant), jnp.asarray(X), jnp.zeros(len(X), jnp.int32),
                     jax.random.key(0))
  np.testing.assert_array_equal(x_adv, X)
  np.testing.assert_array_equal(info["iterations"], 0)


def test_gamma_bounds_the_changed_features_and_targets_are_reached():
  w = rng.normal(size=(D, 5)).astype(np.float32)
  five = lambda z: z.reshape(z.shape[0], -1) @ w
  x = jnp.asarray(rng.uniform(0.2, 0.8, (32, 6, 6, 1)).astype(np.float32))
  y = jnp.argmax(five(x), -1)
  _, info = jsma(as_target(five), x, y, jax.random.key(1), theta=1.0, gamma=0.3)
  assert int(info["l0"].max()) <= 2 * int(D * 0.3 / 2)
  t = np.asarray(info["targets"])
  assert (t != np.asarray(y)).all()  # Random wrong targets.
  assert 0.5 < float(info["success"].mean())
  _, info = jsma(as_target(five), x, y, jax.random.key(1), target="least_likely", gamma=0.3)
  np.testing.assert_array_equal(info["targets"], np.argmin(five(x), -1))


def test_targets_mean_given_targets_and_a_conflicting_target_is_refused():
  y = np.argmax(two_class(X), -1)
  t = jnp.asarray(1 - y)
  _, info = jsma(as_target(two_class), jnp.asarray(X), jnp.asarray(y), jax.random.key(0), targets=t)
  np.testing.assert_array_equal(info["targets"], t)
  with pytest.raises(ValueError, match="target='given'"):
    jsma(as_target(two_class), jnp.asarray(X), jnp.asarray(y), jax.random.key(0), target="random",
         targets=t)
