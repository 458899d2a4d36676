"""Evaluation of a trained experiment: clean accuracy, robustness under each configured attack
and threat model, worst case over attacks, sanity checks, and the paper-style report.

    python launch.py --config=experiments/standard.py:cpu --workdir=runs --mode=eval

Results land in <workdir>/<experiment_name>/results/: eval.json, eval.md and figures.
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from defenses_jax import data as data_lib
from defenses_jax.attacks import norms
from defenses_jax.attacks.wrappers import call_logits
from defenses_jax.evaluation import crafted, metrics, report, sanity
from defenses_jax.evaluation.detection import DetectionEvaluator, detector_from_config
from defenses_jax.evaluation.preflight import check_evaluation
from defenses_jax.evaluation.runner import (make_attack_runner, make_predictor, noise_like,
                                            run_over_dataset)
from defenses_jax.evaluation.slot_runner import make_slot_runner
from defenses_jax.evaluation.threat_models import (AttackSpec, DetectorTarget, logits_builder,
                                                   parse_attack_specs)
from defenses_jax.evaluation.universal import UniversalPerturbation, fitted_perturbation
from defenses_jax.experiment import TrainedExperiment, evaluate_clean, load_experiment
from defenses_jax.checkpoint import latest_checkpoint_step
from defenses_jax.files import check_writable, write_json
from defenses_jax.progress import progress_bar

NUM_EXAMPLE_IMAGES = 6  # Per attack, for the example grid.


class AttackRun(NamedTuple):
  """One attack over the attacked subset."""
  x_adv: np.ndarray
  correct: np.ndarray  # Per example: the deployed classifier is still right on x_adv.
  reused: Optional[str]  # Path of the saved examples a transfer attack reused, else None.
  queries: Optional[np.ndarray]  # Per example, for query attacks run here (-1: not one).
  universal: Optional[UniversalPerturbation] = None  # The perturbation a universal attack added.


class _Evaluator:
  """Runs attacks on the attacked subset of the test set and scores the deployed classifier."""

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
    self.slot_refill = bool(exp.config.eval.get("slot_refill", True))
    self.detection: Optional[DetectionEvaluator] = None  # Set when the system has a detector.
    # The attacker's own copy of the detector on each transfer source it crafts detector-aware
    # examples on, by source experiment name.
    self.source_detection: dict[str, DetectionEvaluator] = {}

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
    build = logits_builder(threat, crafted_on.exp.model, crafted_on.exp.defense,
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

    def build_attack(logits_fn):
      if info.queries:  # Seen only through an Oracle; networks treat examples independently.
        logits_fn = info.oracle(logits_fn, spec.params, independent_examples=True)
      return info.stepped(logits_fn, **spec.params)

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


def _subset(ev: _Evaluator, n: int, seed: int) -> _Evaluator:
  """The first n attacked examples, in batches no larger than needed (padding costs compute)."""
  devices = ev.mesh.shape["data"]
  batch = min(ev.batch_size, -(-n // devices) * devices)
  sub = _Evaluator(ev.trained, ev.ds.take(n), batch, seed)
  sub.detection, sub.source_detection = ev.detection, ev.source_detection
  return sub


def _sanity_checks(ev: _Evaluator, specs, results, per_attack_correct, clean_correct, cfg):
  """Carlini et al. 2019 checks on the first `cfg.num_examples` attacked examples."""
  n = min(cfg.num_examples, len(ev.ds))
  sub = _subset(ev, n, seed=1)
  sub_clean = clean_correct[:n]
  s, exp = ev.trained.state, ev.trained.exp
  white_box = logits_builder("white_box", exp.model, exp.defense)(s.params, s.batch_stats)
  records = [sanity.gradients_are_informative(
      lambda z: call_logits(white_box, z, ev.key), jnp.asarray(sub.ds.images),
      jnp.asarray(sub.ds.labels))]
  unbounded = AttackSpec("unbounded", "PGD, eps = 1 (whole box)", "pgd", "white_box",
                         {"eps": 1.0, "step_size": 0.05, "steps": cfg.unbounded_steps,
                          "random_start": False, "loss": "margin"})
  adv_correct = sub.attack(unbounded, None).correct
  success = float(np.mean(~adv_correct[sub_clean])) if sub_clean.any() else 1.0
  records.append(sanity.unbounded_attack_succeeds(success))
  for spec in specs:
    if spec.threat_model == "transfer":
      continue
    # An attack run on fewer examples (its own num_examples) is checked on those only.
    m = min(n, spec.num_examples or n)
    spec_sub, spec_clean = (sub, sub_clean) if m == n else (_subset(ev, m, seed=1),
                                                            clean_correct[:m])
    param = spec.info.budget_param
    broken_already = not np.any(per_attack_correct[spec.key][:m] & spec_clean)
    if param and spec.threat_model in cfg.more_steps_threat_models and broken_already:
      # Nothing left to find: rerunning (an attack such as ZOO costs minutes) cannot lower 0.
      records.append(sanity.more_steps_not_needed(spec.label, num_examples=m))
    elif param and spec.threat_model in cfg.more_steps_threat_models:
      accuracy_at = lambda steps, spec=spec, param=param, on=spec_sub, ok=spec_clean: float(
          np.mean(on.attack(spec.with_params(**{param: steps}), None).correct & ok))
      default_steps = inspect.signature(spec.fn).parameters[param].default
      records.append(sanity.more_steps_do_not_help(spec.label, accuracy_at,
                                                   int(spec.params.get(param, default_steps)),
                                                   cfg.more_steps_factor, num_examples=m))
    if "eps" in spec.params:
      noise_acc = float(np.mean(spec_sub.noise_correct(
          spec.params["eps"], spec.info.norm_of(spec.params), m) & spec_clean))
      attack_acc = float(np.mean(per_attack_correct[spec.key][:m] & spec_clean))
      records.append(sanity.noise_weaker_than_attack(spec.label, attack_acc, noise_acc,
                                                     num_examples=m))
  for spec in specs:
    if spec.threat_model != "transfer":
      continue
    for other in specs:
      if (other.threat_model == "white_box" and other.attack == spec.attack
          and other.params == spec.params and other.detector_aware == spec.detector_aware):
        records.append(sanity.transfer_not_stronger(
            spec.label, _robust_to(results[spec.key]), other.label,
            _robust_to(results[other.key])))
  return records


def _eps_sweep(ev: _Evaluator, specs, cfg, clean_correct):
  spec = next((s for s in specs if s.key == cfg.attack), None)
  if spec is None:
    raise ValueError(f"eval.eps_sweep.attack {cfg.attack!r} is not one of eval.attacks.")
  n = min(cfg.num_examples, len(ev.ds))
  sub = _subset(ev, n, seed=2)
  return {"attack": spec.key, "label": spec.label, "num_examples": n,
          "points": _sweep(sub, spec, cfg.eps_values, clean_correct[:n])}


def _sweep(sub: _Evaluator, spec: AttackSpec, eps_values, clean_correct) -> list[dict]:
  points = []
  for eps in eps_values:
    changes = {"eps": float(eps)}
    if spec.attack in ("pgd", "ll_pgd") and "step_size" in spec.params:
      # Keep the step a fixed fraction of the budget, as the papers' Name(n1, n2) notation does.
      changes["step_size"] = spec.params["step_size"] * float(eps) / spec.params["eps"]
    correct = sub.attack(spec.with_params(**changes), None).correct & clean_correct
    points.append({"eps": float(eps), "robust_accuracy": float(np.mean(correct))})
  return points


def accuracy_vs_eps(config: ml_collections.ConfigDict, workdir: str, attack_key: str,
                    eps_values, num_examples: int, datasets: Optional[tuple] = None) -> dict:
  """Accuracy of the trained experiment under one of its eval.attacks (not detector-aware, not
  transfer) at each eps, on its first `num_examples` test images (paper 002's Figure 3)."""
  trained = TrainedExperiment(config, workdir, datasets)
  specs = {s.key: s for s in parse_attack_specs(config.eval.attacks, trained.exp.defense,
                                                has_detector=bool(config.eval.detection.detector))}
  spec = specs.get(attack_key)
  if spec is None or "eps" not in spec.params or spec.detector_aware or spec.source_experiment:
    raise ValueError(f"accuracy_vs_eps: {attack_key!r} must be one of {config.experiment_name}'s "
                     "eval.attacks with an eps, neither detector-aware nor a transfer attack.")
  ev = _Evaluator(trained, trained.exp.test_ds.take(num_examples), config.eval.batch_size,
                  config.seed)
  return {"attack": attack_key, "label": spec.label, "num_examples": len(ev.ds),
          "points": _sweep(ev, spec, eps_values, ev.clean_correct())}


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
  dtype = crafted_on.exp.config.model.get("compute_dtype", "float32")
  return {"attack": spec.attack, "params": crafted_as(spec, dtype),
          "step": int(crafted_on.state.step), "model": crafted_on.fingerprint}


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             datasets: Optional[tuple] = None, other_test_data: bool = False) -> dict:
  """Evaluates the experiment's latest checkpoint under config.eval (see the module docstring)
  and returns the summary written to results/eval.json. `datasets` = (train, test): the data
  an experiment trained on your own arrays was trained with; `other_test_data=True` evaluates
  it on another test set knowingly."""
  trained = TrainedExperiment(config, workdir, datasets, other_test_data)
  exp = trained.exp
  specs = check_evaluation(config, exp.defense, len(exp.test_ds))
  results_dir = os.path.join(exp.exp_dir, "results")
  if jax.process_index() == 0:  # Before any compute: results and cached fits must be saved.
    for directory in (exp.exp_dir, results_dir):
      check_writable(directory)
  sources = {spec.source_experiment: load_experiment(workdir, spec.source_experiment, config,
                                                    datasets)
             for spec in specs if spec.threat_model == "transfer"}
  attack_ds = exp.test_ds.take(config.eval.num_attack_examples)
  detector = detector_from_config(config, exp)
  ev = _Evaluator(trained, attack_ds, config.eval.batch_size, config.seed)
  detection = None if detector is None else DetectionEvaluator(
      detector, trained, config, len(attack_ds), jax.random.fold_in(ev.key, 3 * 2**20))
  ev.detection = detection
  for name in {s.source_experiment for s in specs if s.detector_aware and s.source_experiment}:
    ev.source_detection[name] = DetectionEvaluator(detector, sources[name], config,
                                                   len(attack_ds), jax.random.fold_in(ev.key, 5))
  clean_accuracy = evaluate_clean(exp.eval_step(), trained.state, exp.test_ds,
                                  config.eval.batch_size, exp.mesh)
  clean_correct = ev.clean_correct()
  defense_metrics = exp.defense.evaluation_metrics(trained.network(), attack_ds.images,
                                                   jax.random.fold_in(ev.key, 7 * 2**20))
  clean_scores = None if detection is None else detection.scores(attack_ds.images)
  results, per_attack_correct, examples, roc, evading = {}, {}, {}, {}, {}
  bar = progress_bar(len(specs) * len(attack_ds), enabled=config.train.progress,
                     description=f"{config.experiment_name} attacks", unit="image")
  for spec in specs:
    bar.set_description(f"{config.experiment_name}: {spec.label}")
    # An attack with its own num_examples (a costly one) runs on the first n attacked images.
    n = min(spec.num_examples or len(attack_ds), len(attack_ds))
    on = ev if n == len(attack_ds) else _subset(ev, n, seed=config.seed)
    run = on.attack(spec, sources.get(spec.source_experiment), bar)
    if n < len(attack_ds):
      bar.update(len(attack_ds) - n)
    x_adv, adv_correct, reused = run.x_adv, run.correct, run.reused
    d = norms.distances(jnp.asarray(x_adv), jnp.asarray(attack_ds.images[:n]))
    results[spec.key] = {
        "label": spec.label, "attack": spec.attack, "threat_model": spec.threat_model,
        "access": spec.info.access,
        "params": spec.params, "source_experiment": spec.source_experiment,
        "reused_examples": reused and os.path.relpath(reused, workdir),
        "detector_aware": spec.detector_aware, "overridden_params": spec.overridden,
        **metrics.robustness(clean_correct[:n], adv_correct, clean_correct[:n] & ~adv_correct,
                             np.asarray(d["l2"]), np.asarray(d["linf"]), np.asarray(d["l0"]))}
    # Images this attack did not run on count as it found them (clean) in the worst case.
    per_attack_correct[spec.key] = np.concatenate([adv_correct, clean_correct[n:]])
    if spec.info.queries and run.queries is not None:  # Queries spent per example.
      attacked, fooled = clean_correct[:n], clean_correct[:n] & ~adv_correct
      results[spec.key]["queries"] = {
          "budget": spec.info.oracle_budget(spec.params),
          "mean": float(np.mean(run.queries[attacked])) if attacked.any() else None,
          "median_successful": float(np.median(run.queries[fooled])) if fooled.any()
                               else None}
    if run.universal is not None:
      results[spec.key]["universal"] = {
          **run.universal.info,
          "cached": os.path.relpath(run.universal.path, workdir)}
    results[spec.key]["mean_l2_per_pixel"] = _per_pixel_mean(d["l2"], x_adv,
                                                             clean_correct[:n] & ~adv_correct)
    if detection is not None:
      adv_scores = detection.scores(x_adv)
      results[spec.key]["detection"] = detection.attack_metrics(
          clean_scores[:n], clean_correct[:n], adv_scores, adv_correct)
      evading[spec.key] = np.zeros(len(attack_ds), bool)
      evading[spec.key][:n] = clean_correct[:n] & ~adv_correct & (adv_scores < detection.threshold)
      results[spec.key]["detection"]["mean_l2_per_pixel_evading"] = _per_pixel_mean(
          d["l2"], x_adv, evading[spec.key][:n])
      if results[spec.key]["detection"]["num_successful"]:
        roc[spec.label] = (clean_scores[:n][clean_correct[:n]],
                           adv_scores[clean_correct[:n] & ~adv_correct])
    if (config.eval.save_adversarial_examples and spec.threat_model == "white_box"
        and not spec.detector_aware and jax.process_index() == 0):  # What transfer reuses.
      crafted.save(results_dir, spec.key, crafted_identity(spec, trained), x_adv,
                   attack_ds.labels[:n], attack_ds.images[:n])
    examples[spec.label] = x_adv[:NUM_EXAMPLE_IMAGES]
  bar.close()
  summary = {
      "experiment_name": config.experiment_name, "step": int(trained.state.step),
      "total_steps": exp.total_steps,
      "dataset": config.dataset.name, "num_test_examples": len(exp.test_ds),
      "num_attack_examples": len(attack_ds), "clean_accuracy": clean_accuracy,
      "clean_accuracy_attacked_subset": float(np.mean(clean_correct)), "attacks": results,
      "worst_case_robust_accuracy": metrics.worst_case_accuracy(
          clean_correct, per_attack_correct.values()) if specs else None,
  }
  if defense_metrics:
    summary["defense_metrics"] = defense_metrics
  # Per example, the worst case over a named subset of the attacks (e.g. every BPDA variant).
  groups = dict(config.eval.get("worst_case_groups") or {})
  if groups:
    summary["worst_case_groups"] = {
        name: metrics.worst_case_accuracy(clean_correct, [per_attack_correct[k] for k in keys])
        for name, keys in groups.items()}
  if detection is not None:
    bounded = [s.key for s in specs if "eps" in s.params and s.threat_model != "transfer"]
    summary["detection"] = {
        **detection.summary,
        "attacked_clean_false_positive_rate": float(np.mean(clean_scores >= detection.threshold)),
        # Per example, misclassified and accepted under any attack (bounded: those with an eps).
        "worst_case_misclassified_and_accepted": _any_rate(evading.values(), clean_correct),
        "worst_case_bounded_misclassified_and_accepted": _any_rate(
            [evading[k] for k in bounded], clean_correct),
        "davies_bouldin_index": detection.davies_bouldin(exp.test_ds)}
  if config.eval.sanity.enabled and specs:
    checks = _sanity_checks(ev, specs, results, per_attack_correct, clean_correct,
                            config.eval.sanity)
    summary["sanity"] = checks
    summary["sanity_passed"] = all(c["status"] == sanity.PASS for c in checks)
  if config.eval.eps_sweep.attack:
    summary["eps_sweep"] = _eps_sweep(ev, specs, config.eval.eps_sweep, clean_correct)
  summary["paper"] = config.paper.to_dict()
  summary["eval_config"] = config.eval.to_dict()  # Lets a suite tell a stale result from a current one.
  # Kept with the results, and checked by a suite: a bfloat16 result is not a float32 one.
  summary["compute_dtype"] = config.model.get("compute_dtype", "float32")
  write_json(os.path.join(results_dir, "eval.json"), summary)
  if jax.process_index() == 0:
    report.write_report(summary, results_dir, clean_images=attack_ds.images[:NUM_EXAMPLE_IMAGES],
                        adversarial_images=examples)
    if roc:
      report.plot_roc(roc, os.path.join(results_dir, "roc.png"))
    # Training may have moved on while this ran: then these results are stale at once.
    latest = latest_checkpoint_step(workdir, config.experiment_name)
    if latest is not None and latest != summary["step"] and report.mark_if_stale(results_dir,
                                                                                  latest):
      summary["stale_since_step"] = latest
  return summary


