"""Adversarial Training after Kurakin et al. (2016), paper 000 Algorithm 2: each batch is the
batch plus adversarial examples of a named attack, with their true labels. The examples are
crafted from the current parameters inside the compiled train step."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from defenses_jax import attacks
from defenses_jax.defenses.base import Defense, unit_weighted


def adversarial_examples(attack: str, attack_params: dict, logits_fn, batch, key) -> jax.Array:
  """Adversarial examples of the batch under `attack` on logits_fn(x) -> logits, with gradients
  stopped: they are data, not a function of the parameters being trained."""
  x_adv, _ = attacks.get_attack(attack)(attacks.as_target(logits_fn), batch["image"],
                                        batch["label"], key, **attack_params)
  return jax.lax.stop_gradient(x_adv)


@dataclasses.dataclass(frozen=True)
class AdversarialTraining(Defense):
  num_classes: int
  attack: str = "fgsm"
  attack_params: Optional[dict] = None
  # True: each batch with its adversarial copies (Goodfellow et al., Kurakin et al.; paper 000's
  # baselines); False: the adversarial examples only (Madry et al. 2018's min-max training).
  include_clean: bool = True
  name: str = "adversarial_training"

  def __post_init__(self):
    attacks.get_attack(self.attack)  # Unknown names fail here, before any compute.

  def training_batch(self, batch, key, logits_fn, defense_state):
    x_adv = adversarial_examples(self.attack, self.attack_params or {}, logits_fn, batch, key)
    if not self.include_clean:
      return unit_weighted(x_adv, batch["label"]), defense_state
    return unit_weighted(jnp.concatenate([batch["image"], x_adv]),
                         jnp.concatenate([batch["label"], batch["label"]])), defense_state
