"""`evaluate`: the adaptive battery and its sanity checks on any JAX model, in one call."""

from __future__ import annotations

import dataclasses
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
from defenses_jax.robustness.system import System, balanced_weight, check_inputs, real_scalar

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
  eps = real_scalar(eps)
  x, y = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  batch_size = min(batch_size, len(x))
  decide_key, attack_key, check_key = jax.random.split(key, 3)
  if system.guarded:
    weight = (balanced_weight(system, jnp.asarray(x[:batch_size]), jnp.asarray(y[:batch_size]),
                              decide_key) if _is_auto(detector_weight)
              else _checked_weight(detector_weight))
    system = System(model_fn, system.randomised, detector_score, system.detector_threshold,
                    weight)
  decide = jax.jit(lambda xb, yb, k: system.decide(xb, yb, k, preset.decision_draws))

  state = _State.start(*_decide_all(decide, x, y, decide_key, batch_size), x)
  # Without a detector the system's decision on the clean images is the classifier's.
  clean_correct = (_clean_correct(system, x, y, decide_key, batch_size, preset)
                   if system.guarded else ~state.clean_through)
  results = []
  for index, row in enumerate(build_rows(system, preset, eps, norm, num_classes, x.shape[1:])):
    results.append(_run_row(row, x, y, state, decide, jax.random.fold_in(attack_key, index),
                            jax.random.fold_in(decide_key, index + 1), batch_size, eps, norm,
                            show_progress))
  robust = state.robust()
  distance = norms.distances(jnp.asarray(state.adversarial), jnp.asarray(x))
  sanity = checks.run_checks(system, preset, x, y, state.clean_through | state.refused, robust,
                             results, eps, norm, check_key, decide, batch_size, surrogate_fn,
                             show_progress)
  per_example = {"robust": robust.tolist(), "broken_by": state.through_by.tolist(),
                 "linf": np.asarray(distance["linf"]).tolist(),
                 "l2": np.asarray(distance["l2"]).tolist()}
  if system.guarded:
    per_example["refused_clean"] = state.refused.tolist()
  return Report(
      model=system.kind, preset=preset.name, eps=float(eps), norm=norm, num_examples=len(x),
      clean_accuracy=float(np.mean(clean_correct)), robust_accuracy=float(np.mean(robust)),
      rows=results, sanity=sanity, seconds=time.perf_counter() - started,
      settings={"preset": preset.__dict__, "batch_size": batch_size, "num_classes": num_classes,
                "jax": jax.__version__},
      per_example=per_example,
      clean_flagged_rate=float(np.mean(state.refused)) if system.guarded else None,
      misclassified_and_accepted=(float(np.mean(state.through_by != None))  # noqa: E711
                                  if system.guarded else None),
      detector_weight=system.detector_weight if system.guarded else None,
      adversarial=state.adversarial)


def _is_auto(weight) -> bool:
  return isinstance(weight, str) and weight == "auto"


def _checked_weight(weight) -> float:
  value = real_scalar(weight)
  if value is None or not np.isfinite(value) or value <= 0:
    raise EvaluationInputError(
        f"detector_weight must be 'auto' or a finite number > 0 (logit units per detector "
        f"unit); got {weight!r}. A weight <= 0 would steer the attack into the detector.")
  return value


@dataclasses.dataclass
class _State:
  """Per image, as the rows run: which input first got through (misclassified and accepted;
  "clean" for the image itself, a row's name, None while none has), whether the detector
  refused the clean image, and the example that got through."""
  through_by: np.ndarray
  refused: np.ndarray
  adversarial: np.ndarray

  @classmethod
  def start(cls, clean_through, clean_flagged, x):
    return cls(np.where(clean_through, "clean", None).astype(object),
               np.asarray(clean_flagged, bool), x.copy())

  @property
  def clean_through(self) -> np.ndarray:
    return self.through_by == "clean"

  def open(self) -> np.ndarray:
    return self.through_by == None  # noqa: E711  (an object array: elementwise)

  def robust(self) -> np.ndarray:
    """Robust as Tramer (2022) counts a classifier with a detector: its clean image classified
    correctly and accepted, and no attack's example of it misclassified and accepted."""
    return self.open() & ~self.refused


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


def _run_row(row: Row, x, y, state: _State, decide, key, decide_key, batch_size, eps, norm,
             show_progress) -> RowResult:
  """Runs `row` on the images it attacks, judges each example on the system, and records in
  `state` the images it got through."""
  started = time.perf_counter()
  live = state.open()
  rows = np.flatnonzero(live if row.cascade else ~state.clean_through)
  attack = jax.jit(lambda xb, yb, k: _attack_and_decide(row, decide, xb, yb, k, decide_key, eps,
                                                        norm))
  through, invalid, queries = np.zeros(0, bool), np.zeros(0, bool), None
  if len(rows):
    bar = progress_bar(len(rows), enabled=show_progress, unit="image", description=row.name)
    x_adv, through, invalid, queries = in_batches(_counting(attack, bar), x, y, rows, key,
                                                  batch_size)
    bar.close()
    new = through & live[rows]
    state.through_by[rows[new]] = row.name
    state.adversarial[rows[new]] = x_adv[new]
  alone = None
  if not row.cascade or len(rows) == (~state.clean_through).sum():
    alone_open = ~state.clean_through
    alone_open[rows[through]] = False
    alone = float(np.mean(alone_open & ~state.refused))
  return RowResult(row.name, row.description, row.access, row.detector_aware, row.cascade,
                   attacked=int(len(rows)), broken=int(through.sum()),
                   robust_accuracy_after=float(np.mean(state.robust())),
                   robust_accuracy_alone=alone, seconds=time.perf_counter() - started,
                   mean_queries=float(np.mean(queries)) if row.access == "scores" and len(rows)
                   else None, invalid=int(invalid.sum()))


def _attack_and_decide(row: Row, decide, x, y, key, decide_key, eps, norm):
  x_adv, queries = row.run(x, y, key)
  # The attack's own success is not trusted: every example is judged again on the system,
  # and one outside the box or the ball, or not finite, does not count.
  valid = _valid(x_adv, x, eps, norm)
  through = decide(x_adv, y, decide_key)[0] & valid
  return x_adv, through, ~valid, (jnp.zeros(x.shape[:1], jnp.int32) if queries is None
                                  else queries)


def _valid(x_adv, x, eps, norm, slack=1e-5):
  flat = (x_adv - x).reshape(x.shape[0], -1)
  size = (jnp.max(jnp.abs(flat), -1) if norm == "linf"
          else jnp.sqrt(jnp.sum(jnp.square(flat), -1)))
  inside = jnp.all(((x_adv >= -slack) & (x_adv <= 1 + slack)).reshape(x.shape[0], -1), -1)
  finite = jnp.all(jnp.isfinite(flat), -1)
  return finite & inside & (size <= eps * (1 + slack) + slack)


def _counting(fn, bar):
  def counted(xb, yb, key):
    out = fn(xb, yb, key)
    jax.block_until_ready(out)
    bar.update(min(len(xb), bar.total - bar.n))
    return out
  return counted
