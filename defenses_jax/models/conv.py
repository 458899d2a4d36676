"""Convolutions whose input gradient stays on XLA CPU's fast (Eigen) convolution inside loops.

The gradient of a convolution with respect to its input is a convolution with the kernel
flipped and its feature axes swapped. XLA CPU runs a convolution on its Eigen library call only
when the kernel is laid out (height, width, in, out); it moves other kernels into that layout
before the call, but only for convolutions of the top-level computation. Inside a loop (every
iterative attack, the attack inside an adversarial training step) the swapped kernel is left
as it is and the convolution is emitted as plain loops, which made PGD-40 on paper 000's MNIST
CNN 1.5x slower in one compiled loop on 2 CPU cores (`python -m benchmarks.conv_in_loops`,
docs/benchmarks.md).

`Conv` is flax's nn.Conv with its convolution replaced on CPU by one whose backward pass swaps
the kernel's feature axes itself and convolves with the swapped kernel labelled (height, width,
out, in): the input gradient's transposed convolution then gets its kernel in Eigen's layout,
in or out of a loop (tests/test_conv.py reads the labels XLA compiles; the benchmark shows
the speed). The values are lax.conv_general_dilated's: same parameters, same outputs, same
gradients up to float summation order. It gives up forward-mode differentiation (jax.jvp) through the convolution, which
nothing here uses. Other backends, and convolutions outside this case (dilations, feature
groups, other layouts), use lax.conv_general_dilated unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
# The kernel stored (height, width, out, in): the input gradient's kernel is then (.., in, out)
# for the transposed convolution, Eigen's layout.
_NHWC_SWAPPED = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(2, 3, 0, 1),
                                         out_spec=(0, 3, 1, 2))


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
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, strides, padding, precision), w)
  return input_vjp(g)[0], kernel_vjp(g)[0]


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
