"""Paper 003's collaborative defense: the Classmap (equation 7, both readings), the pair
detector, the gradient lock unit, equations 9 and 10, and the pair-aware attacks on a linear
system whose evasions are known."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import Deployed, Evasion, as_target, call_logits
from defenses_jax.attacks.detector_evasion import system_outputs
from defenses_jax.attacks.gradient import pgd
from defenses_jax.attacks.pair_evasion import cw_pair, pair_apgd, pair_violation
from defenses_jax.defenses import create_defense
from defenses_jax.defenses.base import Network
from defenses_jax.defenses.collaborative import (CollaborativeNet, classmap_from_counts,
                                                 fgs_confusion, pair_accept_margins,
                                                 robust_objective)
from defenses_jax.detectors import create_detector


def np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -log_p[np.arange(len(labels)), labels]


def test_classmap_reads_equation_7_and_its_opposite():
  counts = np.array([[60, 25, 10, 5],   # Class 0's FGS examples land on 1 most, on 3 least.
                     [30, 50, 0, 20],   # 1: most on 0; least: 2 (never).
                     [5, 5, 80, 10],    # 2: 3 most; 0 and 1 tie for least.
                     [0, 0, 0, 100]])   # 3: all still correct: every other class ties at 0.
  probs = np.array([[.6, .2, .1, .1], [.3, .5, .0, .2], [.05, .07, .8, .08],
                    [.02, .01, .03, .94]])
  assert classmap_from_counts(counts, probs, "argmax") == (1, 0, 3, 2)
  # argmin: 2's tie (0 vs 1) goes to the lower mean probability (class 0); 3's to class 1.
  assert classmap_from_counts(counts, probs, "argmin") == (3, 2, 0, 1)
  # Without probabilities, ties go to the lower index; the true class is never chosen.
  assert classmap_from_counts(counts, None, "argmax")[3] == 0
  with pytest.raises(ValueError, match="classmap_reading"):
    classmap_from_counts(counts, probs, "most_likely")


def test_pair_margins_and_the_detector_accept_exactly_the_classmap_pairs():
  classmap = (1, 2, 0)
  robust = jnp.array([[0.0, 3.0, 1.0],    # argmax Z' = 1 = Classmap[0]
                      [0.0, 3.0, 1.0],    # the same Z', deployed class 1 (wants 2)
                      [2.0, 0.5, 0.0]])   # argmax Z' = 0 = Classmap[2]
  margins = pair_accept_margins(robust, classmap)
  # Row 0: margin(Z', 1) = 3 - 1, margin(Z', 2) = 1 - 3, margin(Z', 0) = 0 - 3.
  np.testing.assert_allclose(margins[0], [2.0, -2.0, -3.0])
  np.testing.assert_allclose(margins[2], [-1.5, -2.0, 1.5])
  class_logits = jnp.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
  detector = create_detector("pair", 3)
  scores = detector.score({}, {"class_logits": class_logits, "accept_margin": margins}, robust)
  np.testing.assert_allclose(scores, [-2.0, 2.0, -1.5])
  assert list(np.asarray(scores) < detector.fixed_threshold) == [True, False, True]
  with pytest.raises(ValueError, match="accept_margin"):
    detector.score({}, {"class_logits": class_logits}, robust)


class GivenLogits(nn.Module):
  """A network without parameters whose packed logits [Z, Z', g] are its input rows."""

  @nn.compact
  def __call__(self, x, train=False, return_embedding=False):
    return (x, x) if return_embedding else x


def test_the_pair_detector_pairs_z_prime_with_argmax_z_star_not_argmax_z():
  # Classmap (1, 2, 0). Paper 003 section 3.3.3: accept iff argmax Z' = Classmap[argmax Z*],
  # Z* = Z * g; the lock g moves the deployed class away from argmax Z in rows 0, 1 and 3.
  packed = np.array([
      # Z           Z'           g
      [3, 1, 0,     0, 0, 2,     0.1, 0.9, 0.5],  # Z* = (.3, .9, 0): class 1, wants 2: accept
      [3, 1, 0,     0, 2, 0,     0.1, 0.9, 0.5],  # class 1 (argmax Z 0 would want 1): flag
      [0, 1, 3,     2, 0, 0,     0.5, 0.5, 0.5],  # Z* = (0, .5, 1.5): class 2, wants 0: accept
      [0, 1, 3,     1, 0, 0,     0.5, 0.9, 0.2],  # Z* = (0, .9, .6): class 1, wants 2: flag
      [2, 0, 1,     0, 0, 1,     0.9, 0.9, 0.9],  # class 0, wants 1, Z' says 2: flag
  ], np.float32)
  z, g = packed[:, :3], packed[:, 6:]
  assert list(np.argmax(z, -1) != np.argmax(z * g, -1)) == [True, True, False, True, False]
  defense = create_defense("collaborative", 3, classmap=(1, 2, 0))
  detector = create_detector("pair", 3)
  net = Network(GivenLogits(), {})
  deployed = defense.deployed(net, jnp.asarray(packed), detector=detector.scorer(detector.fit([])))
  np.testing.assert_array_equal(np.argmax(deployed.class_logits, -1), [1, 1, 2, 1, 0])
  # -margin(Z', Classmap[argmax Z*]): row 0: -(2 - 0), row 1: -(0 - 2), row 3: -(0 - 1), ...
  np.testing.assert_allclose(deployed.detector_score, [-2.0, 2.0, -2.0, 1.0, 1.0])
  flagged = np.asarray(deployed.detector_score) >= detector.fixed_threshold
  assert list(flagged) == [False, True, False, True, True]


class TinyBase(nn.Module):
  num_outputs: int = 3

  @nn.compact
  def __call__(self, x, train=False, return_embedding=False):
    h = nn.relu(nn.Dense(5)(x))
    z = nn.Dense(self.num_outputs)(h)
    return (z, h) if return_embedding else z


def test_gradient_lock_multiplies_z_elementwise_and_its_switch_removes_its_parameters():
  x = jax.random.normal(jax.random.key(1), (4, 6))
  defense = create_defense("collaborative", 3, classmap=(1, 2, 0))
  net = defense.wrap_model(TinyBase())
  params = net.init(jax.random.key(0), x)["params"]
  assert {"base", "robust_head", "lock_hidden", "lock_out"} <= set(params)
  packed = net.apply({"params": params}, x)
  z, h = TinyBase().apply({"params": params["base"]}, x, return_embedding=True)
  dense = lambda p, v: np.asarray(v) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
  z_robust = dense(params["robust_head"], h)
  u = dense(params["lock_out"], np.maximum(dense(params["lock_hidden"], z_robust), 0))
  lock = 1 / (1 + np.exp(-u))
  np.testing.assert_allclose(defense.class_logits(packed), np.asarray(z) * lock, rtol=1e-5)
  np.testing.assert_allclose(packed[:, 3:6], z_robust, rtol=1e-5)

  fixed = CollaborativeNet(TinyBase(), 3, lock_hidden=64, trainable_lock=False)
  p1 = fixed.init(jax.random.key(0), x)["params"]
  p2 = fixed.init(jax.random.key(7), x)["params"]
  assert set(p1) == {"base", "robust_head"}  # No lock parameters to train.
  # The fixed unit is the same function whatever the initialisation: same Z' -> same g.
  p2 = {**p2, "robust_head": p1["robust_head"], "base": p1["base"]}
  np.testing.assert_array_equal(fixed.apply({"params": p1}, x), fixed.apply({"params": p2}, x))


def test_equation_9_is_bounded_where_the_paper_leaves_it_unbounded():
  robust_labels = jnp.array([0, 1])
  clean = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  adv = jnp.array([[-9.0, 3.0, 3.0], [0.0, 0.5, 0.0]])  # CE: row 0 ~ 12.7 > log 3, row 1 0.79.
  bound = float(np.log(3))
  got = robust_objective(clean, adv, robust_labels, bound)
  want = 0.5 * (np_ce(clean, [0, 1]) - np.minimum(np_ce(adv, [0, 1]), bound))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda a: jnp.sum(robust_objective(clean, a, robust_labels, bound)))(adv)
  np.testing.assert_array_equal(grad[0], 0.0)  # Past the bound: no more push.
  assert np.abs(grad[1]).sum() > 0


