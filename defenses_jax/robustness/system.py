"""The model under evaluation, as `evaluate` receives it: a classifier, maybe randomised, maybe
guarded by a detector; what its attacks target and how its decision on an input is judged.

A randomised model is called model_fn(x, key); its detector, if any, detector_score(x, key)
with the same key, so a system whose classifier and detector share one random draw (one input
transformation, say) sees the same draw in both. A detector flags an input whose score is at or
above its threshold, and a flagged input is refused, not classified.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax.attacks import wrappers
from defenses_jax.attacks.objectives import margin
from defenses_jax.attacks.target import Deployed, Evasion, Target, as_target
from defenses_jax.errors import EvaluationInputError

NORMS = ("linf", "l2")
# How far below the threshold the attacker aims, relative to max(1, |threshold|): a few float32
# steps, so that a score at the threshold is on the flagged side for the attack as well.
TIE_MARGIN = 1e-5


@dataclasses.dataclass(frozen=True)
class System:
  model_fn: Callable
  randomised: bool = False
  detector_score: Optional[Callable] = None
  detector_threshold: Optional[float] = None
  # Logit units per detector unit, for the attacks that fold the detector into the class
  # scores (wrappers.reject_as_true_class); `balanced_weight` sets it from clean data.
  detector_weight: float = 1.0

  @property
  def guarded(self) -> bool:
    return self.detector_score is not None

  @property
  def kind(self) -> str:
    parts = ["randomised"] * self.randomised + ["detector-guarded"] * self.guarded
    return ", ".join(parts) or "plain"

  def classifier(self) -> Target:
    """The classifier alone, as an attack target (what a detector-unaware attack sees)."""
    return as_target(self.model_fn, randomised=self.randomised)

  def deployed(self) -> Target:
    """Classifier and detector as deployed: class scores and, guarded, the detector's score."""
    if not self.guarded:
      return self.classifier()
    call = (lambda f, x, key: f(x, key)) if self.randomised else (lambda f, x, key: f(x))
    return lambda x, key: Deployed(call(self.model_fn, x, key),
                                   call(self.detector_score, x, key))

  def attacked(self, labels, weight_factor: float = 1.0, draws: int = 1) -> Target:
    """What an attacker who knows the whole system attacks on the batch of `labels`: the
    deployed system, with a detector folded into the class scores so that every attack aims at
    "misclassified and accepted" (wrappers.rejecting), and a randomised one averaged over
    `draws` draws of its randomness (wrappers.eot): an attack that stopped at the first draw
    that misclassifies would stop on a lucky draw the system's majority decision overrules.

    The attacker's threshold sits just below the system's, so that a score exactly at the
    threshold (flagged) counts as flagged for the attack too: folded at the threshold itself,
    the true class would tie with the best other class and argmax could call it fooled."""
    target = self.deployed()
    if self.guarded:
      threshold = self.detector_threshold
      evasion = Evasion(threshold - TIE_MARGIN * max(1.0, abs(threshold)),
                        self.detector_weight * weight_factor)
      target = wrappers.rejecting(target, evasion, labels)
    if self.randomised and draws > 1:
      target = wrappers.eot(target, draws)
    return target

  def decide(self, x, y, key, draws: int = 1):
    """Per example: (through, flagged). Through: misclassified and, guarded, accepted; class
    scores that are not finite count as misclassified (a model that answers NaN has not
    classified). A randomised system is judged by the majority of `draws` draws (a tie counts
    against it)."""

    def one_draw(k):
      out = self.deployed()(x, k)
      logits = out.class_logits
      wrong = (jnp.argmax(logits, -1) != y) | ~jnp.all(jnp.isfinite(logits), -1)
      if not self.guarded:
        return wrong, jnp.zeros_like(wrong)
      flagged = out.detector_score >= self.detector_threshold
      return wrong & ~flagged, flagged

    if not self.randomised:
      return one_draw(key)
    through, flagged = jax.vmap(one_draw)(jax.random.split(key, draws))
    return 2 * jnp.sum(through, 0) >= draws, 2 * jnp.sum(flagged, 0) >= draws


def balanced_weight(system: System, x, y, key) -> float:
  """A detector weight that makes the two terms of the folded margin comparable on clean data:
  the median |classifier margin| over the median |threshold - score|. With weight 1 a detector
  whose scores run in thousands (a log density) would swamp the class margin, and one in
  thousandths would vanish from it; either way the attack would follow one term only."""
  out = system.deployed()(x, key)
  margins = np.abs(np.asarray(margin(out.class_logits, y)))
  gaps = np.abs(system.detector_threshold - np.asarray(out.detector_score))
  scale_m, scale_g = float(np.median(margins)), float(np.median(gaps))
  if not (np.isfinite(scale_m) and np.isfinite(scale_g)) or scale_m <= 0 or scale_g <= 0:
    return 1.0
  return scale_m / scale_g


