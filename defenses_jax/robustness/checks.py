"""The sanity checks of Carlini et al. 2019 (evaluation/sanity.py) run beside `evaluate`, on its
first `preset.sanity_examples` images: input gradients, an unbounded attack that must reach
(nearly) 100%, APGD-CE rerun longer and from more starts, random noise of the attack's size, a
black-box attack that must not find what the gradient attacks missed (a warning when none
could run), every attack's examples valid, and, given a surrogate model, transfer that must not
beat white-box. A 'warn' means the evaluation is in doubt."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax.attacks.apgd import apgd
from defenses_jax.attacks.gradient import pgd
from defenses_jax.attacks.target import as_target, call_logits
from defenses_jax.evaluation import sanity
from defenses_jax.evaluation.results import PASS, WARN, SanityCheck
from defenses_jax.evaluation.runner import noise_like
from defenses_jax.progress import call_each
from defenses_jax.robustness.batches import in_batches
from defenses_jax.robustness.presets import Preset
from defenses_jax.robustness.system import System

PRIMARY = "APGD-CE"


class _Subset:
  """The images the checks run on, and the robust accuracy of an attack there."""

  def __init__(self, system: System, preset: Preset, x, y, clean_broken, eps, norm, decide,
               key, batch_size: int):
    self.n = min(preset.sanity_examples, len(x))
    self.x, self.y = x[:self.n], y[:self.n]
    self.clean_broken = clean_broken[:self.n]
    self.system, self.preset, self.eps, self.norm = system, preset, eps, norm
    self.decide, self.key = decide, key
    self.batch_size = min(batch_size, self.n)

  def broken_by(self, attack: Callable, key) -> np.ndarray:
    """attack(x, y, key) -> x_adv, judged on the system; clean-broken images stay broken."""
    judged = jax.jit(lambda xb, yb, k: self.decide(attack(xb, yb, k), yb, self.key)[0])
    broken = in_batches(judged, self.x, self.y, np.arange(self.n), key, self.batch_size)
    return broken | self.clean_broken

  def robust_accuracy(self, attack: Callable, key) -> float:
    return float(np.mean(~self.broken_by(attack, key)))

  def apgd_ce(self, steps: int, restarts: Optional[int] = None,
              target_of: Optional[Callable] = None):
    """APGD-CE as the battery runs it (its restarts unless given), on `target_of(labels)`."""
    system, preset = self.system, self.preset
    restarts = restarts or preset.apgd_restarts
    target_of = target_of or (lambda y: system.attacked(y, draws=preset.eot_draws))
    return lambda x, y, k: apgd(target_of(y), x, y, k, eps=self.eps, norm=self.norm,
                                steps=steps, restarts=restarts, loss="ce")[0]


def run_checks(system: System, preset: Preset, x, y, clean_broken, robust, rows, eps, norm,
               key, decide, batch_size, surrogate_fn=None, show_progress=True):
  """The checks' SanityCheck records (`robust`: per image, after the whole battery; `rows`:
  the battery's RowResults in order)."""
  sub = _Subset(system, preset, x, y, clean_broken, eps, norm, decide, key, batch_size)
  keys = jax.random.split(key, 5)
  steps = preset.apgd_steps
  base: dict = {}

  def base_accuracy():
    if "apgd" not in base:
      base["apgd"] = sub.robust_accuracy(sub.apgd_ce(steps), keys[0])
    return base["apgd"]

  checks = [lambda: _gradients(sub, keys[1]),
            lambda: _unbounded(sub, keys[2]),
            lambda: _more_steps(sub, base_accuracy, keys[0]),
            lambda: _more_restarts(sub, base_accuracy, keys[0]),
            lambda: sanity.noise_weaker_than_attack(
                "worst case over the battery", float(np.mean(robust[:sub.n])),
                sub.robust_accuracy(lambda xb, yb, k: noise_like(k, xb, eps, norm), keys[3]),
                num_examples=sub.n)]
  checks += [lambda: _black_box(rows, len(x)), lambda: _valid_examples(rows)]
  if surrogate_fn is not None:
    checks.append(lambda: sanity.transfer_not_stronger(
        "APGD-CE from the surrogate", sub.robust_accuracy(
            sub.apgd_ce(steps, target_of=lambda _: as_target(surrogate_fn)), keys[4]),
        PRIMARY, base_accuracy()))
  return call_each(checks, "sanity checks", enabled=show_progress)


