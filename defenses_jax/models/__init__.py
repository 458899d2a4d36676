"""Model registry: configs name a model; `create_model` builds it with the defense's output width."""

from __future__ import annotations

import functools

import flax.linen as nn

from defenses_jax.models.cnn import LeNet, TargetTrainingCifarCNN, TargetTrainingMnistCNN
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
})


def create_model(name: str, num_outputs: int, **kwargs) -> nn.Module:
  """The model `name` with `num_outputs` logits; kwargs are the model's own options
  (e.g. activation='leaky_relu' for the ResNets)."""
  return MODELS.create(name, kwargs, num_outputs=num_outputs)


__all__ = ["MODELS", "create_model", "LeNet", "ResNet", "SmallVGG", "TargetTrainingCifarCNN",
           "TargetTrainingMnistCNN", "cifar_resnet", "resnet18"]
