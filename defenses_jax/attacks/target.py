"""What every attack receives: the attacked system as one pure function,

    target(x, key) -> Deployed(class_logits, detector_score=None, outputs=None),

whatever the threat model (white-box, gray-box, transfer, adaptive, detector-aware) and whether
the system is randomised. A deterministic target ignores its key; a randomised one draws its
randomness from it, so an attack passes a fresh key wherever it wants a fresh draw, and EOT
(wrappers.eot) averages a target over keys. Targets close over their parameters, so they can be
jitted, vmapped and differentiated like any JAX function.

- Attacks that need only class scores read them through `call_logits`.
- A plain model, f(x) -> logits (or f(x, key) -> logits for a randomised one), becomes a target
  with `as_target`; say which it is, it is never guessed.
- A detector never rides on the model: the deployed system is built with it (the `detector`
  argument of Defense.deployed), and an attack that must evade it is told what it knows of it
  (`Evasion`) as an argument of its own.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax


class Deployed(NamedTuple):
  """The deployed system's output on a batch: class scores (argmax is the prediction) and, for
  a system with a detector, a per-example score (higher: more likely adversarial; flagged at or
  above its threshold) and `outputs`, everything the system computed on the way (the network's
  `logits` and penultimate `embedding`, the defense's own parts such as paper 003's
  `accept_margin`): what the detector read, and what a detector-aware attacker may read."""
  class_logits: jax.Array
  detector_score: Optional[jax.Array] = None
  outputs: Optional[dict] = None


Target = Callable[[jax.Array, jax.Array], Deployed]


def call_logits(target: Target, x: jax.Array, key: jax.Array) -> jax.Array:
  """The class scores of `target` on x (`key`: its randomness, unused when deterministic)."""
  return target(x, key).class_logits


def as_target(logits_fn: Callable, randomised: bool = False) -> Target:
  """The target of a plain model: logits_fn(x) -> logits, or, randomised, logits_fn(x, key)."""
  if randomised:
    return lambda x, key: Deployed(logits_fn(x, key))
  return lambda x, key: Deployed(logits_fn(x))


def _no_anchors():
  raise ValueError("this detector has no anchor embeddings (feature matching needs them).")


class Evasion(NamedTuple):
  """What a detector-aware attacker knows of the detector it must evade: an input is flagged
  iff its score >= `threshold`; `weight` converts detector units into logit units (see
  wrappers.reject_as_true_class); `anchors()` -> (K, d), one training embedding per class the
  detector accepts as typical of it (what feature matching steers towards)."""
  threshold: Any
  weight: float = 1.0
  anchors: Callable[[], jax.Array] = _no_anchors
