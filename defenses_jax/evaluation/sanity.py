"""Sanity checks from Carlini et al. 2019, "On Evaluating Adversarial Robustness" (section 5),
run beside every robustness evaluation. Each returns a record with status 'pass' or 'warn' and
the numbers behind it; a 'warn' means the evaluation, not the defense, is in doubt.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax.attacks.objectives import cross_entropy
from defenses_jax.evaluation.results import PASS, WARN, SanityCheck

# Differences in robust accuracy below this are noise, not evidence.
TOLERANCE = 0.01


def tolerance(num_examples=None) -> float:
  """TOLERANCE, widened so that one example's difference on a small subset never counts."""
  return TOLERANCE if not num_examples else max(TOLERANCE, 1.5 / num_examples)


def _record(name: str, ok: bool, detail: str, attack=None, white_box_attack=None,
            **numbers) -> SanityCheck:
  return SanityCheck(name, PASS if ok else WARN, detail, attack, white_box_attack, numbers)


def more_steps_do_not_help(attack_name: str, robust_accuracy_at: Callable[[int], float],
                           steps: int, factor: int = 4, num_examples=None) -> SanityCheck:
  """Run the attack `factor` times longer. Robust accuracy must not rise (the attack would be
  broken), and should not fall much either: if it keeps falling, the attack had not converged
  and the reported robust accuracy overestimates the defense."""
  base, longer = robust_accuracy_at(steps), robust_accuracy_at(steps * factor)
  numbers = dict(attack=attack_name, steps=steps, robust_accuracy=base,
                 longer_steps=steps * factor, longer_robust_accuracy=longer)
  detail = (f"{attack_name}: robust accuracy {base:.4f} at {steps} iterations, {longer:.4f} at "
            f"{steps * factor}")
  tol = tolerance(num_examples)
  if longer > base + tol:
    return _record("more_steps", False, detail + ": more iterations helped the defense, so the "
                   "attack is broken", **numbers)
  if longer < base - tol:
    return _record("more_steps", False, detail + ": not converged, so the reported robust "
                   "accuracy overestimates the defense; run the attack longer", **numbers)
  return _record("more_steps", True, detail, **numbers)


def more_steps_not_needed(attack_name: str, num_examples=None) -> SanityCheck:
  """The more-steps check of an attack that already fooled every correctly classified example
  of the subset: a longer run cannot lower robust accuracy 0, so it is not rerun."""
  return _record("more_steps", True, f"{attack_name}: robust accuracy already 0 on the "
                 f"{num_examples} examples checked; not rerun", attack=attack_name,
                 robust_accuracy=0.0, skipped=True)


def unbounded_attack_succeeds(success_rate: float, minimum: float = 0.99) -> SanityCheck:
  """With an unlimited budget (eps covering the whole [0, 1] box) every input can be turned into
  any other; an attack that still fails is blocked by masked or broken gradients."""
  ok = success_rate >= minimum
  return _record("unbounded", ok,
                 f"unbounded PGD success rate {success_rate:.4f}" +
                 ("" if ok else f" < {minimum}: gradients are masked or the attack is broken"),
                 success_rate=success_rate)


def transfer_not_stronger(transfer_name: str, transfer_accuracy: float, white_box_name: str,
                          white_box_accuracy: float) -> SanityCheck:
  """A transfer (black-box) attack must not beat the white-box attack of the same kind: if it
  does, the white-box attack is not using the gradients it has."""
  ok = transfer_accuracy >= white_box_accuracy - TOLERANCE
  return _record("transfer_not_stronger", ok,
                 f"{transfer_name} (transfer) robust accuracy {transfer_accuracy:.4f} vs "
                 f"{white_box_name} (white-box) {white_box_accuracy:.4f}" +
                 ("" if ok else ": transfer beats white-box, so white-box gradients mislead"),
                 attack=transfer_name, white_box_attack=white_box_name,
                 robust_accuracy=transfer_accuracy, white_box_robust_accuracy=white_box_accuracy)


