"""The attacked images of a trained experiment and the attacks run on them: each attack under its
threat model (white-box, gray-box, adaptive, transfer from a source, universal, detector-aware),
batch after batch or with slot refill, scored by a fresh forward pass of the deployed classifier.
Saved white-box examples are reused by transfer attacks (crafted.py).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax import data as data_lib
from defenses_jax.evaluation import crafted, metrics
from defenses_jax.evaluation.detection import DetectionEvaluator
from defenses_jax.evaluation.runner import (make_attack_runner, make_predictor, noise_like,
                                            run_over_dataset)
from defenses_jax.evaluation.slot_runner import make_slot_runner
from defenses_jax.evaluation.threat_models import AttackSpec, DetectorTarget, TargetBuilder
from defenses_jax.evaluation.universal import UniversalPerturbation, fitted_perturbation
from defenses_jax.experiment import TrainedExperiment


class AttackRun(NamedTuple):
  """One attack over the attacked subset."""
  x_adv: np.ndarray
  correct: np.ndarray  # Per example: the deployed classifier is still right on x_adv.
  reused: Optional[str]  # Path of the saved examples a transfer attack reused, else None.
  queries: Optional[np.ndarray]  # Per example, for query attacks run here (-1: not one).
  universal: Optional[UniversalPerturbation] = None  # The perturbation a universal attack added.


class AttackedSet:
  """The attacked images of a trained experiment: runs attacks on them and scores the deployed
  classifier on what they return."""

  def __init__(self, trained: TrainedExperiment, attack_ds, batch_size: int, seed: int):
    self.trained, self.ds, self.batch_size = trained, attack_ds, batch_size
    exp = trained.exp
    self.mesh = exp.mesh
    predictor = make_predictor(exp.model, exp.defense, exp.mesh)
    s = trained.state
    self.key = jax.random.key(seed)
    # Batch `number` of any pass over a dataset draws the same randomness (randomised defenses).
    predict_key = jax.random.fold_in(self.key, 2**20)
    self.predict = lambda x, number: predictor(s.params, s.batch_stats, x,
                                               jax.random.fold_in(predict_key, number))
    self.labels = self.ds.labels
    self.slot_refill = exp.config.eval.slot_refill
    self.detection: Optional[DetectionEvaluator] = None  # Set when the system has a detector.
    # The attacker's own copy of the detector on each transfer source it crafts detector-aware
    # examples on, by source experiment name.
    self.source_detection: dict[str, DetectionEvaluator] = {}

  def subset(self, n: int, seed: int) -> "AttackedSet":
    """The first n attacked examples, in batches no larger than needed (padding costs
    compute)."""
    devices = self.mesh.shape["data"]
    batch = min(self.batch_size, -(-n // devices) * devices)
    sub = AttackedSet(self.trained, self.ds.take(n), batch, seed)
    sub.detection, sub.source_detection = self.detection, self.source_detection
    return sub

  def clean_correct(self) -> np.ndarray:
    out = run_over_dataset(self.ds, self.batch_size, self.mesh,
                           lambda b, n: self.predict(b["image"], n))
    return np.concatenate(out) == self.labels

  def attack(self, spec: AttackSpec, source: Optional[TrainedExperiment],
             progress=None) -> AttackRun:
    if source is not None and not spec.detector_aware:  # Saved examples ignore detectors.
      saved = crafted.find(source.exp.exp_dir, crafted_identity(spec, source), self.labels,
                           self.ds.images, spec.params.get("eps"),
                           spec.info.norm_of(spec.params))
      if saved is not None:
        x_adv = saved[0]
        pred = run_over_dataset(data_lib.ArrayDataset(x_adv, self.labels, self.ds.num_classes,
                                                      "crafted"),
                                self.batch_size, self.mesh,
                                lambda b, n: self.predict(b["image"], n), progress)
        return AttackRun(x_adv, np.concatenate(pred) == self.labels, saved[1], None)
    crafted_on = source or self.trained
    threat = "white_box" if spec.threat_model == "transfer" else spec.threat_model
    if spec.info.universal:
      return self._universal(spec, crafted_on, threat, progress)
    evade, detector_state = None, None
    if spec.detector_aware:  # The threshold was fixed on held-out clean images already.
      detection = (self.detection if source is None
                   else self.source_detection[spec.source_experiment])
      evade = DetectorTarget(detection.detector, attacker_threshold(detection, spec),
                             spec.detector_weight)
      detector_state = detection.state
    build = TargetBuilder(threat, crafted_on.exp.model, crafted_on.exp.defense,
                          spec.eot_samples, evade, spec.surface)
    if spec.info.stepped is not None and evade is None and self.slot_refill:
      return self._slot_refill(spec, build, crafted_on, progress)
    runner = make_attack_runner(spec, build, self.mesh)
    s = crafted_on.state

    def one_batch(batch, number):
      x_adv, queries = runner(s.params, s.batch_stats, batch["image"], batch["label"],
                              jax.random.fold_in(self.key, number), detector_state)
      return {"x_adv": x_adv, "pred": self.predict(x_adv, number), "queries": queries}

    out = run_over_dataset(self.ds, self.batch_size, self.mesh, one_batch, progress)
    return AttackRun(np.concatenate([o["x_adv"] for o in out]),
                     np.concatenate([o["pred"] for o in out]) == self.labels, None,
                     np.concatenate([o["queries"] for o in out]))

  def _slot_refill(self, spec: AttackSpec, build, crafted_on: TrainedExperiment,
                   progress) -> AttackRun:
    """An early-stopping attack over the whole attacked set, a finished example's slot refilled
    with the next image (evaluation/slot_runner.py): `batch_size` slots in all."""
    slots = max(1, self.batch_size // self.mesh.shape["data"])
    info = spec.info

    def build_attack(target):
      if info.queries:  # Seen only through an Oracle.
        target = info.oracle(target, spec.params, build.independent_examples)
      return info.stepped(target, **spec.params)

    runner = make_slot_runner(build_attack, build, self.mesh, slots)
    s = crafted_on.state
    x_adv, attack_info = runner(s.params, s.batch_stats, self.ds.images, self.ds.labels,
                                jax.random.fold_in(self.key, 2**21), progress)
    crafted_ds = data_lib.ArrayDataset(x_adv, self.labels, self.ds.num_classes, "crafted")
    pred = run_over_dataset(crafted_ds, self.batch_size, self.mesh,
                            lambda b, n: self.predict(b["image"], n))
    queries = attack_info.get("queries", np.full(len(x_adv), -1, np.int32))
    return AttackRun(x_adv, np.concatenate(pred) == self.labels, None,
                     np.asarray(queries, np.int32))

  def _universal(self, spec: AttackSpec, crafted_on: TrainedExperiment, threat: str,
                 progress) -> AttackRun:
    # Fitted with the evaluated experiment's seed, so that reruns and sanity checks reuse it.
    fitted = fitted_perturbation(spec, crafted_on, threat, self.trained.exp.config.seed)
    v = jnp.asarray(fitted.v)

    def one_batch(batch, number):
      x_adv = spec.info.apply(v, batch["image"])
      return {"x_adv": x_adv, "pred": self.predict(x_adv, number)}

    out = run_over_dataset(self.ds, self.batch_size, self.mesh, one_batch, progress)
    return AttackRun(np.concatenate([o["x_adv"] for o in out]),
                     np.concatenate([o["pred"] for o in out]) == self.labels, None, None, fitted)

  def noise_correct(self, eps: float, norm: str, num: int) -> np.ndarray:
    """Correctness under random noise of the attack's size, on the first `num` examples."""
    x = noise_like(jax.random.fold_in(self.key, 10**6), jnp.asarray(self.ds.images[:num]), eps,
                   norm)
    noisy = data_lib.ArrayDataset(np.asarray(x), self.labels[:num], self.ds.num_classes, "noisy")
    out = run_over_dataset(noisy, self.batch_size, self.mesh,
                           lambda b, n: self.predict(b["image"], n))
    return np.concatenate(out) == self.labels[:num]