def attacker_threshold(detection: DetectionEvaluator, spec: AttackSpec) -> float:
  """The detector threshold a detector-aware attacker evades: the deployed one, or the one at
  the spec's own clean false-positive rate (detector_fpr) on the same held-out images."""
  if spec.detector_fpr:
    return metrics.threshold_at_fpr(detection.held_out_scores, spec.detector_fpr)
  return detection.threshold


def _robust_to(result: dict) -> float:
  """Robust accuracy of the deployed system: against a detector-aware attack, the share of
  examples not both misclassified and accepted (its classifier-only accuracy would count a
  flagged example as lost)."""
  if result["detector_aware"] and "detection" in result:
    return 1.0 - result["detection"]["misclassified_and_accepted"]
  return result["robust_accuracy"]


def _per_pixel_mean(l2, x_adv: np.ndarray, chosen: np.ndarray) -> Optional[float]:
  """Mean of ||x' - x||_2 / sqrt(n) over the chosen examples (n: values per image): paper 002's
  Table 3 distortion, a per-pixel root mean square. None when none is chosen."""
  chosen = np.asarray(chosen, bool)
  if not chosen.any():
    return None
  return float(np.mean(np.asarray(l2)[chosen]) / np.sqrt(np.prod(x_adv.shape[1:])))


def _any_rate(masks, clean_correct: np.ndarray) -> Optional[float]:
  """Fraction of the correctly classified clean examples that some mask marks."""
  masks = list(masks)
  if not masks or not clean_correct.any():
    return None
  return float(np.mean(np.logical_or.reduce(masks)[clean_correct]))