def noise_weaker_than_attack(attack_name: str, attack_accuracy: float, noise_accuracy: float,
                             num_examples=None) -> SanityCheck:
  """Random noise of the attack's size must hurt no more than the attack: on the same images,
  an attack that leaves even one more of them correct than noise does is not following useful
  gradients there (no tolerance: a one-image margin passed a universal perturbation weaker than
  noise)."""
  ok = noise_accuracy >= attack_accuracy
  on = f" on {num_examples} images" if num_examples else ""
  return _record("noise_weaker", ok,
                 f"{attack_name}: robust accuracy {attack_accuracy:.4f}, under random noise of the "
                 f"same norm {noise_accuracy:.4f}{on}" + (
                     "" if ok else ": noise beats the attack, which is not following useful "
                     "gradients"),
                 attack=attack_name, robust_accuracy=attack_accuracy,
                 noise_accuracy=noise_accuracy)


def gradients_are_informative(logits_fn: Callable, x, y,
                              max_zero_fraction: float = 0.05) -> SanityCheck:
  """The gradient of the loss at the inputs must be finite and, for most examples, non-zero
  (zero gradients are the signature of gradient masking: shattered or saturated gradients)."""

  grads = jax.grad(lambda z: jnp.sum(cross_entropy(logits_fn(z), y)))(x)
  flat = np.asarray(grads).reshape(x.shape[0], -1)
  nan_fraction = float(np.mean(~np.isfinite(flat).all(axis=1)))
  zero_fraction = float(np.mean(np.abs(flat).max(axis=1) == 0))
  ok = nan_fraction == 0 and zero_fraction <= max_zero_fraction
  return _record("gradients", ok,
                 f"{zero_fraction:.1%} of examples have an all-zero input gradient, "
                 f"{nan_fraction:.1%} a non-finite one" + ("" if ok else ": gradient masking"),
                 zero_fraction=zero_fraction, nan_fraction=nan_fraction)


def more_restarts_do_not_help(attack_name: str, robust_accuracy: float, restarts: int,
                              restarted_robust_accuracy: float,
                              num_examples=None) -> SanityCheck:
  """Rerun the attack from `restarts` random starts. If robust accuracy falls by more than
  noise, one start does not find the worst case and the reported number overestimates the
  model: report the attack with restarts."""
  ok = restarted_robust_accuracy >= robust_accuracy - tolerance(num_examples)
  return _record("more_restarts", ok,
                 f"{attack_name}: robust accuracy {robust_accuracy:.4f} from one start, "
                 f"{restarted_robust_accuracy:.4f} from {restarts}" + (
                     "" if ok else ": restarts find more, so one start underestimates the "
                     "attack; run it with restarts"),
                 attack=attack_name, robust_accuracy=robust_accuracy, restarts=restarts,
                 restarted_robust_accuracy=restarted_robust_accuracy)


def black_box_not_stronger(black_box_name: str, broken_after_white_box: int,
                           num_examples: int, white_box_name: str) -> SanityCheck:
  """A score-only (black-box) attack run after the gradient attacks must find (almost) nothing
  they missed: when it does, the gradients the white-box attacks followed are masked or
  obfuscated, and their numbers overstate robustness."""
  share = broken_after_white_box / max(num_examples, 1)
  ok = share <= tolerance(num_examples)
  return _record("black_box_not_stronger", ok,
                 f"{black_box_name} broke {broken_after_white_box} of {num_examples} images "
                 f"({share:.2%}) that {white_box_name} left robust" + (
                     "" if ok else ": a black-box attack beats the gradient attacks, a sign "
                     "of masked gradients or of gradient attacks too weak for this model"),
                 attack=black_box_name, white_box_attack=white_box_name,
                 broken_after_white_box=broken_after_white_box, share=share)
