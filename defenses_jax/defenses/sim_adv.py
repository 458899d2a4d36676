"""SIM-Adv: single-step epoch-iterative adversarial training (paper 001, section 5).

Every training example keeps its adversarial version in the training state. Each time the
example is visited (once per epoch) one FGSM step of eps/n1 is taken from last epoch's version
(equations 14-16), projected onto the eps-ball around the clean image and [0, 1]; every n2 epochs
the version restarts from the clean image. With n1 < n2 ("over-perturbation") most epochs train
on examples that have reached the edge of the ball. The network trains on the clean batch plus
the new adversarial versions, which costs one extra forward-backward pass per step, like FGSM
adversarial training, instead of n2 for BIM(n1, n2)-Adv.

The buffer holds perturbations (adversarial minus clean), one row per training example, split
over the devices (example_buffer.py) and checkpointed with the rest of the state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from defenses_jax import parallel
from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import cross_entropy
from defenses_jax.defenses.base import Defense, unit_weighted
from defenses_jax.defenses.example_buffer import gather_rows, scatter_rows


def epoch_iterative_step(logits_fn, x, y, delta, restart, eps: float, step_size: float):
  """One FGSM step of `step_size` from x + delta (from x where `restart`), kept within the
  eps-ball around x and the [0, 1] box. Returns the new perturbation."""
  delta = jnp.where(norms.per_example(restart, x), 0.0, delta)
  x_prev = jnp.clip(x + delta, 0.0, 1.0)
  grad = jax.grad(lambda z: jnp.sum(cross_entropy(logits_fn(z), y)))(x_prev)
  x_next = norms.project(x_prev + step_size * norms.steepest_ascent(grad, "linf"), x, eps,
                         "linf")
  return x_next - x


@dataclasses.dataclass(frozen=True)
class SimAdv(Defense):
  num_classes: int
  eps: float = 0.3
  n1: int = 10  # Step eps / n1 per epoch.
  n2: int = 20  # Restart from the clean image every n2 epochs.
  name: str = "sim_adv"

  def __post_init__(self):
    if not (self.eps > 0 and self.n1 >= 1 and self.n2 >= 1):
      raise ValueError(f"SIM-Adv needs eps > 0, n1 >= 1, n2 >= 1; got {self.eps}, {self.n1}, "
                       f"{self.n2}.")

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int):
    return {"perturbation": jnp.zeros((num_train_examples, *image_shape), jnp.float32)}

  def state_specs(self):
    return {"perturbation": parallel.SHARDED}

  def training_batch(self, batch, key, logits_fn, defense_state):
    x, y = batch["image"], batch["label"]
    delta = gather_rows(defense_state["perturbation"], batch["index"])
    delta = epoch_iterative_step(logits_fn, x, y, delta, batch["epoch"] % self.n2 == 0,
                                 self.eps, self.eps / self.n1)
    delta = jax.lax.stop_gradient(delta)
    state = {"perturbation": scatter_rows(defense_state["perturbation"], batch["index"], delta)}
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
    return unit_weighted(jnp.concatenate([x, x_adv]), jnp.concatenate([y, y])), state
