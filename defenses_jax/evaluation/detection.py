"""Evaluation of a defense's detector: the threshold is fixed on clean held-out test images at a
false-positive rate (5% by default) before any attack, then each attack's adversarial examples
are scored at that threshold.

Per attack: detection rate and ROC AUC (successful adversarial examples against the attacked
subset's correctly classified clean images), accuracy on the inputs the detector accepts, and
"misclassified and accepted" (the attacked, correctly classified examples whose adversarial
version is both misclassified and let through: the attack's success against the defended
system). Held-out images: the test images after the attacked subset, never attacked.
"""

from __future__ import annotations

from typing import Optional

import jax
import ml_collections
import numpy as np

from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax.detectors import Detector, create_detector, fitted_state
from defenses_jax.experiment import variables
from defenses_jax.defenses import Network
from defenses_jax.evaluation import metrics
from defenses_jax.evaluation.clustering import davies_bouldin_index
from defenses_jax.evaluation.runner import run_over_dataset


def detector_from_config(config: ml_collections.ConfigDict, exp) -> Optional[Detector]:
  """The configured detector, None without one (its settings are checked by
  preflight.check_evaluation before any compute)."""
  cfg = config.eval.detection
  if not cfg.detector:
    return None
  return create_detector(cfg.detector, exp.test_ds.num_classes, **cfg.options.to_dict())


def make_scorer(model, defense, detector: Detector, mesh):
  """(params, batch_stats, detector_state, x, key) -> detector scores, data-parallel."""

  def per_device(params, batch_stats, detector_state, x, key):
    key = jax.random.fold_in(key, jax.lax.axis_index(parallel.DATA_AXIS))
    net = Network(model, variables(params, batch_stats))
    return defense.deployed(net, x, key, detector.scorer(detector_state)).detector_score

  return parallel.data_parallel(per_device, mesh, in_specs=(
      parallel.REPLICATED, parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED,
      parallel.REPLICATED), out_specs=parallel.SHARDED)


class DetectionEvaluator:
  """Scores inputs with the trained experiment's detector; the threshold comes from held-out
  clean test images, fixed once, before any attack is scored."""

  def __init__(self, detector: Detector, trained, config, num_attack: int, key):
    exp, state = trained.exp, trained.state
    cfg = config.eval.detection
    self.detector, self.mesh, self.key = detector, exp.mesh, key
    self.batch_size = config.eval.batch_size
    self.state = fitted_state(detector, trained, config.eval.batch_size)
    scorer = make_scorer(exp.model, exp.defense, detector, exp.mesh)
    self._score = lambda x, number: scorer(state.params, state.batch_stats, self.state, x,
                                            jax.random.fold_in(key, number))
    embed = parallel.data_parallel(
        lambda p, b, x: Network(exp.model, variables(p, b)).outputs(x)["embedding"], exp.mesh,
        in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED),
        out_specs=parallel.SHARDED)
    self._embed = lambda x: embed(state.params, state.batch_stats, x)
    held_out = exp.test_ds.rows(num_attack, cfg.num_threshold_examples)
    self.held_out_scores = self.scores(held_out.images)
    fixed = detector.fixed_threshold
    self.threshold = (metrics.threshold_at_fpr(self.held_out_scores, cfg.false_positive_rate)
                      if fixed is None else float(fixed))
    self.summary = {
        "detector": detector.name, "options": cfg.options.to_dict(),
        "target_false_positive_rate": cfg.false_positive_rate if fixed is None else None,
        "fixed_threshold": fixed is not None, "threshold": self.threshold,
        "held_out_examples": len(held_out),
        "held_out_false_positive_rate": float(np.mean(self.held_out_scores >= self.threshold))}

  def davies_bouldin(self, ds: data_lib.ArrayDataset) -> float:
    """The Davies-Bouldin index of the network's penultimate embeddings of ds by true class
    (paper 002's Figure 2 numbers: lower is better separated)."""
    embeddings = run_over_dataset(ds, self.batch_size, self.mesh,
                                  lambda b, n: self._embed(b["image"]))
    flat = np.concatenate(embeddings).reshape(len(ds), -1)
    return davies_bouldin_index(flat, ds.labels)

  def scores(self, images: np.ndarray) -> np.ndarray:
    ds = data_lib.ArrayDataset(np.asarray(images), np.zeros(len(images), np.int32), 2, "scored")
    return np.concatenate(run_over_dataset(ds, self.batch_size, self.mesh,
                                           lambda b, n: self._score(b["image"], n)))

  def attack_metrics(self, clean_scores, clean_correct, adv_scores, adv_correct) -> dict:
    """Detection of one attack at the fixed threshold (see the module docstring)."""
    clean_correct = np.asarray(clean_correct, bool)
    adv_correct = np.asarray(adv_correct, bool)
    successful = clean_correct & ~adv_correct
    accepted = adv_scores < self.threshold
    out = {"num_successful": int(successful.sum()),
           # Paper 003's detection rate: flagged among all adversarial versions of the
           # correctly classified attacked images, successful or not.
           "flagged_rate": float(np.mean(~accepted[clean_correct]))
           if clean_correct.any() else float("nan"),
           # Its precision with as many benign images (those clean images) mixed in, as
           # paper 003's Figures 5-6: flagged adversarial / everything flagged.
           "flagged_precision": _flagged_precision(~accepted[clean_correct],
                                                   clean_scores[clean_correct] >= self.threshold),
           "misclassified_and_accepted": float(np.mean((successful & accepted)[clean_correct]))
           if clean_correct.any() else float("nan")}
    if successful.any() and clean_correct.any():
      out.update(metrics.detection(clean_scores[clean_correct], adv_scores[successful],
                                   self.threshold, adv_correct[successful],
                                   clean_correct[clean_correct]))
    return out


def _flagged_precision(adv_flagged: np.ndarray, clean_flagged: np.ndarray) -> Optional[float]:
  flagged = int(adv_flagged.sum() + clean_flagged.sum())
  return float(adv_flagged.sum() / flagged) if flagged else None
