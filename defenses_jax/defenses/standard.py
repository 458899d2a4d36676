"""Standard (undefended) training: cross-entropy on the clean batch. The unsecured baseline."""

from __future__ import annotations

import dataclasses

import jax

from defenses_jax.defenses.base import CrossEntropyDefense, unit_weighted


@dataclasses.dataclass(frozen=True)
class StandardTraining(CrossEntropyDefense):
  num_classes: int
  name: str = "standard"

  def output_width(self) -> int:
    return self.num_classes

  def training_batch(self, batch, key, logits_fn, defense_state):
    del key, logits_fn
    return unit_weighted(batch["image"], batch["label"]), defense_state

  def class_logits(self, logits: jax.Array) -> jax.Array:
    return logits
