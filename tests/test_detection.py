"""Detectors: a toy detector (distance to the class mean) against hand computations, the
threshold fixed on held-out clean images at the requested false-positive rate, the detection
metrics of an attack checked by hand, the state cached by checkpoint step, and the report."""

import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import detectors
from defenses_jax import train as train_lib
from defenses_jax.evaluation.detection import DetectionEvaluator
from defenses_jax.evaluation import attacked_set, evaluate
from defenses_jax.evaluation.threat_models import AttackSpec
from experiments.common import attack


def test_class_mean_detector_against_hand_computed_means_and_distances():
  det = detectors.create_detector("class_mean", 2)
  emb = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
  labels = np.array([0, 0, 1, 1])
  state = det.fit([({"embedding": emb[:2]}, labels[:2]), ({"embedding": emb[2:]}, labels[2:])])
  np.testing.assert_allclose(state["means"], [[1.0, 0.0], [0.0, 5.0]])
  outputs = {"embedding": jnp.array([[1.0, 3.0], [3.0, 5.0]]),
             "class_logits": jnp.array([[2.0, 0.0], [0.0, 1.0]])}  # Predicted 0, then 1.
  scores = det.score(state, outputs, jnp.zeros((2, 1, 1, 1)))
  np.testing.assert_allclose(scores, [3.0, 3.0], rtol=1e-6)  # |(0, 3)| and |(3, 0)|.
  with pytest.raises(ValueError, match="every class"):
    det.fit([({"embedding": emb[:2]}, labels[:2])])
  with pytest.raises(ValueError, match="unknown detector"):
    detectors.create_detector("kde_typo", 2)


def test_misclassified_and_accepted_by_hand():
  ev = DetectionEvaluator.__new__(DetectionEvaluator)  # Only the threshold is needed here.
  ev.threshold = 0.5
  clean_scores = np.array([0.1, 0.2, 0.9, 0.3, 0.4])
  clean_correct = np.array([1, 1, 1, 1, 0], bool)
  adv_scores = np.array([0.8, 0.1, 0.2, 0.7, 0.0])
  adv_correct = np.array([0, 0, 1, 1, 0], bool)
  out = ev.attack_metrics(clean_scores, clean_correct, adv_scores, adv_correct)
  # Successful: examples 0 and 1 (example 4 was wrong to begin with). Example 0 is flagged,
  # example 1 accepted: 1 of the 4 correctly classified examples is misclassified and accepted.
  assert out["num_successful"] == 2
  assert out["misclassified_and_accepted"] == pytest.approx(1 / 4)
  assert out["detection_rate"] == pytest.approx(1 / 2)
  # AUC of [0.8, 0.1] against clean [0.1, 0.2, 0.9, 0.3]: 3 + 0.5 of 8 pairs.
  assert out["auc"] == pytest.approx(3.5 / 8)


def test_detector_folded_in_counts_rejected_inputs_as_the_true_class():
  from defenses_jax.attacks import reject_as_true_class
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(400, 5)).astype(np.float32)
  scores = rng.uniform(0, 2, 400).astype(np.float32)
  labels = rng.integers(0, 5, 400)
  threshold, weight = 1.0, 3.0
  folded = np.asarray(reject_as_true_class(jnp.asarray(logits), jnp.asarray(scores), threshold,
                                           jnp.asarray(labels), weight))
  misclassified = logits.argmax(-1) != labels
  accepted = scores < threshold
  assert 0 < np.mean(misclassified & ~accepted) and 0 < np.mean(misclassified & accepted)
  # Untargeted success on the folded scores is exactly "misclassified and accepted" ...
  np.testing.assert_array_equal(folded.argmax(-1) != labels, misclassified & accepted)
  # ... and its margin is the smaller of the classifier's margin and the detector's, by hand.
  others = np.where(np.eye(5, dtype=bool)[labels], -np.inf, logits).max(-1)
  true = logits[np.arange(400), labels]
  folded_others = np.where(np.eye(5, dtype=bool)[labels], -np.inf, folded).max(-1)
  np.testing.assert_allclose(folded_others - folded[np.arange(400), labels],
                             np.minimum(others - true, weight * (threshold - scores)), atol=1e-5)
  # Targeted: classified as t by the folded scores iff the classifier says t and accepts.
  for t in range(5):
    wanted = (labels != t)
    np.testing.assert_array_equal((folded.argmax(-1) == t)[wanted],
                                  ((logits.argmax(-1) == t) & accepted)[wanted])


