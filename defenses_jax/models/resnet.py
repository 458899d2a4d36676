"""ResNets for 32x32 inputs: the CIFAR ResNet-20/32/56 of He et al. (2016, section 4.2) and the
CIFAR variant of ResNet-18 (3x3 stem, no initial max-pool) used by papers 001 and 004.

The activation is selectable because paper 002 trains ResNet-56 with leaky-ReLU (slope 0.1).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from defenses_jax.models.cnn import BN_MOMENTUM, _outputs
from defenses_jax.models.batch_norm import BatchNorm
from defenses_jax.models.conv import Conv

ACTIVATIONS = {
    "relu": nn.relu,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.1),
}


def activation_by_name(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm; a 1x1 projection shortcut when the shape changes."""

  features: int
  strides: int
  activation: Callable

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM)
    y = Conv(self.features, (3, 3), (self.strides, self.strides), padding="SAME",
                use_bias=False)(x)
    y = self.activation(norm()(y))
    y = Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)  # Each block starts as the identity.
    if x.shape != y.shape:
      x = Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False)(x)
      x = norm()(x)
    return self.activation(x + y)


class ResNet(nn.Module):
  """A stack of BasicBlock stages after a 3x3 stem, global average pool, Dense num_outputs."""

  stage_sizes: Sequence[int]
  stage_features: Sequence[int]
  num_outputs: int = 10
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    act = activation_by_name(self.activation)
    x = Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False)(x)
    x = act(BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)(x))
    for stage, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_features)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, strides, act)(x, train)
    embedding = jnp.mean(x, axis=(1, 2))
    return _outputs(nn.Dense(self.num_outputs)(embedding), embedding, return_embedding)


def cifar_resnet(depth: int, **kwargs) -> ResNet:
  """ResNet-(6n+2) with stages of 16, 32, 64 filters (depth 20, 32, 56, ...)."""
  if (depth - 2) % 6:
    raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 56, 110); got {depth}.")
  n = (depth - 2) // 6
  return ResNet(stage_sizes=(n, n, n), stage_features=(16, 32, 64), **kwargs)


def resnet18(**kwargs) -> ResNet:
  return ResNet(stage_sizes=(2, 2, 2, 2), stage_features=(64, 128, 256, 512), **kwargs)