def test_the_loss_weighs_clean_adversarial_and_robust_terms_as_equation_8():
  defense = create_defense("collaborative", 3, classmap=(1, 2, 0))
  rng = np.random.default_rng(0)
  z, z_robust = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  lock = rng.uniform(0.1, 1.0, (4, 3))
  labels = np.array([0, 2])
  robust = np.array([1, 0])  # Classmap[0], Classmap[2]
  packed = jnp.asarray(np.concatenate([z, z_robust, lock], 1), jnp.float32)
  batch = {"label": jnp.asarray(labels), "robust_label": jnp.asarray(robust)}
  loss, sums = defense.loss({"logits": packed}, batch)
  z_star = z * lock
  j_prime = 0.5 * (np_ce(z_robust[:2], robust) - np.minimum(np_ce(z_robust[2:], robust),
                                                             np.log(3)))
  want = (0.4 * np_ce(z_star[:2], labels).mean() + 0.4 * np_ce(z_star[2:], labels).mean()
          + 0.2 * j_prime.mean())
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(sums["count"]) == 2


def test_equation_10_terms_on_hand_made_logits():
  out = {"class_logits": jnp.array([[3.0, 1.0, 0.0]]),
         "accept_if": jnp.array([[0.5, -1.0, 2.0]]),
         "excess": jnp.array([-0.5])}
  y = jnp.array([0])
  # Target 2: margin(Z*, 2) = 0 - 3 = -3; accept margin of 2 = 2.
  v, ok = pair_violation(out, y, jnp.array([2]), kappa=1.0, eta1=1.0, eta2=0.5)
  np.testing.assert_allclose(v, [4.0 + 0.0])
  assert not bool(ok[0])
  # Untargeted: the smaller of target 1 (relu(1 + 2) + 0.5 relu(1 + 1) = 4) and target 2 (4).
  v, _ = pair_violation(out, y, None, kappa=1.0, eta1=1.0, eta2=0.5)
  np.testing.assert_allclose(v, [4.0])
  v, _ = pair_violation(out, y, None, kappa=1.0, eta1=1.0, eta2=2.0)  # Target 2 now cheaper.
  np.testing.assert_allclose(v, [4.0])
  v, _ = pair_violation(out, y, None, kappa=1.0, eta1=2.0, eta2=2.0)
  np.testing.assert_allclose(v, [min(2 * 3 + 2 * 2, 2 * 4 + 0)])