def crafted_as(spec: AttackSpec, compute_dtype: str = "float32") -> dict:
  """What saved examples are matched on: the attack's params, and its EOT draws, surface and
  the precision the network ran in where they are not the defaults (so files saved before these
  existed still match)."""
  extra = {"__eot_samples": spec.eot_samples} if spec.eot_samples > 1 else {}
  if compute_dtype != "float32":
    extra["__compute_dtype"] = compute_dtype
  return {**spec.params, **extra, **({"__surface": spec.surface} if spec.surface else {})}


def crafted_identity(spec: AttackSpec, crafted_on: TrainedExperiment) -> dict:
  """What saved white-box examples are matched on: the attack and its settings (crafted_as),
  the checkpoint step and the fingerprint of the model they were crafted on."""
  dtype = crafted_on.exp.config.model.compute_dtype
  return {"attack": spec.attack, "params": crafted_as(spec, dtype),
          "step": int(crafted_on.state.step), "model": crafted_on.fingerprint}


def attacker_threshold(detection: DetectionEvaluator, spec: AttackSpec) -> float:
  """The detector threshold a detector-aware attacker evades: the deployed one, or the one at
  the spec's own clean false-positive rate (detector_fpr) on the same held-out images."""
  if spec.detector_fpr:
    return metrics.threshold_at_fpr(detection.held_out_scores, spec.detector_fpr)
  return detection.threshold
