"""BatchNorm whose training-mode gradient XLA CPU runs in two passes over the activations.

In training mode flax's nn.BatchNorm computes the batch mean and mean square (in float32) and
normalises; autodiff of those steps gives a backward pass of about five elementwise and
reduction passes over the activations, each a full read of a (128, 24, 24, 64) tensor on
paper 000's MNIST CNN. Together with the forward pass the two BatchNorms took about a quarter
of that network's training step on 2 CPU cores (benchmarks/training_kernels.py).

The gradient has a closed form. With x̂ = (x - μ) r, r = 1/sqrt(σ² + ε), y = s x̂ + b and g the
output gradient, m values per feature:

    db = Σ g,    ds = Σ g x̂,    dx = s r (g - db/m - x̂ ds/m)

(plus μ̄/m + 2 σ̄² (x - μ)/m for cotangents μ̄, σ̄² of the returned statistics, which a
running-average update does not send but a custom rule must accept). The custom rule
computes both sums in one pass and dx in a second.

`BatchNorm` keeps nn.BatchNorm's module name, parameters (`scale`, `bias`), statistics
(`batch_stats`: `mean`, `var`), initialisers, momentum update, float32 reductions and output
dtype, so checkpoints load unchanged and results equal flax's up to float summation order
(tests/test_batch_norm.py). The custom rule is used on CPU in training mode for features on the
last axis with no mask and no cross-device axis; everything else (inference mode, other
backends, initialisation) is flax's own computation. Like models/conv.py it gives up
forward-mode differentiation of that case.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.models.replicated_gradient import sum_like_autodiff


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm with the CPU training-mode gradient above; the same fields and call."""

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None):
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    fast = (not running and mask is None and self.axis_name is None
            and self.axis in (-1, x.ndim - 1) and self.use_bias and self.use_scale
            and self.use_fast_variance and self.force_float32_reductions
            and self.dtype is None and jax.default_backend() == "cpu"
            and not self.is_initializing())
    if not fast:
      return super().__call__(x, use_running_average, mask=mask)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", self.scale_init, features, self.param_dtype)
    bias = self.param("bias", self.bias_init, features, self.param_dtype)
    y, mean, var = _normalize_with_batch_statistics(x, scale, bias, self.epsilon)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def _statistics(x):
  """Per-feature mean and E[x²] - mean², in at least float32 (flax's fast variance); the
  variance is that clipped at 0."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x.ndim - 1))
  mean, mean_square = x.mean(axes), (x * x).mean(axes)
  return mean, mean_square - mean * mean


def _normalize(x, mean, var, scale, bias, epsilon):
  """flax's _normalize, in its order of operations; the result in the dtype of x, scale, bias."""
  y = x - mean
  y = y * (lax.rsqrt(var + epsilon) * scale)
  return (y + bias).astype(jnp.result_type(x, scale, bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_with_batch_statistics(x, scale, bias, epsilon):
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  """((y, mean, var), residuals): the primal outputs and what the backward pass needs."""
  mean, unclipped = _statistics(x)
  var = jnp.maximum(0.0, unclipped)
  return (_normalize(x, mean, var, scale, bias, epsilon), mean, var), (x, mean, unclipped,
                                                                       scale, bias)


def _backward(epsilon, residuals, cotangents):
  x, mean, unclipped, scale, bias = residuals
  g, mean_bar, var_bar = cotangents
  var = jnp.maximum(0.0, unclipped)
  # Where rounding made E[x²] - mean² negative (a channel far from 0 with almost no spread) the
  # clip cuts the variance's dependence on x, as autodiff of flax's jnp.maximum does (half of
  # it at exactly 0).
  live = jnp.where(unclipped > 0, 1.0, jnp.where(unclipped == 0, 0.5, 0.0)).astype(mean.dtype)
  wide = mean.dtype
  axes = tuple(range(x.ndim - 1))
  m = x.size // x.shape[-1]
  inverse_std = lax.rsqrt(var + epsilon)
  centred = x.astype(wide) - mean
  g = g.astype(wide)
  # Both sums read g and x once, in one fusion; dx reads them once more.
  bias_gradient, centred_sum = g.sum(axes), (g * centred).sum(axes)
  scale_gradient = centred_sum * inverse_std
  gain = scale.astype(wide) * inverse_std
  dx = gain * (g - bias_gradient / m
                - centred * (live * inverse_std * inverse_std * centred_sum / m))
  dx = dx + mean_bar / m + centred * (2 * live * var_bar / m)
  return (dx.astype(x.dtype),
          sum_like_autodiff(scale, scale_gradient.astype(scale.dtype), x),
          sum_like_autodiff(bias, bias_gradient.astype(bias.dtype), x))


_normalize_with_batch_statistics.defvjp(_forward, _backward)
