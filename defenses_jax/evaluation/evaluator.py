"""Evaluation of a trained experiment: clean accuracy, robustness under each configured attack
and threat model, worst case over attacks, detection, sanity checks, and the paper-style report.

    python launch.py --config=experiments/standard.py:cpu --workdir=runs --mode=eval

Results land in <workdir>/<experiment_name>/results/: eval.json (results.EvalSummary), eval.md
and figures.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from defenses_jax.attacks import norms
from defenses_jax.checkpoint import latest_checkpoint_step
from defenses_jax.evaluation import crafted, metrics, report, results, sanity_runs, sweep
from defenses_jax.evaluation.attacked_set import AttackedSet, AttackRun, crafted_identity
from defenses_jax.evaluation.detection import DetectionEvaluator, detector_from_config
from defenses_jax.evaluation.preflight import check_evaluation
from defenses_jax.evaluation.threat_models import AttackSpec
from defenses_jax.experiment import TrainedExperiment, evaluate_clean, load_experiment
from defenses_jax.files import check_writable
from defenses_jax.progress import announce, progress_bar

NUM_EXAMPLE_IMAGES = 6  # Per attack, for the example grid.


@dataclasses.dataclass
class _Evaluation:
  """What the stages of one evaluation share."""
  config: ml_collections.ConfigDict
  workdir: str
  trained: TrainedExperiment
  specs: list
  sources: dict  # Transfer sources by experiment name.
  attacked: AttackedSet
  detection: Optional[DetectionEvaluator]
  # The clean stage's results, then each attack's.
  clean_correct: np.ndarray = None
  clean_scores: Optional[np.ndarray] = None
  attacks: dict = dataclasses.field(default_factory=dict)  # key -> results.AttackResult
  correct: dict = dataclasses.field(default_factory=dict)  # key -> per example, still right
  evading: dict = dataclasses.field(default_factory=dict)  # key -> misclassified and accepted
  examples: dict = dataclasses.field(default_factory=dict)  # label -> a few x_adv
  roc: dict = dataclasses.field(default_factory=dict)  # label -> (clean, adversarial) scores

  @property
  def results_dir(self) -> str:
    return os.path.join(self.trained.exp.exp_dir, "results")

  @property
  def progress(self) -> bool:
    return bool(self.config.train.progress)


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             datasets: Optional[tuple] = None, other_test_data: bool = False
             ) -> results.EvalSummary:
  """Evaluates the experiment's latest checkpoint under config.eval and returns its summary
  (also written to results/eval.json, with eval.md and figures beside it).

  Stages: everything is checked and the detector's threshold fixed (_start); clean accuracy
  (_clean); each attack in turn (_attack), one progress bar and one line each; the summary
  with worst cases (_summary); the sanity checks and the eps sweep; the files (_write).
  `datasets` = (train, test): the data an experiment trained on your own arrays was trained
  with; `other_test_data=True` evaluates it on another test set knowingly.
  """
  ev = _start(config, workdir, datasets, other_test_data)
  _clean(ev)
  for position, spec in enumerate(ev.specs):
    _attack(ev, spec, f"[{position + 1}/{len(ev.specs)}]")
  summary = _summary(ev)
  if config.eval.sanity.enabled and ev.specs:
    summary.sanity = sanity_runs.run_checks(ev.attacked, ev.specs, ev.attacks, ev.correct,
                                            ev.clean_correct, config.eval.sanity, ev.progress)
  if config.eval.eps_sweep.attack:
    summary.eps_sweep = sweep.eps_sweep(ev.attacked, ev.specs, config.eval.eps_sweep,
                                        ev.clean_correct)
  _write(ev, summary)
  return summary


def _start(config, workdir, datasets, other_test_data) -> _Evaluation:
  """Restores the checkpoint and checks everything before any compute (attacks, detector,
  writable results); loads transfer sources; fits the detector and fixes its threshold on
  held-out clean images, before any attack."""
  trained = TrainedExperiment(config, workdir, datasets, other_test_data)
  exp = trained.exp
  specs = check_evaluation(config, exp.defense, len(exp.test_ds))
  if jax.process_index() == 0:  # Before any compute: results and cached fits must be saved.
    for directory in (exp.exp_dir, os.path.join(exp.exp_dir, "results")):
      check_writable(directory)
  sources = {spec.source_experiment: load_experiment(workdir, spec.source_experiment, config,
                                                    datasets)
             for spec in specs if spec.threat_model == "transfer"}
  attack_ds = exp.test_ds.take(config.eval.num_attack_examples)
  attacked = AttackedSet(trained, attack_ds, config.eval.batch_size, config.seed)
  detector = detector_from_config(config, exp)
  detection = None if detector is None else DetectionEvaluator(
      detector, trained, config, len(attack_ds), jax.random.fold_in(attacked.key, 3 * 2**20))
  attacked.detection = detection
  for name in {s.source_experiment for s in specs if s.detector_aware and s.source_experiment}:
    attacked.source_detection[name] = DetectionEvaluator(
        detector, sources[name], config, len(attack_ds), jax.random.fold_in(attacked.key, 5))
  return _Evaluation(config, workdir, trained, specs, sources, attacked, detection)


def _clean(ev: _Evaluation) -> None:
  """Which attacked images the deployed classifier gets right, and their detector scores."""
  ev.clean_correct = ev.attacked.clean_correct()
  if ev.detection is not None:
    ev.clean_scores = ev.detection.scores(ev.attacked.ds.images)


def _attack(ev: _Evaluation, spec: AttackSpec, position: str) -> None:
  """One attack over the attacked images (an attack with its own num_examples, a costly one,
  over the first of them): its result, per-example correctness, detection and saved examples."""
  all_images = ev.attacked.ds
  n = min(spec.num_examples or len(all_images), len(all_images))
  on = ev.attacked if n == len(all_images) else ev.attacked.subset(n, seed=ev.config.seed)
  bar = progress_bar(n, enabled=ev.progress, unit="image",
                     description=f"{ev.config.experiment_name} {position} {spec.label}")
  began = time.monotonic()
  run = on.attack(spec, ev.sources.get(spec.source_experiment), bar)
  bar.close()
  clean = ev.clean_correct[:n]
  fooled = clean & ~run.correct
  d = norms.distances(jnp.asarray(run.x_adv), jnp.asarray(all_images.images[:n]))
  result = results.AttackResult(
      label=spec.label, attack=spec.attack, threat_model=spec.threat_model,
      access=spec.info.access, params=spec.params, source_experiment=spec.source_experiment,
      detector_aware=spec.detector_aware, overridden_params=spec.overridden,
      reused_examples=run.reused and os.path.relpath(run.reused, ev.workdir),
      mean_l2_per_pixel=_per_pixel_mean(d["l2"], run.x_adv, fooled),
      queries=_queries(spec, run, clean, fooled),
      universal=None if run.universal is None else {
          **run.universal.info, "cached": os.path.relpath(run.universal.path, ev.workdir)},
      **metrics.robustness(clean, run.correct, fooled, np.asarray(d["l2"]),
                           np.asarray(d["linf"]), np.asarray(d["l0"])))
  # Images this attack did not run on count as it found them (clean) in the worst case.
  ev.correct[spec.key] = np.concatenate([run.correct, ev.clean_correct[n:]])
  if ev.detection is not None:
    result.detection = _detection(ev, spec, run, d["l2"], n)
  ev.attacks[spec.key] = result
  cfg = ev.config.eval
  if (cfg.save_adversarial_examples and spec.threat_model == "white_box"
      and not spec.detector_aware and jax.process_index() == 0):  # What transfer reuses.
    crafted.save(ev.results_dir, spec.key, crafted_identity(spec, ev.trained), run.x_adv,
                 all_images.labels[:n], all_images.images[:n])
  ev.examples[spec.label] = run.x_adv[:NUM_EXAMPLE_IMAGES]
  evaded = "" if result.detection is None else (
      f", misclassified and accepted {report.pct(result.detection.misclassified_and_accepted)}")
  announce(f"{ev.config.experiment_name} {position} {spec.label}: robust accuracy "
           f"{report.pct(result.robust_accuracy)}{evaded} ({n} images, "
           f"{time.monotonic() - began:.0f} s)")


def _queries(spec: AttackSpec, run: AttackRun, clean, fooled) -> Optional[results.QueryCounts]:
  """A query attack's queries per image: its budget, mean over the attacked, median over the
  fooled."""
  if not spec.info.queries or run.queries is None:
    return None
  return results.QueryCounts(
      budget=spec.info.oracle_budget(spec.params),
      mean=float(np.mean(run.queries[clean])) if clean.any() else None,
      median_successful=float(np.median(run.queries[fooled])) if fooled.any() else None)


def _detection(ev: _Evaluation, spec: AttackSpec, run: AttackRun, l2, n: int
               ) -> results.AttackDetection:
  """The attack's examples against the detector at the deployed threshold."""
  clean = ev.clean_correct[:n]
  adv_scores = ev.detection.scores(run.x_adv)
  metrics_of = ev.detection.attack_metrics(ev.clean_scores[:n], clean, adv_scores, run.correct)
  evading = np.zeros(len(ev.attacked.ds), bool)
  evading[:n] = clean & ~run.correct & (adv_scores < ev.detection.threshold)
  ev.evading[spec.key] = evading
  if metrics_of["num_successful"]:
    ev.roc[spec.label] = (ev.clean_scores[:n][clean], adv_scores[clean & ~run.correct])
  return results.AttackDetection(
      **metrics_of, mean_l2_per_pixel_evading=_per_pixel_mean(l2, run.x_adv, evading[:n]))