EVASION = Evasion(0.0)  # The pair detector's fixed threshold.


def linear_system(lock=None):
  """Z* = 2 x[:3] (times a lock of constant 1 by default), Z' = x[3:], Classmap (1, 2, 0):
  a clean input of class 0 with argmax Z' = 1 is accepted."""
  classmap = (1, 2, 0)

  def system(x, key):
    z = 2.0 * x[:, :3]
    g = jnp.ones_like(z) if lock is None else lock(x)
    margins = pair_accept_margins(x[:, 3:], classmap)
    class_logits = z * g
    predicted = jnp.argmax(class_logits, -1)
    score = -jnp.take_along_axis(margins, predicted[:, None], -1)[:, 0]
    return Deployed(class_logits, score, {"embedding": x, "accept_margin": margins,
                                          "base_logits": z, "lock": g})

  return system


X = jnp.array([[0.6, 0.3, 0.2, 0.2, 0.6, 0.1],
               [0.7, 0.2, 0.3, 0.1, 0.5, 0.2]])
Y = jnp.array([0, 0])


def evades(system, x_adv):
  out = system_outputs(system, x_adv, None, EVASION)
  return (np.argmax(out["class_logits"], -1) != np.asarray(Y)) & (np.asarray(out["excess"]) < 0)


def test_pair_apgd_evades_where_a_detector_blind_attack_is_flagged():
  system = linear_system()
  assert not evades(system, X).any()
  x_adv, info = pair_apgd(system, X, Y, jax.random.key(0), evasion=EVASION, eps=0.5, steps=50,
                          num_targets=2)
  assert np.all(np.abs(np.asarray(x_adv - X)) <= 0.5 + 1e-6)
  assert evades(system, x_adv).all() and np.asarray(info["success"]).all()
  # Targeted PGD on Z* alone changes the class but leaves Z' where it was: flagged.
  blind, _ = pgd(system, X, Y, jax.random.key(0), eps=0.5, step_size=0.05, steps=50,
                 target="given", targets=jnp.array([1, 2]))
  out = system(blind, None)
  assert (np.argmax(out.class_logits, -1) != 0).all() and not evades(system, blind).any()


