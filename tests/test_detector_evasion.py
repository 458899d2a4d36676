"""Attacks on a classifier with its detector (attacks/detector_evasion.py): CW-wb's extra term,
its known minimum on a hand-made system, feature matching onto a target anchor, the folded
logits, and configs that ask for them wrongly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax import attacks
from defenses_jax.attacks import Deployed, Evasion
from defenses_jax.attacks.detector_evasion import cw_wb_violation, evades, system_outputs
from defenses_jax.defenses import create_defense
from defenses_jax.evaluation.threat_models import parse_attack_specs
from experiments.common import attack


def half_plane_system(accept_above=0.6):
  """Two classes on x in R^2: class 1 iff x1 > 0.5; the detector accepts iff x2 > accept_above
  (score accept_above - x2 at threshold 0). Embedding: x itself. Returns (target, evasion)."""
  def system(x, key):
    return Deployed(jnp.stack([jnp.zeros(x.shape[0]), x[:, 0] - 0.5], -1),
                    accept_above - x[:, 1], {"embedding": x})
  return system, Evasion(0.0, anchors=lambda: jnp.eye(2))


def test_cw_wb_detector_term_is_zero_exactly_when_the_score_is_under_the_threshold():
  y = jnp.zeros(4, jnp.int32)
  logits = jnp.asarray([[0.0, 1.0]] * 4)  # Misclassified with margin 1.
  excess = jnp.asarray([-0.5, -1e-6, 0.0, 0.25])
  violation, ok = cw_wb_violation({"class_logits": logits, "excess": excess}, y)
  np.testing.assert_allclose(violation, [0.0, 0.0, 0.0, 0.25])
  np.testing.assert_array_equal(ok, [True, True, False, False])  # Flagged at s >= threshold.
  # The classifier's hinge adds on: correctly classified by margin 2 with kappa 0.
  violation, ok = cw_wb_violation({"class_logits": jnp.asarray([[2.0, 0.0]]),
                                   "excess": jnp.asarray([0.5])}, y[:1])
  np.testing.assert_allclose(violation, [2.5])
  assert not ok[0]


def test_cw_wb_finds_the_smallest_perturbation_that_fools_the_classifier_and_the_detector():
  x = jnp.asarray([[0.3, 0.3]])
  y = jnp.zeros(1, jnp.int32)
  system, evasion = half_plane_system()
  x_adv, info = attacks.cw_wb(system, x, y, jax.random.key(0), evasion=evasion,
                              phase1_iterations=300, phase1_binary_steps=4,
                              phase2_iterations=600, phase2_binary_steps=8,
                              phase1_learning_rate=0.05, phase2_learning_rate=0.01)
  # Phase 1 alone crosses x1 = 0.5 (L2 0.2) and is flagged; the minimum that is also accepted
  # moves to (0.5, 0.6): L2 = sqrt(0.2^2 + 0.3^2).
  assert bool(info["phase1_success"][0]) and bool(info["success"][0])
  assert float(x_adv[0, 0]) > 0.5 and float(x_adv[0, 1]) > 0.6
  assert np.sqrt(0.13) <= float(info["l2"][0]) < np.sqrt(0.13) + 0.03
  # Where no input is accepted, nothing succeeds and x comes back unchanged.
  system, evasion = half_plane_system(accept_above=2.0)
  x_adv, info = attacks.cw_wb(system, x, y, jax.random.key(0), evasion=evasion,
                              phase1_iterations=50, phase1_binary_steps=2,
                              phase2_iterations=50, phase2_binary_steps=2)
  assert not bool(info["success"][0])
  np.testing.assert_array_equal(x_adv, x)


def nearest_anchor_system(anchors, radius):
  """Classifier: the nearest anchor; detector: distance to the predicted class's anchor, at
  threshold `radius` (accepted within it). Embedding: x. Returns (target, evasion)."""
  def system(x, key):
    d2 = jnp.sum(jnp.square(x[:, None, :] - anchors[None]), -1)
    predicted = jnp.argmin(d2, -1)
    return Deployed(-d2, jnp.sqrt(jnp.take_along_axis(d2, predicted[:, None], 1)[:, 0]),
                    {"embedding": x})
  return system, Evasion(radius, anchors=lambda: anchors)


def test_feature_matching_reaches_the_nearest_wrong_anchor_within_the_budget():
  anchors = jnp.asarray([[0.2, 0.2], [0.5, 0.2], [0.9, 0.9]])
  x = jnp.asarray([[0.25, 0.2], [0.25, 0.2]])
  y = jnp.zeros(2, jnp.int32)
  system, evasion = nearest_anchor_system(anchors, radius=0.05)
  x_adv, info = attacks.feature_matching(system, x, y, jax.random.key(0), evasion=evasion,
                                         eps=0.3, steps=60, num_targets=2)
  assert bool(info["success"].all())
  np.testing.assert_array_equal(info["target"], [1, 1])  # Class 1 is the most likely wrong one.
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.3 + 1e-6
  np.testing.assert_allclose(x_adv, jnp.asarray([[0.5, 0.2]] * 2), atol=0.03)
  # A budget too small to enter the acceptance radius of any wrong class fails.
  _, info = attacks.feature_matching(system, x, y, jax.random.key(0), evasion=evasion,
                                     eps=0.1, steps=60, num_targets=2)
  assert not bool(info["success"].any())


def test_folded_logits_of_the_detected_system_match_reject_as_true_class():
  y = jnp.asarray([0, 1], jnp.int32)
  system, evasion = half_plane_system()
  x, key = jnp.asarray([[0.7, 0.1], [0.2, 0.9]]), jax.random.key(0)
  out = system_outputs(system, x, key, evasion)
  expected = attacks.reject_as_true_class(out["class_logits"], out["excess"], 0.0, y)
  folded = attacks.rejecting(system, evasion, y)
  np.testing.assert_allclose(attacks.call_logits(folded, x, key), expected)
  np.testing.assert_array_equal(evades(out, y), [False, True])  # Flagged / accepted.
  with pytest.raises(ValueError, match="labels of a batch of 2"):
    folded(x[:1], key)
  with pytest.raises(ValueError, match="deployed system with a detector"):
    attacks.cw_wb(attacks.as_target(lambda z: z), x, y, key, evasion=evasion)


def test_detector_attacks_in_a_config_must_be_detector_aware():
  defense = create_defense("pdm", 10)
  bad = {"wb": attack("cw_wb", "CW-wb")}
  with pytest.raises(ValueError, match="detector_aware=True"):
    parse_attack_specs(bad, defense, has_detector=True)
  good = {"wb": attack("cw_wb", "CW-wb", detector_aware=True)}
  with pytest.raises(ValueError, match="detector"):
    parse_attack_specs(good, defense, has_detector=False)
  assert parse_attack_specs(good, defense, has_detector=True)[0].detector_aware
  # The attacker's own threshold, as a clean false-positive rate: only detector-aware, in [0, 1).
  for entry in (attack("pgd", "PGD", eps=0.1, step_size=0.01, steps=2, detector_fpr=0.5),
                attack("cw_wb", "CW-wb", detector_aware=True, detector_fpr=1.0)):
    with pytest.raises(ValueError, match="detector_fpr"):
      parse_attack_specs({"a": entry}, defense, has_detector=True)
  entry = attack("cw_wb", "CW-wb", detector_aware=True, detector_fpr=0.5)
  assert parse_attack_specs({"a": entry}, defense, has_detector=True)[0].detector_fpr == 0.5
