"""Attacks against cases with known answers (linear classifiers have closed-form minimal
adversarial perturbations), plus the properties every attack must keep."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import predicted_other_than_when_rescored
from defenses_jax import attacks
from defenses_jax.attacks import as_target, objectives

SHAPE = (4, 4, 1)  # 16 pixels.


def linear_model(num_classes, seed=0):
  w = jax.random.normal(jax.random.key(seed), (16, num_classes))
  b = jax.random.normal(jax.random.key(seed + 100), (num_classes,)) * 0.1
  fn = lambda x: x.reshape(x.shape[0], -1) @ w + b
  return fn, w, b


def interior_inputs(n, seed=1):
  # Mid-grey inputs: the minimal perturbations below stay far from the [0, 1] box.
  return jax.random.uniform(jax.random.key(seed), (n, *SHAPE), minval=0.4, maxval=0.6)


def minimal_distances(fn, w, x, dual_norm, with_gaps=False):
  """min over j != y of |Z_j - Z_y| / ||w_j - w_y||_dual, the exact minimal perturbation (and,
  with_gaps, the logit gap |Z_j - Z_y| of that closest boundary)."""
  logits = fn(x)
  y = jnp.argmax(logits, -1)
  gaps = jnp.abs(logits - objectives.class_logit(logits, y)[:, None])
  diff = w.T[None, :, :] - w.T[y][:, None, :]  # (B, K, 16)
  norm = jnp.sqrt(jnp.sum(diff ** 2, -1)) if dual_norm == "l2" else jnp.sum(jnp.abs(diff), -1)
  ratio = jnp.where(jax.nn.one_hot(y, w.shape[1], dtype=bool), jnp.inf, gaps / norm)
  if with_gaps:
    closest = jnp.argmin(ratio, -1)
    return y, jnp.min(ratio, -1), jnp.take_along_axis(gaps, closest[:, None], -1)[:, 0]
  return y, jnp.min(ratio, -1)


@pytest.mark.parametrize("norm,dist_key,dual", [("l2", "l2", "l2"), ("linf", "linf", "l1")])
def test_deepfool_finds_the_exact_minimal_perturbation_in_one_step(norm, dist_key, dual):
  fn, w, _ = linear_model(5)
  x = interior_inputs(8)
  y, d_star, gap = minimal_distances(fn, w, x, dual, with_gaps=True)
  x_adv, info = attacks.deepfool(as_target(fn), x, y, jax.random.key(0), norm=norm)
  assert bool(jnp.all(info["success"]))
  np.testing.assert_array_equal(info["iterations"], 1)
  ratio = info[dist_key] / d_star
  # One linearised step aims `aim` past the closest boundary in logits (a success's threshold,
  # 1e-4 x max(1, max_j |z_j|): 1.6e-4 to 2.1e-4 here), d* (1 + aim / gap) away; the overshoot
  # (0.02 by default, as the reference) then scales it by 1.02. The aim moves the ratio from
  # 1.02 by at most 3.2e-4 relative here (the reference's 1e-4: 1.9e-4). Pinned, so that a
  # dropped overshoot (ratio 1.0) or a step aimed elsewhere fails.
  aim = 1e-4 * np.maximum(1.0, np.abs(np.asarray(fn(x))).max(-1))
  np.testing.assert_allclose(ratio, 1.02 * (1 + aim / gap), rtol=1e-5)
  _, info = attacks.deepfool(as_target(fn), x, y, jax.random.key(0), norm=norm, overshoot=0.1)
  np.testing.assert_allclose(info[dist_key] / d_star, 1.1 * (1 + aim / gap), rtol=1e-5)
  # tolerance 0: the reference's step, 1e-4 past the boundary.
  _, info = attacks.deepfool(as_target(fn), x, y, jax.random.key(0), norm=norm, tolerance=0.0)
  np.testing.assert_allclose(info[dist_key] / d_star, 1.02 * (1 + 1e-4 / gap), rtol=1e-5)


def test_cw_l2_comes_within_a_few_percent_of_the_minimal_perturbation():
  fn, w, _ = linear_model(5)
  x = interior_inputs(8)
  y, d_star = minimal_distances(fn, w, x, "l2")
  x_adv, info = jax.jit(functools.partial(attacks.cw_l2, as_target(fn)))(x, y, jax.random.key(0))
  assert bool(jnp.all(info["success"]))
  ratio = info["l2"] / d_star
  assert bool(jnp.all((ratio >= 0.999) & (ratio <= 1.05))), ratio
  assert bool(jnp.all(jnp.argmax(fn(x_adv), -1) != y))


def test_cw_binary_search_brackets_the_known_minimal_constant():
  # Two classes: Z_1 - Z_0 = u.x + c0. Minimising ||d||^2 + c (g - u.d) puts d = c u / 2, which
  # crosses the boundary exactly when c >= c* = 2 g / ||u||^2. A small Adam rate keeps the
  # iterates close to that minimiser (any iterate that crosses counts as a success).
  fn, w, _ = linear_model(2, seed=3)
  x = interior_inputs(6, seed=4)
  logits = fn(x)
  y = jnp.argmax(logits, -1)
  g = jnp.abs(logits[:, 1] - logits[:, 0])
  u_norm_sq = jnp.sum((w[:, 1] - w[:, 0]) ** 2)
  c_star = 2 * g / u_norm_sq
  _, info = attacks.cw_l2(as_target(fn), x, y, jax.random.key(0), binary_search_steps=12,
                          max_iterations=3000, learning_rate=1e-3, initial_const=1e-3,
                          abort_early=False)
  lower, upper = info["const_lower"], info["const"]
  assert bool(jnp.all(lower <= c_star * 1.03)), (lower, c_star)
  assert bool(jnp.all(upper >= c_star * 0.97)), (upper, c_star)
  assert bool(jnp.all(upper - lower <= 0.02 * c_star)), (lower, upper, c_star)


def test_cw_with_confidence_reaches_the_margin():
  fn, _, _ = linear_model(4)
  x = interior_inputs(6)
  y = jnp.argmax(fn(x), -1)
  x_adv, info = attacks.cw_l2(as_target(fn), x, y, jax.random.key(0), kappa=2.0, max_iterations=300)
  assert bool(jnp.all(info["success"]))
  assert bool(jnp.all(objectives.margin(fn(x_adv), y) >= 2.0))


def test_cw_failures_come_back_as_the_clean_input():
  # A constant model cannot be fooled: every example fails and is returned unchanged.
  fn = lambda x: jnp.tile(jnp.array([5.0, 0.0, 0.0]), (x.shape[0], 1)) + 0.0 * jnp.sum(x)
  x = interior_inputs(3)
  y = jnp.zeros(3, jnp.int32)
  x_adv, info = attacks.cw_l2(as_target(fn), x, y, jax.random.key(0), binary_search_steps=2,
                              max_iterations=20)
  assert not bool(jnp.any(info["success"]))
  np.testing.assert_array_equal(x_adv, x)


def test_linf_pgd_reaches_the_analytic_optimum_of_a_linear_model():
  # For two classes the loss rises monotonically along u = w_other - w_y: the L-inf optimum is
  # the corner x + eps sign(u).
  fn, w, _ = linear_model(2, seed=5)
  x = interior_inputs(6, seed=6)
  y = jnp.argmax(fn(x), -1)
  u = (w[:, 1] - w[:, 0])[None, :] * jnp.where(y == 0, 1.0, -1.0)[:, None]
  corner = x + 0.05 * jnp.sign(u).reshape(x.shape)
  for loss in ("ce", "margin"):
    x_adv, _ = attacks.bim(as_target(fn), x, y, jax.random.key(0), eps=0.05, n1=10, n2=20,
                           loss=loss)
    np.testing.assert_allclose(x_adv, corner, atol=1e-6)
    x_fgsm, _ = attacks.fgsm(as_target(fn), x, y, jax.random.key(0), eps=0.05, loss=loss)
    np.testing.assert_allclose(x_fgsm, corner, atol=1e-6)


def test_l2_pgd_reaches_the_ball_surface_along_the_weight_direction():
  fn, w, _ = linear_model(2, seed=5)
  x = interior_inputs(4, seed=6)
  y = jnp.argmax(fn(x), -1)
  u = (w[:, 1] - w[:, 0])[None, :] * jnp.where(y == 0, 1.0, -1.0)[:, None]
  expected = x + (0.1 * u / jnp.linalg.norm(u, axis=-1, keepdims=True)).reshape(x.shape)
  x_adv, _ = attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=0.1, step_size=0.03, steps=10,
                      norm="l2", random_start=False)
  np.testing.assert_allclose(x_adv, expected, atol=1e-5)


@pytest.mark.parametrize("attack", ["pgd", "cw_l2"])
def test_targeted_attacks_land_on_their_target(attack):
  fn, _, _ = linear_model(4)
  x = interior_inputs(8)
  y = jnp.argmax(fn(x), -1)
  targets = (y + 1) % 4
  if attack == "pgd":
    x_adv, _ = attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=1.0, step_size=0.05,
                           steps=60, target="given", targets=targets)
  else:
    x_adv, _ = attacks.cw_l2(as_target(fn), x, y, jax.random.key(0), max_iterations=300,
                             target="given", targets=targets)
  np.testing.assert_array_equal(jnp.argmax(fn(x_adv), -1), targets)


def test_least_likely_pgd_targets_the_argmin_class():
  fn, _, _ = linear_model(4)
  x = interior_inputs(8)
  y = jnp.argmax(fn(x), -1)
  x_adv, _ = attacks.ll_pgd(as_target(fn), x, y, jax.random.key(0), eps=1.0, step_size=0.05,
                            steps=60)
  np.testing.assert_array_equal(jnp.argmax(fn(x_adv), -1), jnp.argmin(fn(x), -1))


def tiny_cnn():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  net = Net()
  x = jax.random.uniform(jax.random.key(7), (10, 6, 6, 1))
  params = net.init(jax.random.key(8), x)
  fn = lambda z: net.apply(params, z)
  return fn, x, jnp.argmax(fn(x), -1)


ALL_ATTACKS = {
    "fgsm_linf": lambda fn, x, y, k: attacks.fgsm(as_target(fn), x, y, k, eps=0.1),
    "fgsm_l2": lambda fn, x, y, k: attacks.fgsm(as_target(fn), x, y, k, eps=0.5, norm="l2"),
    "bim": lambda fn, x, y, k: attacks.bim(as_target(fn), x, y, k, eps=0.1, n1=5, n2=8),
    "madry": lambda fn, x, y, k: attacks.madry(as_target(fn), x, y, k, eps=0.1, n1=5, n2=8,
                                               restarts=2),
    "pgd_l2": lambda fn, x, y, k: attacks.pgd(as_target(fn), x, y, k, eps=0.5, step_size=0.1,
                                              steps=8, norm="l2", loss="margin"),
    "cw_l2": lambda fn, x, y, k: attacks.cw_l2(as_target(fn), x, y, k, binary_search_steps=3,
                                               max_iterations=30),
    "cw_linf": lambda fn, x, y, k: attacks.cw_linf(as_target(fn), x, y, k, max_iterations=20,
                                                   max_total_iterations=300),
    "deepfool_l2": lambda fn, x, y, k: attacks.deepfool(as_target(fn), x, y, k),
    "deepfool_linf": lambda fn, x, y, k: attacks.deepfool(as_target(fn), x, y, k, norm="linf"),
}
BALLS = {"fgsm_linf": ("linf", 0.1), "fgsm_l2": ("l2", 0.5), "bim": ("linf", 0.1),
         "madry": ("linf", 0.1), "pgd_l2": ("l2", 0.5)}


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_outputs_stay_in_the_box_and_the_ball_and_jit_agrees(name):
  fn, x, y = tiny_cnn()
  run = functools.partial(ALL_ATTACKS[name], fn)
  x_adv, info = run(x, y, jax.random.key(0))
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  # Every attack reports success as a fresh forward pass sees it, and its distances.
  np.testing.assert_array_equal(info["success"], np.argmax(fn(x_adv), -1) != y)
  np.testing.assert_allclose(info["linf"], np.abs(x_adv - x).reshape(10, -1).max(-1), atol=1e-6)
  np.testing.assert_allclose(info["l2"], np.sqrt(((x_adv - x) ** 2).reshape(10, -1).sum(-1)),
                             rtol=1e-5, atol=1e-6)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  if name in BALLS:
    norm, eps = BALLS[name]
    assert bool(jnp.all(attacks.distances(x_adv, x)[norm] <= eps * (1 + 1e-5)))
  np.testing.assert_allclose(jax.jit(run)(x, y, jax.random.key(0))[0], x_adv, atol=1e-5)


def test_more_pgd_steps_and_restarts_never_lower_the_success_rate():
  fn, x, y = tiny_cnn()
  success = {}
  for steps in (0, 2, 5, 20):
    x_adv, _ = attacks.madry(as_target(fn), x, y, jax.random.key(1), eps=0.03, n1=4, n2=steps)
    success[steps] = np.asarray(attacks.is_successful(fn(x_adv), y))
  for fewer, more in ((0, 2), (2, 5), (5, 20)):
    assert np.all(success[more] >= success[fewer])  # Per example, not just on average.
  assert success[20].sum() > success[0].sum()
  one, _ = attacks.madry(as_target(fn), x, y, jax.random.key(1), eps=0.03, n1=4, n2=5, restarts=1)
  three, _ = attacks.madry(as_target(fn), x, y, jax.random.key(1), eps=0.03, n1=4, n2=5, restarts=3)
  assert np.all(np.asarray(attacks.is_successful(fn(three), y)) >=
                np.asarray(attacks.is_successful(fn(one), y)))


@pytest.mark.parametrize("name", ["pgd", "cw_l2", "deepfool"])
def test_unbounded_attacks_fool_an_undefended_model(name):
  fn, x, y = tiny_cnn()
  if name == "pgd":
    x_adv, _ = attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=1.0, step_size=0.1, steps=50)
  elif name == "cw_l2":
    x_adv, _ = attacks.cw_l2(as_target(fn), x, y, jax.random.key(0), binary_search_steps=5,
                             max_iterations=200)
  else:
    x_adv, _ = attacks.deepfool(as_target(fn), x, y, jax.random.key(0))
  assert float(jnp.mean(attacks.is_successful(fn(x_adv), y))) == 1.0


def test_vmap_over_examples_matches_the_batched_call():
  fn, x, y = tiny_cnn()
  batched, _ = attacks.bim(as_target(fn), x, y, jax.random.key(0), eps=0.1, n1=5, n2=6)
  single = jax.vmap(lambda xi, yi: attacks.bim(as_target(fn), xi[None], yi[None], jax.random.key(0),
                                               eps=0.1, n1=5, n2=6)[0][0])(x, y)
  np.testing.assert_allclose(single, batched, atol=1e-6)


def test_deepfool_freezes_examples_once_they_are_fooled():
  fn, x, y = tiny_cnn()
  one, info_one = attacks.deepfool(as_target(fn), x, y, jax.random.key(0), max_iter=1)
  many, info_many = attacks.deepfool(as_target(fn), x, y, jax.random.key(0), max_iter=50)
  done_early = np.asarray(info_one["success"])
  assert done_early.any()
  np.testing.assert_array_equal(np.asarray(many)[done_early], np.asarray(one)[done_early])
  np.testing.assert_array_equal(np.asarray(info_many["iterations"])[done_early], 1)


@pytest.mark.parametrize("box_aware", [True, False])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_successes_survive_rescoring_in_any_batch_shape(norm, box_aware):
  # A 3-class linear model, d = 784, logits of scale ~400 (XLA rounds them up to 3e-4
  # differently one image per call). Half the pixels sit at 0 or 1, so that with
  # box_aware=False the clipped steps creep to the boundary; box_aware=True lands in one step,
  # with overshoot 0 on the reference's 1e-4 past it. Either way the old stop (the label
  # changed) left margins of 0 to 3e-4, and 2-7 of 16 reported successes were the clean class
  # again one image per call. An example is fooled only past 1e-4 x max(1, max_j |z_j|) of its
  # clean logits (0.02 to 0.05 here): every batch shape agrees with info["success"]. Cut off by
  # max_iter within that threshold of the boundary, an example comes back as x, a failure in
  # any batch shape; otherwise its last iterate stays clear of the boundary.
  d, batch = 784, 16
  rng = np.random.default_rng(13)
  weights = jnp.asarray(10 * rng.normal(size=(d, 3)), jnp.float32)
  fn = lambda z: z.reshape(z.shape[0], -1) @ weights
  pixels, where = rng.uniform(0.3, 0.7, (batch, d)), rng.uniform(size=(batch, d))
  x = jnp.asarray(np.where(where < 0.25, 0.0, np.where(where < 0.5, 1.0, pixels)), jnp.float32)
  clean_logits = np.asarray(fn(x), np.float64)
  clean = np.argmax(clean_logits, -1)
  threshold = 1e-4 * np.maximum(1.0, np.abs(clean_logits).max(-1))
  overshoot = 0.0 if box_aware else 0.02
  # In full, and cut off at max_iter where some examples are still within the threshold.
  for max_iter in (50, 1 if box_aware else 5):
    x_adv, info = jax.jit(lambda x, y, k: attacks.deepfool(
        as_target(fn), x, y, k, norm=norm, box_aware=box_aware, overshoot=overshoot,
        max_iter=max_iter))(x, jnp.asarray(clean), jax.random.key(0))
    success = np.asarray(info["success"])
    if max_iter == 50:
      assert success.all()
    for name, adversarial in predicted_other_than_when_rescored(fn, x_adv, clean).items():
      np.testing.assert_array_equal(adversarial, success, err_msg=f"{name}, max_iter {max_iter}")
    logits = np.asarray(fn(x_adv), np.float64)
    own = logits[np.arange(batch), clean]
    margin = np.max(np.where(np.arange(3) == clean[:, None], -np.inf, logits), -1) - own
    assert np.all(margin[success] > threshold[success]), (margin, threshold)
    returned_x = np.all(np.asarray(x_adv == x).reshape(batch, -1), -1)
    assert np.all(returned_x | (margin > threshold) | (margin < -threshold)), margin
    if max_iter < 50:
      assert returned_x[~success].any() and not returned_x[success].any()
      np.testing.assert_array_equal(np.asarray(info["l2"])[returned_x], 0.0)


def test_bpda_uses_the_approximation_only_on_the_backward_pass():
  quantise = lambda z: jnp.round(z * 4) / 4  # Zero gradient almost everywhere.
  op = attacks.bpda(quantise, "identity")
  z = jnp.array([0.1, 0.3, 0.6])
  np.testing.assert_allclose(op(z), quantise(z))
  np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(op(v) * 2.0))(z), 2.0)
  sign_op = attacks.bpda(jnp.sign, "tanh")
  np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(sign_op(v)))(z), 1 - jnp.tanh(z) ** 2,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="approximation"):
    attacks.bpda(jnp.sign, "sigmoid")


def test_bpda_lets_pgd_through_a_quantising_defense():
  fn, w, _ = linear_model(2, seed=5)
  defended = lambda x: fn(jnp.round(x * 8) / 8)  # Gradient masking: its gradient is zero.
  through = lambda x: fn(attacks.bpda(lambda z: jnp.round(z * 8) / 8)(x))
  x = interior_inputs(8, seed=6)
  y = jnp.argmax(defended(x), -1)
  masked, _ = attacks.bim(as_target(defended), x, y, jax.random.key(0), eps=0.3, n1=10, n2=20)
  np.testing.assert_array_equal(masked, x)  # No gradient, no movement.
  x_adv, _ = attacks.bim(as_target(through), x, y, jax.random.key(0), eps=0.3, n1=10, n2=20)
  assert float(jnp.mean(attacks.is_successful(defended(x_adv), y))) == 1.0


def one_pixel_bump(peak: float, height: float):
  """Two classes on one pixel: z_1 - z_0 = height - 100 (x - peak)^2. The attack loss of
  label 0 peaks at x = peak, so sign-gradient steps of a fixed size overshoot it and oscillate."""
  return lambda x: jnp.stack(
      [jnp.zeros(x.shape[0]), height - 100.0 * (x.reshape(x.shape[0]) - peak) ** 2], -1)


@pytest.mark.parametrize("height,steps", [(0.0, 2), (0.05, 2), (0.05, 4)])
def test_pgd_returns_its_best_iterate_not_its_last(height, steps):
  # From 0.5 with steps of 0.04 towards the peak at 0.55 the iterates are 0.5, 0.54, 0.58,
  # 0.54, 0.58, ...: the last one (0.58 after an even number of steps) is worse than 0.54,
  # which is the known answer. With height 0.05 the class flips near the peak (at 0.54, not at
  # 0.58), so the best iterate is also the only successful one.
  fn = one_pixel_bump(0.55, height)
  x = jnp.full((1, 1, 1, 1), 0.5)
  y = jnp.zeros(1, jnp.int32)
  x_adv, _ = attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=0.1, step_size=0.04,
                         steps=steps, random_start=False)
  np.testing.assert_allclose(np.asarray(x_adv).ravel(), [0.54], atol=1e-6)
  assert bool(attacks.is_successful(fn(x_adv), y)[0]) == (height > 0)


def test_eot_is_the_expectation_over_the_defense_randomness():
  # A defense that flips the sign of its logit with probability 1/2: z_1 - z_0 = s * 10 x.
  # At x = 0.5: E[log p_0] = -(softplus(5) + softplus(-5)) / 2 = -2.5067, and its gradient is
  # -E[10 s sigmoid(10 s x)] = -5 (sigmoid(5) - sigmoid(-5)) = -4.9331 (the EOT gradient of
  # the loss -log p_0). One fixed draw would give -5.0067 or -0.0067 and -9.93 or 0.067.
  flip = lambda x, key: jnp.stack(
      [jnp.zeros(x.shape[0]), jax.random.rademacher(key, (), jnp.float32) * 10.0 *
       x.reshape(x.shape[0])], -1)
  x = jnp.full((1, 1, 1, 1), 0.5)
  eot_target = attacks.eot(as_target(flip, randomised=True), 4096)
  expectation = lambda z, key: attacks.call_logits(eot_target, z, key)
  for key in (jax.random.key(1), jax.random.key(2)):
    log_p0 = float(expectation(x, key)[0, 0])
    assert abs(log_p0 - (-2.5067)) < 0.1, log_p0
    grad = jax.grad(lambda z: jnp.sum(expectation(z, key)[:, 0]))(x)
    assert abs(float(grad.ravel()[0]) - (-4.9331)) < 0.4, grad
  # Each call draws its own samples from the key it is given.
  assert float(expectation(x, jax.random.key(1))[0, 0]) != float(
      expectation(x, jax.random.key(2))[0, 0])


def test_eot_averages_the_gradient_over_the_randomness():
  fn, w, _ = linear_model(3)
  noisy = lambda x, key: fn(x + 0.05 * jax.random.normal(key, x.shape))
  x = interior_inputs(4)
  y = jnp.argmax(fn(x), -1)
  expected = attacks.eot(as_target(noisy, randomised=True), 4096)
  grad_of = lambda target, key: jax.grad(
      lambda z: jnp.sum(objectives.cross_entropy(attacks.call_logits(target, z, key), y)))(x)
  g1, g2 = grad_of(expected, jax.random.key(1)), grad_of(expected, jax.random.key(2))
  # Two independent 4096-sample estimates agree closely; single draws do not.
  assert float(jnp.max(jnp.abs(g1 - g2))) < 0.05 * float(jnp.max(jnp.abs(g1)))
  x_adv, _ = attacks.pgd(expected, x, y, jax.random.key(0), eps=0.3, step_size=0.05, steps=20)
  assert float(jnp.mean(attacks.is_successful(fn(x_adv), y))) == 1.0


def test_bad_attack_parameters_are_rejected():
  fn, x, y = tiny_cnn()
  with pytest.raises(ValueError, match="norm"):
    attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=0.1, step_size=0.1, steps=1, norm="l1")
  with pytest.raises(ValueError, match="targets"):
    attacks.pgd(as_target(fn), x, y, jax.random.key(0), eps=0.1, step_size=0.1, steps=1,
                target="given")
  with pytest.raises(ValueError, match="unknown attack"):
    attacks.get_attack("pgdd")


def test_cw_linf_comes_close_to_the_minimal_linf_perturbation():
  fn, w, _ = linear_model(5)
  x = interior_inputs(6)
  y, d_star = minimal_distances(fn, w, x, "l1")
  x_adv, info = jax.jit(functools.partial(attacks.cw_linf, as_target(fn),
                                          max_total_iterations=20000))(x, y, jax.random.key(0))
  assert bool(jnp.all(info["success"]))
  ratio = info["linf"] / d_star
  assert bool(jnp.all((ratio >= 0.999) & (ratio <= 1.1))), ratio
  assert bool(jnp.all(jnp.argmax(fn(x_adv), -1) != y))


def test_cross_entropy_gradient_stays_accurate_on_confident_logits():
  # A confidently classified input: p_y = 1 - 1e-7. The gradient of CE w.r.t. the logits is
  # p - onehot(y); in float32, -log_softmax gets the y entry wrong by up to ~50% here.
  logits = jnp.array([[17.0, 0.5, -3.0, 1.0]], jnp.float32)
  y = jnp.array([0])
  p = np.exp(np.float64([17.0, 0.5, -3.0, 1.0]) - np.logaddexp.reduce([17.0, 0.5, -3.0, 1.0]))
  exact = p - np.eye(4)[0]
  grad = jax.grad(lambda z: jnp.sum(objectives.cross_entropy(z, y)))(logits)[0]
  np.testing.assert_allclose(np.asarray(grad, np.float64), exact, rtol=1e-4)
  np.testing.assert_allclose(objectives.cross_entropy(logits, y), -np.log(p[0]), rtol=1e-3)


@pytest.mark.parametrize("name,params", [
    ("fgsm", dict(eps=0.1)), ("pgd", dict(eps=0.1, step_size=0.02, steps=3)),
    ("bim", dict(eps=0.1, n1=2, n2=3)), ("madry", dict(eps=0.1, n1=2, n2=3)),
    ("ll_pgd", dict(eps=0.1, step_size=0.02, steps=3)),
    ("cw_l2", dict(binary_search_steps=2, max_iterations=5)),
    ("cw_linf", dict(max_iterations=3, max_total_iterations=10)),
    ("deepfool", dict(max_iter=3))])
def test_every_attack_runs_inside_a_data_parallel_step(name, params):
  """Defenses run attacks inside their shard_map train step, whose varying-axes typing rejects
  loop carries that start replicated and become per-device."""
  from defenses_jax import parallel
  _, w, b = linear_model(5)
  x = interior_inputs(8)
  y = jnp.argmax(x.reshape(8, -1) @ w + b, -1)

  def per_device(w, b, x, y, key):
    fn = lambda z: z.reshape(z.shape[0], -1) @ w + b
    return attacks.get_attack(name)(as_target(fn), x, y, key, **params)[0]

  mesh = parallel.make_mesh(1)
  step = parallel.data_parallel(per_device, mesh, in_specs=(parallel.REPLICATED,) * 2 + (
      parallel.SHARDED,) * 2 + (parallel.REPLICATED,), out_specs=parallel.SHARDED)
  key = jax.random.key(0)
  fn = lambda z: z.reshape(z.shape[0], -1) @ w + b
  sharded = parallel.shard_batch({"x": x, "y": y}, mesh)
  np.testing.assert_allclose(step(parallel.replicate(w, mesh), parallel.replicate(b, mesh),
                                  sharded["x"], sharded["y"], key),
                             attacks.get_attack(name)(as_target(fn), x, y, key, **params)[0],
                             atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_attacks_reject_malformed_batches_before_running(name):
  fn, x, y = tiny_cnn()
  attack = lambda x, y: ALL_ATTACKS[name](fn, x, y, jax.random.key(0))
  with pytest.raises(AssertionError, match="integer"):
    attack(x, y.astype(jnp.float32))  # Labels as floats (e.g. probabilities).
  with pytest.raises(AssertionError, match="one of labels per input"):
    attack(x, y[:-1])
  with pytest.raises(AssertionError, match="float"):
    attack((x * 255).astype(jnp.uint8), y)  # Images as bytes, not in [0, 1].


def test_eot_in_chunks_equals_eot_at_once():
  fn, _, _ = linear_model(3)
  noisy = lambda x, key: fn(x + 0.05 * jax.random.normal(key, x.shape))
  x = interior_inputs(4)
  y = jnp.argmax(fn(x), -1)
  key = jax.random.key(3)
  noisy = as_target(noisy, randomised=True)
  at_once, chunked = attacks.eot(noisy, 10, chunk=10), attacks.eot(noisy, 10, chunk=4)
  logits = lambda target, z: attacks.call_logits(target, z, key)
  np.testing.assert_allclose(logits(chunked, x), logits(at_once, x), rtol=1e-6, atol=1e-6)
  grad_of = lambda target: jax.grad(
      lambda z: jnp.sum(objectives.cross_entropy(logits(target, z), y)))(x)
  np.testing.assert_allclose(grad_of(chunked), grad_of(at_once), rtol=1e-5, atol=1e-7)