def _summary(ev: _Evaluation) -> results.EvalSummary:
  """The summary of the attacks: clean accuracy, per-example worst cases (over every attack,
  over eval.worst_case_groups) and the detector's."""
  config, exp = ev.config, ev.trained.exp
  summary = results.EvalSummary(
      experiment_name=config.experiment_name, step=int(ev.trained.state.step),
      total_steps=exp.total_steps, dataset=config.dataset.name,
      num_test_examples=len(exp.test_ds), num_attack_examples=len(ev.attacked.ds),
      clean_accuracy=evaluate_clean(exp.eval_step(), ev.trained.state, exp.test_ds,
                                    config.eval.batch_size, exp.mesh),
      clean_accuracy_attacked_subset=float(np.mean(ev.clean_correct)), attacks=ev.attacks,
      worst_case_robust_accuracy=metrics.worst_case_accuracy(
          ev.clean_correct, ev.correct.values()) if ev.specs else None,
      defense_metrics=exp.defense.evaluation_metrics(
          ev.trained.network(), ev.attacked.ds.images,
          jax.random.fold_in(ev.attacked.key, 7 * 2**20)),
      # Per example, the worst case over a named subset of the attacks (e.g. every BPDA one).
      worst_case_groups={name: metrics.worst_case_accuracy(
          ev.clean_correct, [ev.correct[k] for k in keys])
          for name, keys in config.eval.worst_case_groups.items()},
      paper=config.paper.to_dict(),
      # Lets a suite tell a stale result from a current one (a bfloat16 result is not a
      # float32 one).
      eval_config=config.eval.to_dict(),
      compute_dtype=config.model.compute_dtype)
  if ev.detection is not None:
    bounded = [s.key for s in ev.specs if "eps" in s.params and s.threat_model != "transfer"]
    summary.detection = results.DetectionSummary(
        **ev.detection.summary,
        attacked_clean_false_positive_rate=float(np.mean(
            ev.clean_scores >= ev.detection.threshold)),
        # Per example, misclassified and accepted under any attack (bounded: with an eps).
        worst_case_misclassified_and_accepted=_any_rate(ev.evading.values(), ev.clean_correct),
        worst_case_bounded_misclassified_and_accepted=_any_rate(
            [ev.evading[k] for k in bounded], ev.clean_correct),
        davies_bouldin_index=ev.detection.davies_bouldin(exp.test_ds))
  return summary


def _write(ev: _Evaluation, summary: results.EvalSummary) -> None:
  """eval.json, eval.md and the figures; marked stale at once if training moved on meanwhile."""
  results.write(results.eval_path(ev.trained.exp.exp_dir), summary)
  if jax.process_index() != 0:
    return
  report.write_report(summary, ev.results_dir,
                      clean_images=ev.attacked.ds.images[:NUM_EXAMPLE_IMAGES],
                      adversarial_images=ev.examples)
  if ev.roc:
    report.plot_roc(ev.roc, os.path.join(ev.results_dir, "roc.png"))
  latest = latest_checkpoint_step(ev.workdir, ev.config.experiment_name)
  if latest is not None and latest != summary.step and report.mark_if_stale(ev.results_dir,
                                                                             latest):
    summary.stale_since_step = latest


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
