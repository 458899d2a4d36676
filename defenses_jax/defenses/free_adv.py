"""Free-Adv ("Adversarial Training for Free!", Shafahi et al. 2019), a baseline of paper 001.

Each mini-batch is replayed m times in a row (config `train.replays` = m; the paper divides the
number of epochs by m). Every replay trains on x + delta only, and the same backward pass that
gives the parameter gradient gives the input gradient, with which delta is pushed by eps * sign
and clipped to [-eps, eps]. As in the authors' implementation, delta is one batch-shaped tensor
carried from replay to replay and on to the next mini-batch (it is not per example); each device
keeps the part for its shard of the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from defenses_jax import parallel
from defenses_jax.defenses.base import Defense, unit_weighted


@dataclasses.dataclass(frozen=True)
class FreeAdv(Defense):
  num_classes: int
  eps: float = 0.3
  step_size: float = -1.0  # The perturbation step per replay; -1: eps (the authors' default).
  name: str = "free_adv"
  needs_input_gradient = True

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int):
    return {"perturbation": jnp.zeros((batch_size, *image_shape), jnp.float32)}

  def state_specs(self):
    return {"perturbation": parallel.SHARDED}

  def training_batch(self, batch, key, logits_fn, defense_state):
    x_adv = jnp.clip(batch["image"] + defense_state["perturbation"], 0.0, 1.0)
    return unit_weighted(x_adv, batch["label"]), defense_state

  def after_step(self, defense_state, train_batch, outputs, input_grad):
    step = self.eps if self.step_size < 0 else self.step_size
    delta = defense_state["perturbation"] + step * jnp.sign(input_grad)
    return {"perturbation": jax.lax.stop_gradient(jnp.clip(delta, -self.eps, self.eps))}
