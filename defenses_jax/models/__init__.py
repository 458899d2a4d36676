"""Model registry: configs name a model; `create_model` builds it with the defense's output width."""

from __future__ import annotations

import functools

import flax.linen as nn

from defenses_jax.models.cnn import (LeNet, PlainCNN, TargetTrainingCifarCNN,
                                     TargetTrainingMnistCNN)
from defenses_jax.models.resnet import ResNet, cifar_resnet, resnet18
from defenses_jax.models.vgg import SmallVGG
from defenses_jax.registry import Registry

MODELS = Registry("model", {
    "tt_mnist_cnn": TargetTrainingMnistCNN,
    "tt_cifar_cnn": TargetTrainingCifarCNN,
    "lenet": LeNet,
    # ResNet-8 (one block per stage): paper 002's ResNet family at cpu scale.
    "resnet8": functools.partial(cifar_resnet, 8),
    "resnet20": functools.partial(cifar_resnet, 20),
    "resnet32": functools.partial(cifar_resnet, 32),
    "resnet56": functools.partial(cifar_resnet, 56),
    "resnet18": resnet18,
    "small_vgg": SmallVGG,
    # Paper 003, Table 1: the oracle (both datasets) and the two substitutes.
    "collab_oracle": PlainCNN,
    "collab_substitute_mnist": functools.partial(PlainCNN, conv_stages=((32, 32), (64, 64)),
                                                 dense=(200, 200), dropout=0.0),
    "collab_substitute_cifar10": functools.partial(PlainCNN, conv_stages=((64, 64), (128, 128)),
                                                   dense=(256, 256), dropout=0.0),
    "plain_cnn": PlainCNN,
})


def create_model(name: str, num_outputs: int, **kwargs) -> nn.Module:
  """The model `name` with `num_outputs` logits; kwargs are the model's own options
  (e.g. activation='leaky_relu' for the ResNets)."""
  return MODELS.create(name, kwargs, num_outputs=num_outputs)


__all__ = ["MODELS", "create_model", "LeNet", "PlainCNN", "ResNet", "SmallVGG", "TargetTrainingCifarCNN",
           "TargetTrainingMnistCNN", "cifar_resnet", "resnet18"]
