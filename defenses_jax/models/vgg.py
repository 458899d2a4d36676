"""The small VGG-style network of paper 004 (Appendix A.1), used there as the frozen f_b."""

from __future__ import annotations

import flax.linen as nn

from defenses_jax.models.cnn import BN_MOMENTUM, _outputs
from defenses_jax.models.batch_norm import BatchNorm
from defenses_jax.models.conv import Conv
from defenses_jax.models.dropout import Dropout
from defenses_jax.models.pooling import max_pool

# 'M' is a 2x2 max-pool; integers are 3x3 conv + BatchNorm + ReLU with that many filters.
SMALL_VGG_LAYERS = (64, "M", 128, "M", 64, 64, "M", 128, 128, "M")


class SmallVGG(nn.Module):
  """conv64-M-conv128-M-conv64-conv64-M-conv128-conv128-M, then
  Dropout-Dense512-ReLU-Dropout-Dense512-ReLU-Dense(num_outputs)."""

  num_outputs: int = 10
  dropout_rate: float = 0.5
  # Every convolution's filters and both dense layers' units times this (paper 004's cpu
  # scale runs a quarter-width f_b: g differentiates it 13 times per training image).
  width: float = 1.0

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    if not self.width > 0:
      raise ValueError(f"small_vgg: width must be > 0, got {self.width}.")
    scaled = lambda units: max(1, round(units * self.width))
    for layer in SMALL_VGG_LAYERS:
      if layer == "M":
        x = max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = Conv(scaled(layer), (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM)(x))
    x = x.reshape((x.shape[0], -1))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(scaled(512))(x))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    embedding = nn.relu(nn.Dense(scaled(512))(x))
    return _outputs(nn.Dense(self.num_outputs)(embedding), embedding, return_embedding)
