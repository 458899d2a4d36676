"""Attacks on paper 003's collaborative defense as a whole: the deployed classifier Z* and the
pair detector, which accepts an input classified as c iff argmax Z' = Classmap[c].

Both read the deployed system's outputs (detector_evasion.system_outputs): `class_logits` Z*,
`accept_margin` (B, K), margin(Z', Classmap[c]) for each candidate class c, and `excess` (the
detector's score over the attacker's threshold, `evasion.threshold`; accepted iff negative).
With the pair detector's fixed threshold 0, "accepted if classified as t" is
accept_margin[:, t] > 0.

- `cw_pair`: the paper's nearly-white-box attack (section 3.3.2, equation 10): Carlini-Wagner L2
  on eta1 L(Z*, t) + eta2 L(Z', Classmap[t]), L the CW hinge max(kappa - margin, 0). Targeted
  (t: a random class, as the paper's Table 5) or untargeted, where the paper gives no t'; ours
  takes at each iterate the best target, min over t != y of the targeted term. Success: Z*'s
  margin at least kappa (the CW criterion) *and* accepted.
- `pair_apgd`: beyond the paper, APGD on min(margin(Z*, t), cap) + min(accept margin of t, cap)
  for the clean input's most likely wrong classes t in turn; success is misclassified and
  accepted. With `bpda=True` the gradient lock is held constant on the backward pass: Z* is
  differentiated as Z * stop_gradient(g(Z')) (its value unchanged), the attack the paper's
  "vanishing gradients" through g invite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from defenses_jax.attacks import norms
from defenses_jax.attacks.apgd import apgd_runs, ranked_targets
from defenses_jax.attacks.carlini_wagner import cw_l2_search
from defenses_jax.attacks.detector_evasion import evades, system_outputs
from defenses_jax.attacks.objectives import check_batch, margin, random_targets
from defenses_jax.attacks.stepped import run_batch
from defenses_jax.attacks.target import Evasion, Target

PAIR_TARGETS = ("none", "random")


def _pair_outputs(system: Target, z, key, evasion: Evasion, bpda: bool = False) -> dict:
  out = system_outputs(system, z, key, evasion)
  if "accept_margin" not in out:
    raise ValueError("pair attacks read the defense's `accept_margin` output; only the "
                     "collaborative defense (paper 003) with the pair detector has it.")
  if bpda:
    if "base_logits" not in out or "lock" not in out:
      raise ValueError("bpda=True needs the defense's `base_logits` and `lock` outputs.")
    value = out["class_logits"]
    surrogate = out["base_logits"] * jax.lax.stop_gradient(out["lock"])
    # The forward value stays exactly Z*; only the backward pass sees g as a constant.
    out["class_logits"] = surrogate + jax.lax.stop_gradient(value - surrogate)
  # Accepted if classified as c: the detector's excess if the class were c, negated. With the
  # pair detector (score -accept_margin of the deployed class) excess = -accept_margin - thr.
  out["accept_if"] = out["accept_margin"] + evasion.threshold
  return out


def _at(values, classes):
  return jnp.take_along_axis(values, classes[:, None], axis=-1)[:, 0]


def pair_violation(out: dict, y, targets, kappa: float, eta1: float, eta2: float):
  """Equation 10's hinge terms per example, eta1 max(kappa - margin(Z*, t), 0) + eta2
  max(kappa - accept margin of t, 0), and success (Z* margin >= kappa, accepted). targets None:
  untargeted, the smallest term over t != y."""
  z_star = out["class_logits"]
  accept = out["accept_if"]
  if targets is not None:
    m = margin(z_star, y, targets)
    violation = eta1 * jnp.maximum(kappa - m, 0.0) + eta2 * jnp.maximum(
        kappa - _at(accept, targets), 0.0)
    success = (m > 0) & (m >= kappa) & (out["excess"] < 0)
    return violation, success
  k = z_star.shape[-1]
  all_t = jnp.broadcast_to(jnp.arange(k), z_star.shape)
  per_target = jax.vmap(lambda t: margin(z_star, y, t), in_axes=1, out_axes=1)(all_t)
  terms = eta1 * jnp.maximum(kappa - per_target, 0.0) + eta2 * jnp.maximum(kappa - accept, 0.0)
  terms = jnp.where(jax.nn.one_hot(y, k, dtype=bool), jnp.inf, terms)
  return jnp.min(terms, axis=-1), evades(out, y, kappa)


def cw_pair(system: Target, x, y, key, *, evasion: Evasion, kappa: float = 0.0,
            target: str = "none", eta1: float = 1.0, eta2: float = 1.0,
            binary_search_steps: int = 9, max_iterations: int = 1000,
            learning_rate: float = 1e-2, initial_const: float = 1e-3, abort_early: bool = True):
  """Equation 10's CW-L2 (see the module docstring); the paper gives no eta1 / eta2 (ours: 1,
  1). Returns (x_adv, info): success on a fresh forward pass, `target` (-1 untargeted);
  failures come back as x."""
  check_batch(x, y)
  if target not in PAIR_TARGETS:
    raise ValueError(f"cw_pair's target is one of {PAIR_TARGETS}; got {target!r}.")
  if not (eta1 >= 0 and eta2 >= 0 and eta1 + eta2 > 0):
    raise ValueError(f"cw_pair needs eta1, eta2 >= 0, not both 0; got {eta1}, {eta2}.")
  search_key, target_key = jax.random.split(key)
  num_classes = jax.eval_shape(lambda z: system(z, key).class_logits, x).shape[-1]
  targets = random_targets(target_key, y, num_classes) if target == "random" else None

  def violation(z, k):
    return pair_violation(_pair_outputs(system, z, k, evasion), y, targets, kappa, eta1, eta2)

  best_x, const, lower = cw_l2_search(violation, x, search_key,
                                      binary_search_steps=binary_search_steps,
                                      max_iterations=max_iterations,
                                      learning_rate=learning_rate, initial_const=initial_const,
                                      abort_early=abort_early)
  _, success = violation(best_x, key)
  x_adv = jnp.where(norms.per_example(success, x), best_x, x)
  return x_adv, {"success": success, **norms.distances(x_adv, x), "const": const,
                 "const_lower": lower,
                 "target": jnp.full(y.shape, -1) if targets is None else targets}


def pair_apgd(system: Target, x, y, key, *, evasion: Evasion, eps: float, norm: str = "linf",
              steps: int = 100, num_targets: int = 3, restarts: int = 1,
              margin_cap: float = 1.0, bpda: bool = False, rho: float = 0.75):
  """APGD towards each of the `num_targets` classes with the highest clean Z* other than y, on
  min(margin(Z*, t), cap) + min(accept margin of t, cap); an example keeps the first target
  that makes it misclassified and accepted (module docstring). Returns (x_adv, info)."""
  if not margin_cap > 0:
    raise ValueError(f"pair_apgd's margin_cap must be positive; got {margin_cap}.")

  def check(outputs):
    num_classes = outputs["class_logits"].shape[-1]
    if not 1 <= num_targets <= num_classes - 1:
      raise ValueError(f"pair_apgd needs 1 <= num_targets <= {num_classes - 1}; got "
                       f"{num_targets}.")

  def loss_of(t):
    return lambda out, yy: (jnp.minimum(margin(out["class_logits"], yy, t), margin_cap)
                            + jnp.minimum(_at(out["accept_if"], t), margin_cap))

  attack = apgd_runs(lambda z, k: _pair_outputs(system, z, k, evasion, bpda), eps=eps, norm=norm,
                     steps=steps, restarts=restarts, rho=rho, eot_iter=1, num_runs=num_targets,
                     loss_of=loss_of, check=check,
                     rank=lambda out, yy: ranked_targets(out["class_logits"], yy),
                     fooled_fn=lambda out, yy: evades(out, yy))
  return run_batch(attack, x, y, key)
