"""Standard (undefended) training: cross-entropy on the clean batch. The unsecured baseline."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from defenses_jax.defenses.base import weighted_cross_entropy


@dataclasses.dataclass(frozen=True)
class StandardTraining:
  num_classes: int
  name: str = "standard"

  def output_width(self) -> int:
    return self.num_classes

  def init_state(self, num_train_examples: int, image_shape: tuple):
    return {}

  def training_batch(self, batch, key, logits_fn, defense_state):
    del key, logits_fn
    weights = jnp.ones(batch["label"].shape, jnp.float32)
    return {"image": batch["image"], "label": batch["label"], "weight": weights}, defense_state

  def loss(self, outputs, train_batch):
    return weighted_cross_entropy(outputs["logits"], train_batch["label"], train_batch["weight"])

  def class_logits(self, logits: jax.Array) -> jax.Array:
    return logits
