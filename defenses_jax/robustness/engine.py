"""`evaluate`: the adaptive battery and its sanity checks on any JAX model, in one call."""

from __future__ import annotations

import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax.attacks import norms
from defenses_jax.errors import EvaluationInputError
from defenses_jax.progress import progress_bar
from defenses_jax.robustness import checks
from defenses_jax.robustness.batches import in_batches
from defenses_jax.robustness.battery import Row, build_rows
from defenses_jax.robustness.presets import preset_named
from defenses_jax.robustness.report import Report, RowResult
from defenses_jax.robustness.system import System, balanced_weight, check_inputs

DEFAULT_BATCH_SIZE = 128


def evaluate(model_fn: Callable, images, labels, *, eps: float, key, norm: str = "linf",
             randomised: bool = False, detector_score: Optional[Callable] = None,
             detector_threshold: Optional[float] = None, detector_weight="auto",
             preset="standard", surrogate_fn: Optional[Callable] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = True) -> Report:
  """Robustness of `model_fn` on (images, labels) within the `norm` ball of radius `eps`.

  model_fn(x) -> logits (B, K), any JAX function (a flax `apply` with its variables closed
  over); randomised=True: model_fn(x, key), attacked with EOT. images: (N, ...) floats in
  [0, 1], labels: (N,) integer classes. A detector-guarded model also gives
  detector_score(x) -> (B,) (randomised: (x, key)), flagging scores >= detector_threshold;
  its attacks aim at "misclassified and accepted", weighing the detector against the class
  margin by `detector_weight` ("auto": balanced on the clean images). preset: "quick",
  "standard" (AutoAttack's budgets) or "thorough", or a robustness.Preset. surrogate_fn(x) ->
  logits, optional: a differentiable model of the same task for the transfer check.

  Returns a Report: worst-case and per-attack robust accuracy, per-image results, the
  worst-case adversarial examples, and the sanity checks that show whether the evaluation
  itself can be trusted.
  """
  started = time.perf_counter()
  preset = preset_named(preset)
  if batch_size < 1:
    raise EvaluationInputError(f"batch_size must be >= 1; got {batch_size}.")
  if detector_score is None and detector_threshold is not None:
    raise EvaluationInputError("detector_threshold was given without detector_score.")
  system = System(model_fn, bool(randomised), detector_score,
                  None if detector_threshold is None else float(detector_threshold))
  num_classes = check_inputs(system, images, labels, eps, norm, key)
  x, y = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  batch_size = min(batch_size, len(x))
  decide_key, attack_key, check_key = jax.random.split(key, 3)
  if system.guarded:
    weight = (balanced_weight(system, jnp.asarray(x[:batch_size]), jnp.asarray(y[:batch_size]),
                              decide_key) if detector_weight == "auto" else float(detector_weight))
    system = System(model_fn, system.randomised, detector_score, system.detector_threshold,
                    weight)
  decide = jax.jit(lambda xb, yb, k: system.decide(xb, yb, k, preset.decision_draws))

  clean_broken, clean_flagged = _decide_all(decide, x, y, decide_key, batch_size)
  clean_correct = _clean_correct(system, x, y, decide_key, batch_size, preset)
  broken_by = np.where(clean_broken, "clean", None).astype(object)
  adversarial = x.copy()
  results = []
  for index, row in enumerate(build_rows(system, preset, eps, norm, num_classes, x.shape[1:])):
    results.append(_run_row(row, x, y, broken_by, adversarial, decide,
                            jax.random.fold_in(attack_key, index),
                            jax.random.fold_in(decide_key, index + 1), batch_size,
                            show_progress))
  robust = np.array([b is None for b in broken_by])
  distance = norms.distances(jnp.asarray(adversarial), jnp.asarray(x))
  sanity = checks.run_checks(system, preset, x, y, clean_broken, robust, results, eps, norm,
                             check_key, decide, batch_size, surrogate_fn, show_progress)
  return Report(
      model=system.kind, preset=preset.name, eps=float(eps), norm=norm, num_examples=len(x),
      clean_accuracy=float(np.mean(clean_correct)), robust_accuracy=float(np.mean(robust)),
      rows=results, sanity=sanity, seconds=time.perf_counter() - started,
      settings={"preset": preset.__dict__, "batch_size": batch_size, "num_classes": num_classes,
                "jax": jax.__version__},
      per_example={"robust": robust.tolist(), "broken_by": broken_by.tolist(),
                   "linf": np.asarray(distance["linf"]).tolist(),
                   "l2": np.asarray(distance["l2"]).tolist()},
      clean_flagged_rate=float(np.mean(clean_flagged)) if system.guarded else None,
      detector_weight=system.detector_weight if system.guarded else None,
      adversarial=adversarial)


