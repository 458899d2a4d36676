"""What a defense is, as the training loop and evaluation see it.

A defense decides (1) how many logits the network has, (2) how a training batch is built from a
data batch inside the compiled step (duplicates, adversarial examples, partners, ...), (3) the
loss on the network's outputs, and (4) how the deployed classifier turns the network's logits
into class scores. Detectors add a score; adaptive attacks use `class_logits` as their target.
Every method is a pure function so that it can run inside jit / shard_map.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]


class Defense(Protocol):
  name: str
  num_classes: int

  def output_width(self) -> int:
    """Width of the network's last layer (k, or 2k for Target Training)."""

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int) -> Any:
    """The defense's own training state (a pytree; {} if none), checkpointed with the rest.

    Optional companions: `state_specs()` (a PartitionSpec prefix of this state; default
    replicated: per-example buffers use P('data') and are split into equal blocks of rows over
    the devices, num_train_examples being rounded up to a multiple of their number) and
    `after_step(state, train_batch, outputs, input_grad)` (runs inside the step after the
    backward pass; `input_grad`, the loss gradient with respect to the training images, is
    computed only for defenses with `needs_input_gradient = True`).
    """

  def training_batch(self, batch: dict, key: jax.Array, logits_fn: LogitsFn,
                     defense_state: Any) -> tuple[dict, Any]:
    """From a data batch to the batch the network trains on (must contain `image`).

    `logits_fn` is the network with the current parameters in inference mode, for defenses
    that craft adversarial examples during training. Returns (train_batch, new_defense_state).
    """

  def loss(self, outputs: dict, train_batch: dict) -> tuple[jax.Array, dict]:
    """Scalar loss and metric sums ({'loss': sum, 'correct': sum, 'count': n}).

    `outputs` holds the network's `logits` and penultimate `embedding` in training mode.
    """

  def class_logits(self, logits: jax.Array) -> jax.Array:
    """The deployed classifier's k class scores (argmax is the prediction)."""


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           weights: jax.Array) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over examples with weight 1 and the metric sums that go with it."""
  per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
  count = jnp.sum(weights)
  loss = jnp.sum(per_example * weights) / jnp.maximum(count, 1.0)
  correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
  return loss, {"loss": loss * count, "correct": correct, "count": count}


class CrossEntropyDefense:
  """Shared by defenses that keep no state of their own and train with weighted cross-entropy
  on the batch they build (standard, Target Training, Adversarial Training)."""

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int):
    return {}

  def loss(self, outputs, train_batch):
    return weighted_cross_entropy(outputs["logits"], train_batch["label"], train_batch["weight"])


def unit_weighted(images: jax.Array, labels: jax.Array) -> dict:
  return {"image": images, "label": labels, "weight": jnp.ones(labels.shape, jnp.float32)}
