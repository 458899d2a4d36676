"""ATDA: adversarial training with domain adaptation (Song et al. 2018), a baseline of paper 001
(section 3.1, equations 7-12).

The batch is the clean batch plus its FGSM examples. The loss is the cross-entropy on both plus
lambda times the domain-adaptation losses on the network's logits C(x):
  CORAL (eq. 7): ||Cov C(clean) - Cov C(adv)||_1 / k^2,
  MMD   (eq. 8): ||mean C(clean) - mean C(adv)||_1 / k,
  SDA   (eqs. 10-11): mean over examples and wrong classes m of
        softplus(||C(x) - phi_y||_1 - ||C(x) - phi_m||_1),
with class centers phi updated after every step by eq. 12 (step beta = 0.1), summed over the
devices so that every device keeps the same centers. Covariances and means are per device (as
BatchNorm statistics are).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax import attacks, parallel
from defenses_jax.defenses.base import Defense, weighted_cross_entropy


def coral_loss(clean: jax.Array, adv: jax.Array) -> jax.Array:
  k = clean.shape[-1]
  cov = lambda z: jnp.cov(z, rowvar=False)
  return jnp.sum(jnp.abs(cov(clean) - cov(adv))) / k**2


def mmd_loss(clean: jax.Array, adv: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(clean.mean(0) - adv.mean(0))) / clean.shape[-1]


def sda_loss(logits: jax.Array, labels: jax.Array, centers: jax.Array) -> jax.Array:
  k = centers.shape[0]
  distances = jnp.sum(jnp.abs(logits[:, None, :] - centers[None]), -1)  # (N, k): ||C(x)-phi_m||_1
  own = jnp.take_along_axis(distances, labels[:, None], axis=-1)
  others = ~jax.nn.one_hot(labels, k, dtype=bool)
  return jnp.sum(jnp.where(others, jax.nn.softplus(own - distances), 0.0)) / (
      (k - 1) * logits.shape[0])


def updated_centers(centers, logits, labels, beta: float, axis_name=None):
  """Eq. 12: phi_m <- phi_m - beta * sum_{y=m} (phi_m - C(x)) / (1 + n_m), sums over devices."""
  one_hot = jax.nn.one_hot(labels, centers.shape[0], dtype=logits.dtype)  # (N, k)
  counts = one_hot.sum(0)
  sums = one_hot.T @ logits  # (k, k): sum of C(x) per class
  if axis_name is not None:
    counts, sums = lax.psum(counts, axis_name), lax.psum(sums, axis_name)
  diff = counts[:, None] * centers - sums
  return centers - beta * diff / (1.0 + counts[:, None])


@dataclasses.dataclass(frozen=True)
class ATDA(Defense):
  num_classes: int
  eps: float = 0.3
  domain_weight: float = 1.0  # lambda
  beta: float = 0.1
  name: str = "atda"

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int):
    return {"centers": jnp.zeros((self.num_classes, self.num_classes), jnp.float32)}

  def training_batch(self, batch, key, logits_fn, defense_state):
    x, y = batch["image"], batch["label"]
    x_adv = lax.stop_gradient(attacks.fgsm(attacks.as_target(logits_fn), x, y, key,
                                           eps=self.eps)[0])
    return {"image": jnp.concatenate([x, x_adv]), "label": jnp.concatenate([y, y]),
            "weight": jnp.ones((2 * y.shape[0],), jnp.float32),
            "centers": defense_state["centers"]}, defense_state

  def loss(self, outputs, train_batch):
    logits, labels = outputs["logits"], train_batch["label"]
    ce, sums = weighted_cross_entropy(logits, labels, train_batch["weight"])
    half = logits.shape[0] // 2
    clean, adv = logits[:half], logits[half:]
    domain = (coral_loss(clean, adv) + mmd_loss(clean, adv)
              + sda_loss(logits, labels, train_batch["centers"]))
    return ce + self.domain_weight * domain, sums

  def after_step(self, defense_state, train_batch, outputs, input_grad):
    centers = updated_centers(defense_state["centers"], lax.stop_gradient(outputs["logits"]),
                              train_batch["label"], self.beta, parallel.DATA_AXIS)
    return {"centers": centers}