def check_inputs(system: System, images, labels, eps: float, norm: str, key) -> int:
  """Every input `evaluate` takes, checked before any attack runs; returns the number of
  classes. Each failure (EvaluationInputError) names what is wrong and what is expected."""
  images, labels = np.asarray(images), np.asarray(labels)
  _check_arrays(images, labels)
  _check_threat_model(eps, norm, images[0].size)
  if not _is_key(key):
    raise EvaluationInputError("pass key=jax.random.key(seed): the attacks' random starts "
                               f"draw from it (got {type(key).__name__}).")
  threshold = system.detector_threshold
  if system.guarded and (threshold is None or not np.isfinite(threshold)):
    raise EvaluationInputError(
        "a detector needs its threshold (it flags scores >= threshold): pass "
        "detector_threshold, e.g. the 95% quantile of its scores on clean held-out images for "
        "a 5% false positive rate.")
  num_classes = _check_model(system, jnp.asarray(images[:2]), key)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise EvaluationInputError(
        f"labels must lie in [0, {num_classes}) (the model has {num_classes} classes); got "
        f"[{labels.min()}, {labels.max()}].")
  return num_classes


def _is_key(key) -> bool:
  """A typed key (jax.random.key) or a raw one (jax.random.PRNGKey: uint32 (2,))."""
  if not isinstance(key, (jax.Array, np.ndarray)):
    return False
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key.shape == ()
  return key.dtype == np.uint32 and key.shape == (2,)


def real_scalar(value) -> Optional[float]:
  """`value` as a float if it is one real number (Python, NumPy or a JAX scalar), else None."""
  if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
    return None
  try:
    array = np.asarray(value)
  except TypeError:
    return None
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
    return None
  return float(array)


def _check_threat_model(eps, norm: str, dimension: int) -> None:
  if norm not in NORMS:
    raise EvaluationInputError(f"unknown norm {norm!r}; choose one of {NORMS}.")
  value = real_scalar(eps)
  if value is None or not np.isfinite(value) or value <= 0:
    raise EvaluationInputError(f"eps must be a finite number > 0; got {eps!r}.")
  whole_box = 1.0 if norm == "linf" else float(np.sqrt(dimension))
  if value >= whole_box:
    raise EvaluationInputError(
        f"an {norm} eps of {value:g} covers the whole [0, 1] box (from {whole_box:g} on): every "
        f"input can be turned into any other; pass eps < {whole_box:g}.")


def _check_arrays(images: np.ndarray, labels: np.ndarray) -> None:
  if not np.issubdtype(images.dtype, np.floating):
    raise EvaluationInputError(
        f"images must be floating point in [0, 1]; got dtype {images.dtype}.")
  if images.ndim < 2 or len(images) == 0:
    raise EvaluationInputError(
        f"images must be a non-empty batch (N, ...); got shape {images.shape}.")
  if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
    raise EvaluationInputError(
        "images must be finite and in [0, 1] (the attacks clip to that box); got values in "
        f"[{np.nanmin(images):.4g}, {np.nanmax(images):.4g}].")
  if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
    raise EvaluationInputError(
        f"images of shape {images.shape} look channels-first (N, C, H, W); pass them as "
        "(N, H, W, C), with a model_fn that takes that layout (Square perturbs (H, W) "
        "windows of every channel).")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise EvaluationInputError(
        f"labels must be integer classes, one per image ({len(images)},); got shape "
        f"{labels.shape}, dtype {labels.dtype}.")


def _check_model(system: System, probe, key) -> int:
  """The system's output shapes on two images (traced, not computed); the number of classes."""
  try:
    out = jax.eval_shape(lambda z: system.deployed()(z, key), probe)
  except TypeError as e:
    how = "model_fn(x, key)" if system.randomised else "model_fn(x)"
    raise EvaluationInputError(
        f"calling the model as {how} failed ({e}); pass randomised=True for a model that "
        "takes a key, False for one that does not.") from e
  logits = out.class_logits
  if logits.ndim != 2 or logits.shape[0] != len(probe):
    raise EvaluationInputError(
        f"model_fn must return logits (B, num_classes); on a batch of {len(probe)} it "
        f"returned shape {logits.shape}.")
  if logits.shape[1] < 2:
    raise EvaluationInputError(
        f"model_fn returns {logits.shape[1]} class score; a classifier needs >= 2.")
  if system.guarded and out.detector_score.shape != (len(probe),):
    raise EvaluationInputError(
        f"detector_score must return one score per image ({len(probe)},); it returned shape "
        f"{out.detector_score.shape}.")
  return logits.shape[1]
