"""Convolutions whose gradients run on XLA CPU's fast (Eigen) convolution, in and out of loops.

Input gradient. The gradient of a convolution with respect to its input is a convolution with
the kernel flipped and its feature axes swapped. XLA CPU runs a convolution on its Eigen library
call only when the kernel is laid out (height, width, in, out); it moves other kernels into
that layout before the call, but only for convolutions of the top-level computation. Inside a
loop (every iterative attack, the attack inside an adversarial training step) the swapped
kernel is left as it is and the convolution is emitted as plain loops, which made PGD-40 on
paper 000's MNIST CNN 1.5x slower in one compiled loop on 2 CPU cores (`python -m
benchmarks.conv_in_loops`, docs/benchmarks.md). Our backward pass swaps the kernel's feature
axes itself and convolves with the swapped kernel labelled (height, width, out, in): the
transposed convolution then gets its kernel in Eigen's layout.

Weight gradient. The gradient with respect to the kernel is a convolution of the input (images
as features, channels as batch) with the output gradient as its kernel: one contraction over
every image and output pixel at once (73,728 terms for the CNN's second layer at batch 128).
Eigen gathers that contraction's operand from image patches and, at that length, ran 3-4x
slower than the matmul it amounts to (54-63 ms against 15-18 ms on 2 cores). We split the
batch into chunks of about `_WEIGHT_GRADIENT_CHUNK_FLOATS` values of input and output gradient
(1 MiB: the fastest on this machine across paper 000's CNN and ResNet-20's layers, measured in
benchmarks/training_kernels.py) and add the chunks' weight gradients in a scan. Each
chunk's operands are transposed to the standard layouts explicitly, so the convolution stays
on Eigen inside the scan's loop, which XLA's own rule does not (20-100x slower there).

`Conv` is flax's nn.Conv with its convolution replaced on CPU by this one: same parameters,
same outputs, same gradients up to float summation order (tests/test_conv.py). It gives up
forward-mode differentiation (jax.jvp) through the convolution, which nothing here uses. Other
backends, and convolutions outside this case (dilations, feature groups, other layouts), use
lax.conv_general_dilated unchanged.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.models.replicated_gradient import sum_like_autodiff

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
# The kernel stored (height, width, out, in): the input gradient's kernel is then (.., in, out)
# for the transposed convolution, Eigen's layout.
_NHWC_SWAPPED = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(2, 3, 0, 1),
                                         out_spec=(0, 3, 1, 2))
# Values of input plus output gradient per weight-gradient chunk (see the module docstring).
_WEIGHT_GRADIENT_CHUNK_FLOATS = 2**18


def _conv(x, w, strides, padding, precision, numbers=_NHWC):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _eigen_friendly_conv(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision)


def _forward(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision), (x, w)


def _backward(strides, padding, precision, residuals, g):
  x, w = residuals
  swapped = jnp.swapaxes(w, 2, 3)
  _, input_vjp = jax.vjp(lambda z: _conv(z, swapped, strides, padding, precision,
                                         _NHWC_SWAPPED), x)
  weight_gradient = _chunked_weight_gradient(x, g, w.shape, strides, padding, precision)
  return input_vjp(g)[0], sum_like_autodiff(w, weight_gradient.astype(w.dtype), x)


def _weight_gradient(x, g, kernel_shape, strides, padding, precision):
  """d(sum(g * conv(x, w)))/dw for a chunk of images, as a convolution in standard layouts:
  the input (channels, height, width, images) against the output gradient (height, width,
  images, features) dilated by the strides."""
  kernel_size = kernel_shape[:2]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel_size, strides, padding)
  # With strides, the last window may stop short of the padded input's end: the rows and
  # columns no kernel tap reaches are cut from the high padding, so that the output is the
  # kernel's size and nothing is computed for them.
  padding = [(low, high - (size + low + high - k) % s) for (low, high), size, k, s
             in zip(padding, x.shape[1:3], kernel_size, strides)]
  gradient = lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), padding,
      rhs_dilation=strides, dimension_numbers=_NHWC, precision=precision,
      preferred_element_type=_accumulation_dtype(g.dtype))
  return jnp.transpose(gradient, (1, 2, 0, 3))


def _accumulation_dtype(dtype):
  """At least float32, so that a bfloat16 model's chunks add up without bfloat16 rounding."""
  return jnp.promote_types(dtype, jnp.float32)


def _chunked_weight_gradient(x, g, kernel_shape, strides, padding, precision):
  n = x.shape[0]
  per_image = math.prod(x.shape[1:]) + math.prod(g.shape[1:])
  size = max(1, min(n, _WEIGHT_GRADIENT_CHUNK_FLOATS // per_image))
  # Chunks of equal size where a divisor of the batch is near: one convolution fewer.
  size = next((d for d in range(size, (size + 1) // 2 - 1, -1) if n % d == 0), size)
  chunks, rest = divmod(n, size)
  one = lambda xc, gc: _weight_gradient(xc, gc, kernel_shape, strides, padding, precision)
  # The first chunk starts the sum: a zero start would not vary over shard_map's data axis as
  # the chunks' sums do, and scan wants its carry's type unchanged.
  total = one(x[:size], g[:size])
  if chunks > 1:
    split = lambda a: a[size:chunks * size].reshape(chunks - 1, size, *a.shape[1:])
    total, _ = lax.scan(lambda acc, xg: (acc + one(*xg), None), total, (split(x), split(g)))
  if rest:
    total = total + one(x[chunks * size:], g[chunks * size:])
  return total


_eigen_friendly_conv.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """lax.conv_general_dilated's signature (as flax calls it); see the module docstring."""
  plain = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers,
                            feature_group_count=feature_group_count, precision=precision,
                            **kwargs)
  undilated = all(d == 1 for d in (lhs_dilation or ())) and all(
      d == 1 for d in (rhs_dilation or ()))
  if (jax.default_backend() != "cpu" or kwargs or feature_group_count != 1 or not undilated
      or lhs.ndim != 4 or dimension_numbers != _NHWC):
    return plain()
  if not isinstance(padding, str):
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _eigen_friendly_conv(lhs, rhs, tuple(int(s) for s in window_strides), padding,
                              precision)


# nn.Conv with the convolution above: same parameter names and shapes, so checkpoints load.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