def _gradients(sub: _Subset, key) -> SanityCheck:
  """Input gradients of the loss the attacks follow (a guarded system's detector folded in)."""
  target = sub.system.attacked(jnp.asarray(sub.y))
  return sanity.gradients_are_informative(lambda z: call_logits(target, z, key),
                                          jnp.asarray(sub.x), jnp.asarray(sub.y))


def _unbounded(sub: _Subset, key) -> SanityCheck:
  """PGD on the margin with eps 1 in L-inf (the whole box, whatever the evaluated norm)."""
  system, preset = sub.system, sub.preset

  def attack(x, y, k):
    return pgd(system.attacked(y, draws=preset.eot_draws), x, y, k, eps=1.0, step_size=0.05,
               steps=preset.unbounded_steps, random_start=False, loss="margin")[0]

  broken = sub.broken_by(attack, key)
  attacked = ~sub.clean_broken
  return sanity.unbounded_attack_succeeds(
      float(np.mean(broken[attacked])) if attacked.any() else 1.0)


def _more_steps(sub: _Subset, base_accuracy: Callable, key) -> SanityCheck:
  steps = sub.preset.apgd_steps
  if base_accuracy() == 0:
    return sanity.more_steps_not_needed(PRIMARY, num_examples=sub.n)
  at = lambda s: base_accuracy() if s == steps else sub.robust_accuracy(sub.apgd_ce(s), key)
  return sanity.more_steps_do_not_help(PRIMARY, at, steps, sub.preset.more_steps_factor,
                                       num_examples=sub.n)


def _more_restarts(sub: _Subset, base_accuracy: Callable, key) -> SanityCheck:
  # More starts than the battery's own, whatever the preset.
  restarts = max(sub.preset.check_restarts, 2 * sub.preset.apgd_restarts)
  if base_accuracy() == 0:
    return SanityCheck("more_restarts", PASS, f"{PRIMARY}: robust accuracy already 0 on the "
                       f"{sub.n} images checked; not rerun", PRIMARY,
                       numbers={"robust_accuracy": 0.0, "skipped": True})
  restarted = sub.robust_accuracy(sub.apgd_ce(sub.preset.apgd_steps, restarts), key)
  return sanity.more_restarts_do_not_help(PRIMARY, base_accuracy(), restarts, restarted,
                                          num_examples=sub.n)


def _black_box(rows, num_examples: int) -> SanityCheck:
  """What the cascade's score-only rows got through after its gradient rows."""
  white_box = [r.name for r in rows if r.cascade and r.access == "gradient"]
  black_box = [r for r in rows if r.cascade and r.access == "scores"]
  if not black_box:
    return SanityCheck("black_box_not_stronger", WARN,
                       "no score-only attack ran (Square needs images (N, H, W, C) and "
                       "square_queries > 0), so nothing checks the gradient attacks against "
                       "masked gradients", numbers={"skipped": True})
  return sanity.black_box_not_stronger(" and ".join(r.name for r in black_box),
                                       sum(r.broken for r in black_box), num_examples,
                                       ", ".join(white_box))


def _valid_examples(rows) -> SanityCheck:
  """Every attack's examples in the box and the ball and finite (those that are not were not
  counted: a NaN gradient gives NaN points, which would otherwise count as misclassified)."""
  bad = {r.name: r.invalid for r in rows if r.invalid}
  detail = ("every example in the [0, 1] box and the eps ball, and finite" if not bad else
            "examples outside the box or the ball, or not finite, not counted: " + ", ".join(
                f"{name} {count}" for name, count in bad.items()) + " (a non-finite gradient "
            "of the model?); the attack did not run as intended on those images")
  return SanityCheck("valid_examples", WARN if bad else PASS, detail, numbers={"invalid": bad})