def test_pair_apgd_with_bpda_keeps_z_star_and_differentiates_through_z_only():
  lock = lambda x: jax.nn.sigmoid(10.0 * x[:, 3:])  # A lock that depends on the input.
  system = linear_system(lock)
  from defenses_jax.attacks.pair_evasion import _pair_outputs
  outputs = lambda x, bpda: _pair_outputs(system, x, None, EVASION, bpda)
  plain, bpda = outputs(X, False), outputs(X, True)
  np.testing.assert_array_equal(plain["class_logits"], bpda["class_logits"])
  grad = jax.grad(lambda x: jnp.sum(outputs(x, True)["class_logits"]))(X)
  expected = 2.0 * np.asarray(lock(X))  # d(Z * const g)/dx[:3]; nothing through g.
  np.testing.assert_allclose(grad[:, :3], expected, rtol=1e-6)
  np.testing.assert_array_equal(grad[:, 3:], 0.0)


def test_cw_pair_finds_accepted_examples_and_returns_failures_unchanged():
  system = linear_system()
  x_adv, info = cw_pair(system, X, Y, jax.random.key(0), evasion=EVASION, kappa=0.0,
                        binary_search_steps=4, max_iterations=200, learning_rate=0.05,
                        initial_const=1.0)
  assert np.asarray(info["success"]).all() and evades(system, x_adv).all()
  # kappa 5 cannot be reached in the unit box (Z* = 2x spans at most 2): nothing succeeds.
  x_adv, info = cw_pair(system, X, Y, jax.random.key(0), evasion=EVASION, kappa=5.0,
                        binary_search_steps=2, max_iterations=50, learning_rate=0.05,
                        target="random")
  assert not np.asarray(info["success"]).any()
  np.testing.assert_array_equal(x_adv, X)


def _packed_linear(a, b, lock):
  """Packed logits [Z, Z', g] of a linear system: Z = x A, Z' = x B, g a constant per class."""
  a, b, lock = jnp.asarray(a), jnp.asarray(b), jnp.asarray(lock)
  return lambda x: jnp.concatenate([x @ a, x @ b, jnp.broadcast_to(lock, (x.shape[0],
                                                                          lock.shape[0]))], -1)


