"""Small convolutional classifiers: the Target Training CNNs (paper 000, Table 5) and LeNet-5.

Every model maps NHWC images in [0, 1] to logits of width `num_outputs` (k, or 2k for Target
Training) and, with `return_embedding=True`, also returns the penultimate embedding. Dropout and
BatchNorm follow `train`: attacks always call with train=False (inference mode).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from defenses_jax.models.batch_norm import BatchNorm
from defenses_jax.models.conv import Conv
from defenses_jax.models.dropout import Dropout
from defenses_jax.models.pooling import max_pool

# PyTorch-style running-average momentum: the statistics settle within a few hundred steps,
# which matters for the short cpu-scale runs.
BN_MOMENTUM = 0.9


def _outputs(logits, embedding, return_embedding: bool):
  return (logits, embedding) if return_embedding else logits


class TargetTrainingMnistCNN(nn.Module):
  """Table 5, MNIST column: Conv-ReLU 3x3x32, BN, Conv-ReLU 3x3x64, BN, MaxPool 2x2,
  Dropout 0.25, Dense 128 (ReLU), Dropout 0.5, Dense num_outputs. Convolutions are 'VALID'
  as in the Keras MNIST CNN this architecture comes from."""

  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    norm = lambda: BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)
    x = norm()(nn.relu(Conv(32, (3, 3), padding="VALID")(x)))
    x = norm()(nn.relu(Conv(64, (3, 3), padding="VALID")(x)))
    x = max_pool(x, (2, 2), strides=(2, 2))
    x = Dropout(0.25, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    embedding = nn.relu(nn.Dense(128)(x))
    x = Dropout(0.5, deterministic=not train)(embedding)
    return _outputs(nn.Dense(self.num_outputs)(x), embedding, return_embedding)


class TargetTrainingCifarCNN(nn.Module):
  """Table 5, CIFAR-10 column: three blocks of two Conv-ELU 3x3 + BN (32, 64, 128 filters),
  each block followed by MaxPool 2x2 and Dropout 0.2 / 0.3 / 0.4, then Dense num_outputs."""

  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    for features, drop in ((32, 0.2), (64, 0.3), (128, 0.4)):
      for _ in range(2):
        x = nn.elu(Conv(features, (3, 3), padding="SAME")(x))
        x = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
      x = Dropout(drop, deterministic=not train)(x)
    embedding = x.reshape((x.shape[0], -1))
    return _outputs(nn.Dense(self.num_outputs)(embedding), embedding, return_embedding)


class LeNet(nn.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as used by paper 001 for
  (Fashion-)MNIST: Conv 6@5x5 (SAME) - pool - Conv 16@5x5 - pool - Dense 120 - Dense 84 - Dense k.
  It has neither BatchNorm nor dropout, so it is deterministic in training mode."""

  num_outputs: int = 10
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    del train  # No train-time behaviour.
    x = max_pool(self.activation(Conv(6, (5, 5), padding="SAME")(x)), (2, 2), (2, 2))
    x = max_pool(self.activation(Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = self.activation(nn.Dense(120)(x))
    embedding = self.activation(nn.Dense(84)(x))
    return _outputs(nn.Dense(self.num_outputs)(embedding), embedding, return_embedding)


class PlainCNN(nn.Module):
  """Stages of 3x3 Conv-ReLU ('SAME') each followed by MaxPool 2x2, then Dense-ReLU layers and
  Dense num_outputs; dropout (when `dropout` > 0) after every pool and every hidden dense layer.
  Paper 003's Table 1 networks: the oracle (32-32 / 64-64 / 128-128, Dense 512, dropout 0.2)
  and the substitutes (MNIST: 32-32 / 64-64, Dense 200-200; CIFAR-10: 64-64 / 128-128, Dense
  256-256; no dropout). The paper gives neither padding nor the dense layers' activation:
  'SAME' and ReLU are ours. The embedding is the last hidden layer before its dropout (where
  paper 003 grows its second logits head)."""

  num_outputs: int = 10
  conv_stages: tuple = ((32, 32), (64, 64), (128, 128))
  dense: tuple = (512,)
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    drop = lambda z: Dropout(self.dropout, deterministic=not train)(z) if self.dropout else z
    for stage in self.conv_stages:
      for features in stage:
        x = nn.relu(Conv(features, (3, 3), padding="SAME")(x))
      x = drop(max_pool(x, (2, 2), strides=(2, 2)))
    x = x.reshape((x.shape[0], -1))
    embedding = x
    for i, width in enumerate(self.dense):
      embedding = nn.relu(nn.Dense(width)(x if i == 0 else drop(embedding)))
    return _outputs(nn.Dense(self.num_outputs)(drop(embedding)), embedding, return_embedding)
