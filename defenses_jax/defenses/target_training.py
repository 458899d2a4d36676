"""Target Training (paper 000); its Adversarial Training baseline is in adversarial_training.py.

Target Training trains a network with 2k outputs. Algorithm 1 (against attacks that minimise
the perturbation): each batch is the batch plus its duplicate labelled y + k. Algorithm 3
(against attacks that do not): the batch plus adversarial examples of a named attack, crafted
from the current parameters inside the compiled step, labelled y + k. The deployed classifier
predicts argmax_i (p_i + p_{i+k}).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from defenses_jax import attacks
from defenses_jax.defenses.adversarial_training import adversarial_examples
from defenses_jax.defenses.base import Defense, unit_weighted


def merged_class_logits(logits: jax.Array, num_classes: int) -> jax.Array:
  """log(p_i + p_{i+k}) for i < k: the deployed classifier's class scores, as log-probabilities
  (their argmax is argmax_i (p_i + p_{i+k}); an attack can differentiate them directly)."""
  log_p = jax.nn.log_softmax(logits)
  return jnp.logaddexp(log_p[..., :num_classes], log_p[..., num_classes:])


def summed_pair_logits(logits: jax.Array, num_classes: int) -> jax.Array:
  """The paper's adaptive attack (section 5): an extra layer whose output i is the sum of the
  network's outputs i and i + k."""
  return logits[..., :num_classes] + logits[..., num_classes:]


@dataclasses.dataclass(frozen=True)
class TargetTraining(Defense):
  num_classes: int
  attack: str = ""  # "" : Algorithm 1 (duplicates); an attack name: Algorithm 3.
  attack_params: Optional[dict] = None
  name: str = "target_training"

  def __post_init__(self):
    if self.attack:
      attacks.get_attack(self.attack)  # Unknown names fail here, before any compute.

  def output_width(self) -> int:
    return 2 * self.num_classes

  def training_batch(self, batch, key, logits_fn, defense_state):
    if self.attack:
      # The attacker of Algorithm 3 sees the 2k-class network and the true label.
      second = adversarial_examples(self.attack, self.attack_params or {}, logits_fn, batch, key)
    else:
      second = batch["image"]
    return unit_weighted(jnp.concatenate([batch["image"], second]),
                         jnp.concatenate([batch["label"], batch["label"] + self.num_classes])
                         ), defense_state

  def class_logits(self, logits: jax.Array) -> jax.Array:
    return merged_class_logits(logits, self.num_classes)

  def attack_surfaces(self) -> dict:
    return {"adaptive": lambda net, x, key: summed_pair_logits(net(x), self.num_classes)}