def test_training_batch_crafts_fgs_on_z_star_and_pairs_labels_through_the_classmap():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
  lock = np.array([3.0, 0.2, 1.0])  # Far from 1: FGS on Z alone points elsewhere.
  x = rng.uniform(0.3, 0.7, size=(8, 6))
  y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  defense = create_defense("collaborative", 3, classmap=(2, 0, 1), fgs_epsilon=0.1)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  out, _ = defense.training_batch(batch, jax.random.key(0), _packed_linear(a, b, lock), {})

  def ce_grad_sign(weight):  # sign of d CE(x W, y) / dx, in numpy.
    logits = x @ weight
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.sign((p - np.eye(3)[y]) @ weight.T)

  np.testing.assert_allclose(out["image"][:8], x)
  np.testing.assert_allclose(out["image"][8:], x + 0.1 * ce_grad_sign(a * lock), atol=1e-6)
  # The test tells the two apart: FGS on Z (without the lock) moves differently.
  assert np.any(ce_grad_sign(a) != ce_grad_sign(a * lock))
  np.testing.assert_array_equal(out["label"], y)
  np.testing.assert_array_equal(out["robust_label"], np.array((2, 0, 1))[y])


def test_gray_box_target_is_the_z_head_and_the_white_box_target_is_z_star():
  rng = np.random.default_rng(1)
  a, b, lock = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), np.array([2.0, 0.5, 1.5])
  x = rng.uniform(size=(5, 4))
  defense = create_defense("collaborative", 3, classmap=(1, 2, 0))
  net = _packed_linear(a, b, lock)
  logits = lambda threat: call_logits(defense.attack_target(threat, net), jnp.asarray(x), None)
  np.testing.assert_allclose(logits("gray_box"), x @ a, rtol=1e-5)
  np.testing.assert_allclose(logits("white_box"), (x @ a) * lock, rtol=1e-5)


def test_fgs_confusion_counts_by_true_then_predicted_class():
  # Each image is one-hot in a 3-pixel space; the map sends class y's pixel to class
  # (y + 1) % 3 with a margin FGS at eps 0.01 cannot overturn.
  perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32) * 10
  images = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]] * 0.5 + 0.25
  labels = np.array([0, 0, 1, 2, 2, 2])
  counts, probs = fgs_confusion(lambda x: x @ jnp.asarray(perm), images, labels, 3, 0.01, 4)
  np.testing.assert_array_equal(counts, [[0, 2, 0], [0, 0, 1], [3, 0, 0]])
  assert probs.shape == (3, 3) and np.all(probs.argmax(-1) == [1, 2, 0])


def test_resolve_derives_the_classmap_through_the_oracles_cache():
  # The oracle of the test above; its `cached` stands in for the experiment layer's file cache:
  # the defense asks it for the Classmap's arrays and reads and writes no file itself.
  from types import SimpleNamespace
  from defenses_jax.data import ArrayDataset
  perm = jnp.asarray(np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32) * 10)
  images = (np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 2]] * 0.5 + 0.25).reshape(6, 1, 1, 3)
  ds = ArrayDataset(images, np.array([0, 0, 1, 2, 2, 2]), 3)
  requests = []

  def cached(folder, name, settings, compute, contract, **identity):
    arrays, _ = compute()
    assert contract(arrays, {}) is None
    requests.append((folder, name, settings, identity))
    return arrays

  oracle = SimpleNamespace(
      exp=SimpleNamespace(train_ds=ds, defense=create_defense("standard", 3)),
      network=lambda: (lambda x: x.reshape(x.shape[0], -1) @ perm), cached=cached)
  defense = create_defense("collaborative", 3, classmap_oracle="oracle", classmap_epsilon=0.01)
  resolved = defense.resolve(lambda name: {"oracle": oracle}[name], (1, 1, 3), batch_size=4)
  assert resolved.classmap == (1, 2, 0) and not defense.classmap
  ((folder, name, settings, identity),) = requests
  assert (folder, name) == ("classmaps", "classmap") and settings["epsilon"] == 0.01
  assert identity == {"data": ds.fingerprint}
  assert resolved.resolve(None, (1, 1, 3), batch_size=4) is resolved  # Given: nothing to do.
