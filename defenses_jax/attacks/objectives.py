"""What attacks optimise and how success is judged, shared by every attack.

Conventions: logits are (B, K); `labels` are the true classes; `targets` (or None) the classes
a targeted attack aims for. Every loss here is per-example and is *maximised* by the attack.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp

LOSSES = ("ce", "margin")


def _one_hot(classes, num_classes):
  return jax.nn.one_hot(classes, num_classes, dtype=bool)


def max_other_logit(logits: jax.Array, classes: jax.Array) -> jax.Array:
  """max_{j != c} Z_j. The class is masked out with -inf, not multiplied by zero: logits can be
  negative, and a zeroed entry would then wrongly win the max."""
  masked = jnp.where(_one_hot(classes, logits.shape[-1]), -jnp.inf, logits)
  return jnp.max(masked, axis=-1)


def class_logit(logits: jax.Array, classes: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, labels: jax.Array, targets: Optional[jax.Array] = None) -> jax.Array:
  """The Carlini-Wagner margin, positive iff the attack succeeds:
  untargeted max_{j != y} Z_j - Z_y; targeted Z_t - max_{j != t} Z_j."""
  if targets is None:
    return max_other_logit(logits, labels) - class_logit(logits, labels)
  return class_logit(logits, targets) - max_other_logit(logits, targets)


def cross_entropy(logits: jax.Array, classes: jax.Array) -> jax.Array:
  """-log p_c written as softplus(logsumexp_{j != c} Z_j - Z_c).

  Same value as -log_softmax, but a better gradient on confident inputs: the usual form's
  gradient for Z_c is p_c - 1, which float32 rounds to a multiple of 6e-8 once p_c ~ 1, so the
  input gradient (what FGSM and PGD follow) points the wrong way for many pixels. Here that
  coefficient is computed as minus the sum of the other classes' probabilities, without
  cancellation.
  """
  others = jnp.where(_one_hot(classes, logits.shape[-1]), -jnp.inf, logits)
  return jax.nn.softplus(jax.nn.logsumexp(others, axis=-1) - class_logit(logits, classes))


def attack_loss(logits, labels, targets=None, loss: str = "ce") -> jax.Array:
  """Per-example loss the attack ascends: CE of the true class (untargeted) or minus CE of the
  target (targeted); or the CW margin."""
  if loss == "ce":
    return cross_entropy(logits, labels) if targets is None else -cross_entropy(logits, targets)
  if loss == "margin":
    return margin(logits, labels, targets)
  raise ValueError(f"unknown attack loss {loss!r}; choose one of {LOSSES}.")


def is_successful(logits, labels, targets=None, kappa: float = 0.0) -> jax.Array:
  """Untargeted: misclassified; targeted: classified as the target. With confidence kappa > 0
  success additionally needs margin >= kappa (the Carlini-Wagner high-confidence criterion)."""
  m = margin(logits, labels, targets)
  return (m > 0) & (m >= kappa)


def least_likely_class(logits: jax.Array) -> jax.Array:
  return jnp.argmin(logits, axis=-1)


def check_batch(x, labels, targets: Optional[jax.Array] = None) -> None:
  """Attacks take a batch: x floating-point (B, ...) with at least one feature axis, labels
  (and targets) integer classes (B,). Checked when the attack is traced, so a wrong input fails
  with a clear message before any compute."""
  chex.assert_type(x, float)
  if x.ndim < 2:
    raise ValueError(f"attacks take a batch of inputs (B, ...); got shape {x.shape}.")
  for name, classes in (("labels", labels), ("targets", targets)):
    if classes is not None:
      chex.assert_rank(classes, 1, custom_message=f"{name} must be one class per example")
      chex.assert_type(classes, int, custom_message=f"{name} must be integer classes")
      chex.assert_equal_shape_prefix([x, classes], 1, custom_message=f"one of {name} per input")


def random_targets(key, labels: jax.Array, num_classes: int) -> jax.Array:
  """A class drawn uniformly from the K - 1 classes other than each label."""
  return (labels + jax.random.randint(key, labels.shape, 1, num_classes)) % num_classes


def resolve_targets(logits_fn, x, labels, target: str, targets: Optional[jax.Array],
                    key: Optional[jax.Array] = None):
  """target='none' (untargeted), 'given' (use `targets`), 'least_likely' (argmin of the clean
  logits, for LL-PGD) or 'random' (uniform over the other classes; needs `key`). Checks the
  batch first (check_batch)."""
  check_batch(x, labels, targets)
  if target == "random":
    if key is None:
      raise ValueError("target='random' needs a key.")
    return random_targets(key, labels, jax.eval_shape(logits_fn, x).shape[-1])
  if target == "none":
    return None
  if target == "given":
    if targets is None:
      raise ValueError("target='given' needs a `targets` array of classes.")
    return targets
  if target == "least_likely":
    return least_likely_class(logits_fn(x))
  raise ValueError(f"unknown target mode {target!r}; choose 'none', 'given', 'least_likely' or "
                   "'random'.")