def test_evaluation_with_a_detector_fixes_its_threshold_first_and_caches_its_state(
    tmp_path, monkeypatch):
  datasets = blob_dataset(96, seed=0), blob_dataset(64, seed=1)
  config = tiny_config(epochs=4, learning_rate=3e-3)
  config.eval.num_attack_examples = 24
  config.eval.sanity.enabled = False
  config.eval.detection.detector = "class_mean"
  config.eval.detection.false_positive_rate = 0.1
  config.eval.attacks = ml_collections.ConfigDict(
      {"pgd": attack("pgd", "PGD", eps=0.3, step_size=0.05, steps=10, random_start=False),
       # eps 1: the attacker may paint a clean image of another class, which the detector
       # accepts; an attack that ignores the detector paints something it flags.
       "pgd_oblivious": attack("pgd", "PGD eps 1", eps=1.0, step_size=0.05, steps=100,
                               loss="margin"),
       "pgd_aware": attack("pgd", "PGD eps 1, detector-aware", detector_aware=True, eps=1.0,
                           step_size=0.05, steps=100, loss="margin")})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  out = evaluate(config, str(tmp_path), datasets=datasets)
  oblivious, aware = (out.attacks[k].detection for k in ("pgd_oblivious", "pgd_aware"))
  assert oblivious.num_successful > 0 and oblivious.misclassified_and_accepted == 0.0
  assert aware.misclassified_and_accepted > 0.1
  assert out.attacks["pgd_aware"].detector_aware
  d = out.detection
  # Per example over the attacks: never below any one attack, and the oblivious attack (all of
  # whose successes were flagged) adds nothing to the worst case.
  worst = d.worst_case_misclassified_and_accepted
  pgd_evading = out.attacks["pgd"].detection.misclassified_and_accepted
  assert worst >= max(aware.misclassified_and_accepted, pgd_evading)
  assert worst <= aware.misclassified_and_accepted + pgd_evading
  assert d.worst_case_bounded_misclassified_and_accepted <= worst
  assert d.davies_bouldin_index > 0
  assert d.held_out_examples == 64 - 24
  assert d.held_out_false_positive_rate <= 0.1  # 4 of 40 at most.
  assert d.held_out_false_positive_rate >= 0.1 - 1 / 40  # No more conservative than needed.
  pgd = out.attacks["pgd"].detection
  assert pgd.num_successful > 0 and 0.0 <= pgd.auc <= 1.0
  assert (tmp_path / "tiny" / "results" / "roc.png").stat().st_size > 0
  assert "## Detector: class_mean" in (tmp_path / "tiny" / "results" / "eval.md").read_text()
  cached = list((tmp_path / "tiny" / "detectors").glob("class_mean-*-step24.npz"))
  assert len(cached) == 1
  # A second evaluation loads the state of this step instead of fitting again.
  def no_refit(self, batches):
    raise AssertionError("refitted although a state for this step is cached")
  monkeypatch.setattr(detectors.ClassMeanDistance, "fit", no_refit)
  again = evaluate(config, str(tmp_path), datasets=datasets)
  assert again.detection.threshold == d.threshold
  # Too few held-out images for the false-positive rate: refused before any attack runs.
  config.eval.num_attack_examples = 60
  with pytest.raises(ValueError, match="held-out"):
    evaluate(config, str(tmp_path), datasets=datasets)


def test_a_detector_aware_attacker_evades_the_threshold_at_its_own_false_positive_rate():
  held_out = np.arange(10.0)  # Clean held-out scores 0..9; the deployed threshold flags 9.
  detection = types.SimpleNamespace(held_out_scores=held_out, threshold=9.0)
  spec = lambda **kw: AttackSpec("a", "A", "cw_wb", "white_box", {}, detector_aware=True, **kw)
  assert attacked_set.attacker_threshold(detection, spec()) == 9.0
  # At a 50% false-positive rate the 5 highest clean scores (5..9) are flagged: threshold 5.
  assert attacked_set.attacker_threshold(detection, spec(detector_fpr=0.5)) == 5.0
