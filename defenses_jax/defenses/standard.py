"""Standard (undefended) training: cross-entropy on the clean batch. The unsecured baseline."""

from __future__ import annotations

import dataclasses

from defenses_jax.defenses.base import Defense, unit_weighted


@dataclasses.dataclass(frozen=True)
class StandardTraining(Defense):
  num_classes: int
  name: str = "standard"

  def training_batch(self, batch, key, logits_fn, defense_state):
    del key, logits_fn
    return unit_weighted(batch["image"], batch["label"]), defense_state
