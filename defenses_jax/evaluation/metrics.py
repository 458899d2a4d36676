"""Robustness and detection metrics, from per-example arrays (numpy, on the host).

Robustness: an example counts as robust under an attack if the defense still classifies the
attacked input correctly; robust accuracy is over *all* test examples (a clean error stays an
error). Detection: a detector gives each input a score, higher meaning "more likely
adversarial"; the threshold is fixed on clean data at a chosen false-positive rate *before* any
attack, as a deployed detector would have to be.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def _nan_stat(fn, values) -> float:
  values = np.asarray(values, np.float64)
  return float(fn(values)) if values.size else float("nan")


def robustness(clean_correct, adv_correct, success, l2, linf, l0=None) -> dict:
  """Metrics of one attack. `success`: the attack changed a correct prediction into a wrong one
  (re-checked on a fresh forward pass); distortion statistics are over those successes."""
  clean_correct = np.asarray(clean_correct, bool)
  adv_correct = np.asarray(adv_correct, bool)
  success = np.asarray(success, bool) & clean_correct
  l2, linf = np.asarray(l2)[success], np.asarray(linf)[success]
  attacked = max(int(clean_correct.sum()), 1)
  extra = {} if l0 is None else {"median_l0": _nan_stat(np.median, np.asarray(l0)[success])}
  return {**extra,
      "robust_accuracy": float(np.mean(adv_correct & clean_correct)),
      "attack_success_rate": float(success.sum() / attacked),
      "num_examples": int(clean_correct.size),
      "mean_l2": _nan_stat(np.mean, l2), "median_l2": _nan_stat(np.median, l2),
      "mean_linf": _nan_stat(np.mean, linf), "median_linf": _nan_stat(np.median, linf),
  }


def worst_case_accuracy(clean_correct, adv_correct_per_attack: Iterable) -> float:
  """Accuracy when each example faces whichever attack beats it (the per-example minimum)."""
  robust = np.asarray(clean_correct, bool).copy()
  for adv_correct in adv_correct_per_attack:
    robust &= np.asarray(adv_correct, bool)
  return float(robust.mean())


def roc_auc(clean_scores, adversarial_scores) -> float:
  """Area under the ROC curve of `score` separating adversarial (positive) from clean inputs:
  the probability that a random adversarial input outscores a random clean one (ties count 1/2)."""
  clean = np.asarray(clean_scores, np.float64)
  adv = np.asarray(adversarial_scores, np.float64)
  if not clean.size or not adv.size:
    raise ValueError("ROC AUC needs at least one clean and one adversarial score.")
  scores = np.concatenate([clean, adv])
  order = scores.argsort(kind="mergesort")
  ranks = np.empty_like(scores)
  ranks[order] = np.arange(1, scores.size + 1)
  for value in np.unique(scores):  # Average ranks over ties.
    tied = scores == value
    ranks[tied] = ranks[tied].mean()
  rank_sum = ranks[clean.size:].sum()
  return float((rank_sum - adv.size * (adv.size + 1) / 2) / (adv.size * clean.size))


def roc_curve(clean_scores, adversarial_scores) -> tuple[np.ndarray, np.ndarray]:
  """(false positive rates, true positive rates) over every threshold, for plotting."""
  clean = np.asarray(clean_scores, np.float64)
  adv = np.asarray(adversarial_scores, np.float64)
  thresholds = np.unique(np.concatenate([clean, adv, [np.inf]]))[::-1]
  fpr = np.array([(clean >= t).mean() for t in thresholds])
  tpr = np.array([(adv >= t).mean() for t in thresholds])
  return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def threshold_at_fpr(clean_scores, fpr: float = 0.05) -> float:
  """A threshold flagging at most `fpr` of the clean inputs (flagged: score >= threshold).

  It is the lowest clean score still flagged (the (1 - fpr) quantile of the clean scores): of the
  thresholds that flag the same clean inputs, the highest, so an adversarial score that falls
  between two clean scores is never credited to the detector by the choice of threshold."""
  if not 0.0 <= fpr < 1.0:
    raise ValueError(f"false-positive rate must be in [0, 1); got {fpr}.")
  clean = np.sort(np.asarray(clean_scores, np.float64))[::-1]
  allowed = int(np.floor(fpr * clean.size))  # How many clean inputs may be flagged.
  if allowed == 0:
    return float(np.nextafter(clean[0], np.inf))
  # Flag the `allowed` highest scores, unless a tie at the boundary would flag more.
  threshold = clean[allowed - 1]
  if clean[allowed] == threshold:
    threshold = np.nextafter(threshold, np.inf)
  return float(threshold)


def detection(clean_scores, adversarial_scores, threshold: float, adv_correct=None,
              clean_correct=None) -> dict:
  """Detector metrics at a fixed threshold (flag when score >= threshold).

  adv_correct / clean_correct (optional) give the classifier's correctness on each input, for
  the accuracy on inputs the detector lets through.
  """
  clean = np.asarray(clean_scores) >= threshold
  adv = np.asarray(adversarial_scores) >= threshold
  true_pos, false_pos = int(adv.sum()), int(clean.sum())
  out = {
      "threshold": float(threshold),
      "auc": roc_auc(clean_scores, adversarial_scores),
      "detection_rate": float(adv.mean()),  # Recall on adversarial inputs.
      "false_positive_rate": float(clean.mean()),
      "precision": float(true_pos / max(true_pos + false_pos, 1)),
      "recall": float(adv.mean()),
  }
  if adv_correct is not None and clean_correct is not None:
    kept_correct = np.concatenate([np.asarray(clean_correct)[~clean],
                                   np.asarray(adv_correct)[~adv]])
    out["accuracy_on_accepted"] = _nan_stat(np.mean, kept_correct)
  return out