def _decide_all(decide, x, y, key, batch_size):
  # One key for every batch: a randomised system's decision on an image does not depend on
  # which batch it sits in.
  return in_batches(lambda xb, yb, _: decide(xb, yb, key), x, y, np.arange(len(x)), key,
                    batch_size)


def _clean_correct(system: System, x, y, key, batch_size, preset):
  """Clean accuracy of the classifier (a guarded system's refusals aside)."""
  classifier = System(system.model_fn, system.randomised)
  decide = jax.jit(lambda xb, yb: classifier.decide(xb, yb, key, preset.decision_draws)[0])
  return ~in_batches(lambda xb, yb, _: decide(xb, yb), x, y, np.arange(len(x)), key,
                     batch_size)


def _run_row(row: Row, x, y, broken_by, adversarial, decide, key, decide_key, batch_size,
             show_progress) -> RowResult:
  """Runs `row` on the images it attacks, judges each example on the system, and records the
  images it broke (in `broken_by` and `adversarial`, updated in place)."""
  started = time.perf_counter()
  live = np.array([b is None for b in broken_by])
  rows = np.flatnonzero(live if row.cascade else ~_broken_clean(broken_by))
  attack = jax.jit(lambda xb, yb, k: _attack_and_decide(row, decide, xb, yb, k, decide_key))
  broken, queries = np.zeros(0, bool), None
  if len(rows):
    bar = progress_bar(len(rows), enabled=show_progress, unit="image", description=row.name)
    x_adv, broken, queries = in_batches(_counting(attack, bar), x, y, rows, key, batch_size)
    bar.close()
    newly = rows[broken & live[rows]]
    broken_by[newly] = row.name
    adversarial[newly] = x_adv[broken & live[rows]]
  robust_after = float(np.mean([b is None for b in broken_by]))
  alone = None
  if not row.cascade or live.sum() == (~_broken_clean(broken_by)).sum():
    alone = 1.0 - (_broken_clean(broken_by).sum() + broken.sum()) / len(x)
  return RowResult(row.name, row.description, row.access, row.detector_aware, row.cascade,
                   attacked=int(len(rows)), broken=int(broken.sum()),
                   robust_accuracy_after=robust_after,
                   robust_accuracy_alone=None if alone is None else float(alone),
                   seconds=time.perf_counter() - started,
                   mean_queries=float(np.mean(queries)) if row.access == "scores" and len(rows)
                   else None)


def _attack_and_decide(row: Row, decide, x, y, key, decide_key):
  x_adv, queries = row.run(x, y, key)
  # The attack's own success is not trusted: every example is judged again on the system.
  broken = decide(x_adv, y, decide_key)[0]
  return x_adv, broken, (jnp.zeros(x.shape[:1], jnp.int32) if queries is None else queries)


def _broken_clean(broken_by) -> np.ndarray:
  return np.array([b == "clean" for b in broken_by])


def _counting(fn, bar):
  def counted(xb, yb, key):
    out = fn(xb, yb, key)
    jax.block_until_ready(out)
    bar.update(min(len(xb), bar.total - bar.n))
    return out
  return counted
