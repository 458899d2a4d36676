"""Attacks written for a classifier guarded by a detector (papers 002, 003): they see the whole
deployed system, not only its class scores.

Their target (target.py) is the deployed system with its detector: `target(x, key)` gives the
class logits, the detector's score and the system's `outputs` (penultimate embedding, the
defense's own parts). What they must evade comes as `evasion` (a target.Evasion): the threshold
(an input is accepted iff its score is below it) and, for feature matching, one typical
training embedding per class (the detector's `anchor_embeddings`). Every other gradient attack
evades a detector unchanged, on the class scores with the detector folded in
(wrappers.rejecting).

- `cw_wb`: Carlini & Wagner (2017a, "Adversarial examples are not easily detected") against a
  density detector, as paper 002's white-box attack: phase 1 is CW-L2 on the classifier; phase 2
  restarts CW-L2 from phase 1's examples with the detector term added,
  ||x' - x||^2 + c * (max(kappa - margin, 0) + max(s(x') - threshold, 0)),
  and succeeds only when the input is misclassified *and* accepted. With the KDE detector,
  s = -log density under the predicted class, so the extra term is the reference's
  relu(-log KDE_t(x') - DECONST) with DECONST the deployed threshold (the reference used the
  clean image's own density).
- `feature_matching`: L-inf PGD that moves the penultimate embedding onto a target class's
  anchor (Tramèr et al. 2020's attack on density and statistical detectors), multi-targeted
  over the clean input's most likely wrong classes; an example keeps its first target that is
  misclassified and accepted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.carlini_wagner import cw_l2_search
from defenses_jax.attacks.objectives import check_batch, margin
from defenses_jax.attacks.target import Evasion, Target


def system_outputs(system: Target, x, key, evasion: Evasion) -> dict:
  """What the attacks here read of the deployed system on x: everything it computed
  (`class_logits`, `embedding`, the defense's parts) and `excess`, the detector's score over
  the attacker's threshold (the input is accepted iff it is negative)."""
  out = system(x, key)
  if out.detector_score is None or out.outputs is None:
    raise ValueError("this attack evades a detector: its target must be a deployed system with "
                     "a detector (in a config: detector_aware=True with a detector in "
                     "eval.detection).")
  return {**out.outputs, "class_logits": out.class_logits,
          "excess": out.detector_score - evasion.threshold}


def evades(out: dict, y, kappa: float = 0.0):
  """Misclassified (with margin >= kappa when kappa > 0) and accepted by the detector."""
  m = margin(out["class_logits"], y)
  return (m > 0) & (m >= kappa) & (out["excess"] < 0)


def cw_wb_violation(out: dict, y, kappa: float = 0.0):
  """Phase 2's constraint terms per example, max(kappa - margin, 0) + max(s - threshold, 0),
  and whether the input evades (misclassified and accepted). The detector term is zero iff
  s <= threshold (for KDE: the log density under the predicted class is at or above the
  threshold's); evading needs s < threshold, since the deployed detector flags s >= threshold."""
  m = margin(out["class_logits"], y)
  return jnp.maximum(kappa - m, 0.0) + jnp.maximum(out["excess"], 0.0), evades(out, y, kappa)


def cw_wb(system: Target, x, y, key, *, evasion: Evasion, kappa: float = 0.0,
          phase1_iterations: int = 5000, phase1_binary_steps: int = 3,
          phase2_iterations: int = 10000, phase2_binary_steps: int = 3,
          phase1_learning_rate: float = 0.1, phase2_learning_rate: float = 1e-2,
          initial_const: float = 1.0, abort_early: bool = True):
  """Untargeted CW-wb (defaults: paper 002 appendix C's 5000/10000 iterations and 3/3 binary
  steps, kappa 0; learning rates and c0 = 1 from the reference's two phases). Returns (x_adv,
  info): success = misclassified and accepted on a fresh forward pass; failures come back as
  x; `phase1_success`: phase 1 alone fooled the classifier."""
  check_batch(x, y)
  key1, key2 = jax.random.split(key)
  outputs = lambda z, k: system_outputs(system, z, k, evasion)

  def classifier_violation(x_new, k):
    m = margin(outputs(x_new, k)["class_logits"], y)
    return jnp.maximum(kappa - m, 0.0), (m > 0) & (m >= kappa)

  start, _, _ = cw_l2_search(classifier_violation, x, key1,
                             binary_search_steps=phase1_binary_steps,
                             max_iterations=phase1_iterations,
                             learning_rate=phase1_learning_rate, initial_const=initial_const,
                             abort_early=abort_early)

  best_x, const, lower = cw_l2_search(lambda z, k: cw_wb_violation(outputs(z, k), y, kappa),
                                      x, key2,
                                      binary_search_steps=phase2_binary_steps,
                                      max_iterations=phase2_iterations,
                                      learning_rate=phase2_learning_rate,
                                      initial_const=initial_const, abort_early=abort_early,
                                      start=start)
  success = evades(outputs(best_x, key), y, kappa)
  x_adv = jnp.where(norms.per_example(success, x), best_x, x)
  phase1 = margin(outputs(start, key)["class_logits"], y) > 0
  return x_adv, {"success": success, "phase1_success": phase1, **norms.distances(x_adv, x),
                 "const": const, "const_lower": lower}


def feature_matching(system: Target, x, y, key, *, evasion: Evasion, eps: float,
                     steps: int = 100, step_size: float = 0.0, num_targets: int = 3,
                     random_start: bool = True):
  """L-inf PGD on -||h(x') - anchor_t||^2 for the clean input's `num_targets` most likely
  wrong classes t in turn (step_size 0: 2.5 eps / steps, as Tramèr et al.). Each example keeps
  the first target's final iterate that is misclassified and accepted (else the last target's
  iterate). Returns (x_adv, info) with success re-checked on a fresh forward pass and the
  target that succeeded (-1: none)."""
  check_batch(x, y)
  outputs = lambda z: system_outputs(system, z, key, evasion)  # A deterministic system.
  if steps < 1 or not 1 <= num_targets:
    raise ValueError(f"feature_matching needs steps >= 1 and num_targets >= 1; got {steps}, "
                     f"{num_targets}.")
  step = step_size or 2.5 * eps / steps
  clean_logits = outputs(x)["class_logits"]
  num_classes = clean_logits.shape[-1]
  if num_targets > num_classes - 1:
    raise ValueError(f"num_targets {num_targets} exceeds the {num_classes - 1} wrong classes.")
  ranked = jnp.argsort(-jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf,
                                  clean_logits), axis=-1)
  anchors = evasion.anchors()
  batch = x.shape[0]

  def distance(z, t):
    embedding = outputs(z)["embedding"].reshape(batch, -1)
    return jnp.sum(jnp.square(embedding - anchors[t]), axis=-1)

  grad_fn = jax.grad(lambda z, t: jnp.sum(distance(z, t)))

  def one_target(carry, i):
    best_x, found, target_found = carry
    t = ranked[:, i]
    x0 = x
    if random_start:
      x0 = norms.project(norms.random_point_in_ball(jax.random.fold_in(key, i), x, eps,
                                                    "linf"), x, eps, "linf")
    x_t = lax.fori_loop(0, steps, lambda _, z: norms.project(
        z - step * jnp.sign(grad_fn(z, t)), x, eps, "linf"), x0)
    ok = evades(outputs(x_t), y) & ~found
    best_x = jnp.where(norms.per_example(ok | ~found, x), x_t, best_x)
    return (best_x, found | ok, jnp.where(ok, t, target_found)), None

  init = norms.varying_like((x, jnp.zeros((batch,), bool), jnp.full((batch,), -1)), x)
  (best_x, _, target_found), _ = lax.scan(one_target, init, jnp.arange(num_targets))
  success = evades(outputs(best_x), y)
  return best_x, {"success": success, "target": jnp.where(success, target_found, -1),
                  **norms.distances(best_x, x)}
