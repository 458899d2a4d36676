"""UAP on a linear binary classifier f(x) = w.x + b (logits [0, f]): every DeepFool step is
along -w, so the universal perturbation's direction, size and fooling rate are known exactly
(reference/algorithms.md section 2). Then a model with two boundaries no v of radius eps crosses
at once, where the fooling rate rises and falls over passes: the fit must return its best pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import apply_perturbation, as_target, uap

D = 16
W = np.where(np.random.default_rng(0).uniform(size=D) < 0.5, -1.0, 1.0).astype(np.float32)


def _linear_problem(seed=1, n=40):
  """Images inside [0.4, 0.6] (the box never clips x + v here) all of class 1 (f > 0)."""
  x = np.random.default_rng(seed).uniform(0.4, 0.6, (n, D)).astype(np.float32)
  b = np.float32(-(x @ W).min() + 0.02)
  logits_fn = lambda z: jnp.stack([jnp.zeros(z.shape[0]), z @ W + b], -1)
  return x, (x @ W + b), logits_fn


def test_linf_uap_saturates_to_minus_eps_sign_w_and_fools_the_analytic_fraction():
  x, f, logits_fn = _linear_problem()
  eps = 0.03
  reach = eps * np.abs(W).sum()  # f(x + v) = f(x) - eps ||w||_1 at v = -eps sign(w).
  assert 0 < np.mean(f < reach) < 1  # Some images are out of reach: the target is unreachable.
  v, info = jax.jit(lambda x, k: uap(as_target(logits_fn), x, k, eps=eps, norm="linf", delta=0.0,
                                     max_passes=3))(jnp.asarray(x), jax.random.key(0))
  np.testing.assert_allclose(v, -eps * np.sign(W), atol=1e-6)
  assert float(info["fooling_rate"]) == pytest.approx(float(np.mean(f < reach)))
  assert int(info["passes"]) == 3  # delta = 0 is unreachable: the bound stops the fit.
  np.testing.assert_allclose(info["fooling_rate_per_pass"][-1], info["fooling_rate"])


def test_l2_uap_points_along_minus_w_inside_its_ball():
  x, _, logits_fn = _linear_problem(seed=2)
  eps = 0.1
  v, info = uap(as_target(logits_fn), jnp.asarray(x), jax.random.key(0), eps=eps, norm="l2",
                delta=0.0, max_passes=2)
  cosine = float(jnp.dot(v, W) / (jnp.linalg.norm(v) * np.linalg.norm(W)))
  assert cosine < -0.999
  assert float(jnp.linalg.norm(v)) <= eps * (1 + 1e-5)
  assert float(jnp.linalg.norm(v)) == pytest.approx(eps, rel=1e-4)  # Out-of-reach images saturate it.
  assert float(info["l2"]) == pytest.approx(float(jnp.linalg.norm(v)))


def test_uap_stops_at_the_target_fooling_rate():
  x, f, logits_fn = _linear_problem(seed=3)
  eps = 1.2 * f.max() / np.abs(W).sum()  # Every image is within reach.
  v, info = uap(as_target(logits_fn), jnp.asarray(x), jax.random.key(1), eps=float(eps), delta=0.2,
                max_passes=5)
  assert int(info["passes"]) == 1
  assert float(info["fooling_rate"]) >= 0.8
  rates = np.asarray(info["fooling_rate_per_pass"])
  np.testing.assert_array_equal(rates[1:], -1.0)  # Passes not run.
  fooled = np.asarray(jnp.argmax(logits_fn(apply_perturbation(v, jnp.asarray(x))), -1)) == 0
  assert float(info["fooling_rate"]) == pytest.approx(float(np.mean(fooled)))


def test_apply_perturbation_clips_to_the_box():
  x = jnp.asarray([[0.0, 0.5, 1.0]])
  np.testing.assert_allclose(apply_perturbation(jnp.asarray([-0.2, 0.2, 0.2]), x),
                             [[0.0, 0.7, 1.0]])


def test_uap_refuses_a_missing_or_meaningless_radius():
  x, _, logits_fn = _linear_problem()
  with pytest.raises(TypeError):
    # No default radius (the reference's 10).
    uap(as_target(logits_fn), jnp.asarray(x), jax.random.key(0))
  with pytest.raises(ValueError, match="radius"):
    uap(as_target(logits_fn), jnp.asarray(x), jax.random.key(0), eps=0.0)


# Two groups of images, each one step from its own boundary: group A is fooled by v[0] > a_i,
# group B by v[1] > b_j (logits [0, 10 (z0 - C), 10 (z1 - C)], clean class 0). Every threshold
# lies in [0.075, 0.095] and the L2 radius is 0.1: no v fools an image of each group at once
# (0.075^2 + 0.075^2 > 0.1^2). A pass ends pointing at whichever group its last unfooled images
# pulled it to, so the fooling rate rises and falls from pass to pass.
C = 0.6


def _two_group_logits(z):
  return jnp.stack([jnp.zeros(z.shape[0]), 10.0 * (z[:, 0] - C), 10.0 * (z[:, 1] - C)], -1)


def _two_group_images(na=5, nb=3):
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.075, 0.095, na), rng.uniform(0.075, 0.095, nb)
  return np.concatenate([np.stack([C - a, np.full(na, C - 0.3)], 1),
                         np.stack([np.full(nb, C - 0.3), C - b], 1)]).astype(np.float32)


def test_uap_returns_its_best_pass_when_a_later_pass_fools_fewer():
  x = _two_group_images()
  fit = jax.jit(lambda x, k: uap(as_target(_two_group_logits), x, k, eps=0.1, norm="l2", delta=0.0,
                                 max_passes=6))
  informative = 0
  for seed in range(6):
    v, info = fit(jnp.asarray(x), jax.random.key(seed))
    v = np.asarray(v)
    # Recomputed here, in float32 as the model: clean class 0 everywhere, fooled iff x + v
    # crosses either boundary (argmax of [0, 10 (z0 - C), 10 (z1 - C)] leaves class 0).
    z = np.clip(x + v, np.float32(0), np.float32(1))
    own_rate = float(np.mean(np.maximum(z[:, 0], z[:, 1]) > np.float32(C)))
    rates = np.asarray(info["fooling_rate_per_pass"])
    assert int(info["passes"]) == 6 and np.all(rates >= 0)  # delta = 0: every pass runs.
    assert float(np.linalg.norm(v)) <= 0.1 * (1 + 1e-5)
    assert float(info["fooling_rate"]) == pytest.approx(rates.max()), seed
    assert own_rate == pytest.approx(float(info["fooling_rate"])), seed
    informative += rates[-1] < rates.max()
  # Runs whose last pass fools fewer than their best: without them the test could not tell the
  # best pass from the last (6 of 6 on JAX 0.10.2).
  assert informative >= 3
