"""BPDA and EOT: make any gradient attack work against defenses whose gradients are useless;
and a detector folded into the class scores, for attacks that must evade a detector too.

BPDA (Athalye et al. 2018): keep a non-differentiable (or gradient-masking) operation on the
forward pass, but differentiate a smooth approximation of it on the backward pass.
EOT: for a randomised defense, attack the expectation over its randomness. Both wrap an
attack target (target.py) into another: every attack takes them unchanged.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from defenses_jax.attacks.objectives import class_logit, max_other_logit
from defenses_jax.attacks.target import Deployed, Evasion, Target

BACKWARD_APPROXIMATIONS: dict[str, Callable] = {
    "identity": lambda x: x,  # BPDA-I: the op is treated as the identity on the way back.
    "softsign": jax.nn.soft_sign,  # A smooth stand-in for sgn, x / (1 + |x|).
    "tanh": jnp.tanh,  # Another smooth stand-in for sgn.
}


def bpda(forward: Callable, backward="identity") -> Callable:
  """forward(x) on the forward pass; the gradient of `backward` (a name above or a callable
  of the same shape signature) on the backward pass."""
  if isinstance(backward, str):
    if backward not in BACKWARD_APPROXIMATIONS:
      raise ValueError(f"unknown BPDA approximation {backward!r}; choose one of "
                       f"{sorted(BACKWARD_APPROXIMATIONS)} or pass a function.")
    backward = BACKWARD_APPROXIMATIONS[backward]
  approx = backward

  @jax.custom_vjp
  def op(x):
    return forward(x)

  def op_fwd(x):
    return forward(x), x

  def op_bwd(x, g):
    _, vjp = jax.vjp(approx, x)
    return vjp(g)

  op.defvjp(op_fwd, op_bwd)
  return op


# Draws evaluated at once by eot: more (paper 004's 500 draws of a 13-step attack inside the
# defense) run in sequential chunks, each rematerialised on the backward pass, so memory stays
# that of EOT_CHUNK draws.
EOT_CHUNK = 32


def eot(target: Target, num_samples: int, chunk: int = EOT_CHUNK) -> Target:
  """Expectation over transformation: a target whose class scores are the mean log-probability
  of `target`'s over `num_samples` draws of its randomness, one key each split from the call's
  (vmapped in chunks of `chunk` draws, not looped in Python).

  The output's entry y, E[log p_y], has exactly the EOT gradient of the loss -log p_y. The
  attacks' cross-entropy re-normalises its input (softmax of the averaged log-probabilities),
  so for them this is the cross-entropy of the normalised geometric-mean classifier: close to,
  but not the same as, E[CE] (they differ where the draws disagree on the class).
  """
  if num_samples < 1 or chunk < 1:
    raise ValueError(f"EOT needs num_samples >= 1 and chunk >= 1; got {num_samples}, {chunk}.")

  def averaged(x, key):
    keys = jax.random.split(key, num_samples)
    one_draw = lambda k: jax.nn.log_softmax(target(x, k).class_logits)
    if num_samples <= chunk:
      log_probs = jax.vmap(one_draw)(keys)
    else:
      log_probs = jax.lax.map(jax.checkpoint(one_draw), keys, batch_size=chunk)
    return Deployed(jnp.mean(log_probs, axis=0))

  return averaged


def reject_as_true_class(class_logits, detector_score, threshold, labels, weight: float = 1.0):
  """Class scores of the deployed system *classifier + detector* for an attacker who must both
  change the class and stay under the detector's threshold: the true class's logit becomes

      max(Z_y, R),  R = max_{j != y} Z_j + weight * (s - threshold),

  so a rejected input (s >= threshold) counts as the true class and an accepted one keeps its
  classifier's decision. Then max_{j != y} Z'_j - Z'_y = min(classifier margin,
  weight * (threshold - s)): every margin or cross-entropy attack, untargeted or targeted,
  optimises the joint condition "misclassified and accepted" (Carlini & Wagner 2017's detector
  folded in as an extra class, with the reject class merged into the true one, as an untargeted
  attack needs: a reject class of its own would count being flagged as success). `weight`
  converts detector units into logit units. At s == threshold (flagged) a tie with another
  class may be broken either way; evaluation re-checks every example at the threshold.
  """
  reject = max_other_logit(class_logits, labels) + weight * (detector_score - threshold)
  true_class = jnp.maximum(class_logit(class_logits, labels), reject)
  return jnp.where(jax.nn.one_hot(labels, class_logits.shape[-1], dtype=bool),
                   true_class[:, None], class_logits)


def rejecting(system: Target, evasion: Evasion, labels: jax.Array) -> Target:
  """The target of an attacker who must both fool `system` (a deployed system with a detector)
  and evade its detector: class scores with the detector folded in (reject_as_true_class, at
  the attacker's threshold and weight). Label-aware: only for the batch of `labels`."""

  def folded(x, key):
    if x.shape[0] != labels.shape[0]:
      raise ValueError(f"the detector-aware target knows the labels of a batch of "
                       f"{labels.shape[0]}; it was called on {x.shape[0]} inputs.")
    out = system(x, key)
    return Deployed(reject_as_true_class(out.class_logits, out.detector_score,
                                         evasion.threshold, labels, evasion.weight))

  return folded
