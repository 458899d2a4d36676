"""Paper 004's g(x): an attack on a frozen f_b as an input transformation, and the BPDA
stand-ins of its equation 5, against answers worked out by hand on linear f_b."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.defenses.attack_transform import (CODE, PAPER, TransformSettings,
                                                    attack_transform, bpda_sign,
                                                    equation_5_clip)

# A 2-class linear f_b: the gradient of CE(x W, t) is p_other (w_other - w_t), so its sign is
# the same everywhere and every step moves each pixel by the same amount.
W = np.array([[1.0, -1.0], [-2.0, 0.5], [0.3, 0.9], [-0.4, -1.5]], np.float32)


def fb(x):
  return x @ jnp.asarray(W)


def clean_classes(x):
  logits = np.asarray(x) @ W
  return logits.argmax(-1), logits.argmin(-1)


X = np.array([[0.5, 0.3, 0.6, 0.45], [0.1, 0.9, 0.5, 0.5], [0.9, 0.1, 0.95, 0.05]], np.float32)


def test_paper_variant_lands_on_the_ball_corner_towards_the_least_likely_class_for_any_key():
  settings = TransformSettings(delta=0.2, steps=13, **PAPER)
  _, least = clean_classes(X)
  # Descending CE(., y_L) moves along sgn(w_{y_L} - w_other); 12 steps of delta/6 cross the
  # whole ball from any start, so the random start washes out.
  s = np.sign(W[:, least].T - W[:, 1 - least].T)
  expected = np.clip(X + 0.2 * s, 0, 1)
  for seed in range(3):
    g = attack_transform(fb, jnp.asarray(X), jax.random.key(seed), settings)
    np.testing.assert_allclose(g, expected, atol=1e-6)
  assert np.all(np.abs(np.asarray(g) - X) <= 0.2 + 1e-6) and np.all((g >= 0) & (g <= 1))


def test_code_variant_ascends_away_from_the_most_likely_class_and_leaves_the_box():
  settings = TransformSettings(delta=0.2, steps=13, **CODE)
  key = jax.random.key(4)
  most, _ = clean_classes(X)
  s = np.sign(W[:, 1 - most].T - W[:, most].T)
  start = np.asarray(jax.random.uniform(key, X.shape, jnp.float32, -0.2, 0.2))
  # 13 steps of delta/10 from the random start, clipped to the ball at every step: the start
  # does not wash out (1.3 delta < 2 delta), and nothing clips to [0, 1].
  expected = X + np.clip(start + 1.3 * 0.2 * s, -0.2, 0.2)
  g = np.asarray(attack_transform(fb, jnp.asarray(X), key, settings))
  np.testing.assert_allclose(g, expected, atol=1e-5)
  assert g[2, 2] > 1.0 and g[2, 3] < 0.0  # X[2]'s last two pixels are pushed outwards.
  other = np.asarray(attack_transform(fb, jnp.asarray(X), jax.random.key(5), settings))
  assert not np.allclose(g, other)


def test_g_is_deterministic_given_its_key_and_key_free_without_a_random_start():
  x = jnp.asarray(X)
  settings = TransformSettings(delta=0.2, steps=3)  # 3 steps: the start still matters.
  a = attack_transform(fb, x, jax.random.key(0), settings)
  np.testing.assert_array_equal(a, attack_transform(fb, x, jax.random.key(0), settings))
  assert not np.allclose(a, attack_transform(fb, x, jax.random.key(1), settings))
  fixed = TransformSettings(delta=0.2, steps=3, random_start=False)
  np.testing.assert_array_equal(attack_transform(fb, x, jax.random.key(0), fixed),
                                attack_transform(fb, x, jax.random.key(1), fixed))


def test_plain_jacobian_is_the_identity_where_no_clip_holds_the_pixel():
  key = jax.random.key(0)
  for settings, mask in ((TransformSettings(**CODE), np.ones(4)),
                         # X[2]'s last two pixels end on the box (0.95 + 0.2, 0.05 - 0.2).
                         (TransformSettings(**PAPER), np.array([1.0, 1.0, 0.0, 0.0]))):
    jac = jax.jacfwd(lambda v: attack_transform(fb, v[None], key, settings)[0])(
        jnp.asarray(X[2]))
    np.testing.assert_allclose(jac, np.diag(mask), atol=1e-6)


def test_bpda_surfaces_give_equation_5s_jacobian_on_one_step():
  # One step without random start: g(x) = x + clip(-eps sgn(v(x))), v = grad CE(f_b(x), y_L),
  # with Hessian H = p (1 - p) d d^T (d = w_other - w_L, p = p_other). Soft-sign BPDA:
  # dg/dx = I - eps * clip' * diag(1 / (1 + |v|)^2) H, clip' = 1 inside, 1/(1+eps)^2 outside.
  x = X[0]
  _, least = clean_classes(x[None])
  d = W[:, 1 - least[0]] - W[:, least[0]]
  p = 1.0 / (1.0 + np.exp(-(x @ d)))  # p_other for two classes.
  v, hess = p * d, p * (1 - p) * np.outer(d, d)
  for eps, delta, slope in ((0.1, 0.2, 1.0), (0.3, 0.2, 1 / 1.3 ** 2)):
    settings = TransformSettings(delta=delta, steps=1, step_fraction=eps / delta,
                                 random_start=False, box_clip=False)
    g = lambda z: attack_transform(fb, z[None], jax.random.key(0), settings,
                                   sign_op=bpda_sign("softsign"),
                                   offset_op=equation_5_clip(delta))[0]
    expected = np.eye(4) - eps * slope * np.diag(1 / (1 + np.abs(v)) ** 2) @ hess
    np.testing.assert_allclose(jax.jacrev(g)(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-6)
    # The forward pass is g itself, with no stand-in.
    plain = attack_transform(fb, jnp.asarray(x)[None], jax.random.key(0), settings)[0]
    np.testing.assert_allclose(g(jnp.asarray(x)), plain, atol=1e-7)
  # Where BPDA sees the step, the plain gradient does not: its Jacobian is exactly I.
  plain_jac = jax.jacrev(lambda z: attack_transform(fb, z[None], jax.random.key(0), settings)[0])
  np.testing.assert_allclose(plain_jac(jnp.asarray(x)), np.eye(4), atol=0)


def test_settings_refuse_nonsense_before_compute():
  with pytest.raises(ValueError, match="delta > 0"):
    TransformSettings(delta=0.0)
  with pytest.raises(ValueError, match="objective"):
    TransformSettings(objective="most_unlikely")


def test_expected_image_distance_of_the_code_variant_is_known():
  # Code variant on the linear f_b: each pixel ends at clip(d0 + 1.3 delta s, -delta, delta)
  # with d0 ~ U[-delta, delta]; for delta 0.2 its mean magnitude is
  # 2.5 [int_{0.06}^{0.2} u du + 0.2 x 0.26] = 0.1755 on every pixel (nothing clips to the box).
  import dataclasses
  from defenses_jax.defenses import create_defense
  defense = create_defense("adv_transform", 2, transform_model="lenet", variant="code",
                           delta=0.2, steps=13, metric_images=3, metric_samples=4000)
  defense = dataclasses.replace(defense, frozen=fb)
  metrics = defense.evaluation_metrics(None, X, jax.random.key(0))
  assert abs(metrics["expected_image_linf"] - 0.1755) < 0.006, metrics
  # The paper variant washes the start out: E g = g = clip(x + delta s), 0.2 from x.
  paper = dataclasses.replace(defense, variant="paper")
  assert abs(paper.evaluation_metrics(None, X, jax.random.key(0))["expected_image_linf"]
             - 0.2) < 1e-5
