"""Max pooling whose gradient XLA CPU runs as one fused elementwise pass.

flax's nn.max_pool is lax.reduce_window, and its gradient is XLA's select-and-scatter, which
XLA CPU emits as a scalar loop over every window: on paper 000's MNIST CNN at batch 128 the
2x2 pool's gradient took 53 ms of a 200 ms training step on 2 CPU cores, against 2 ms for the
pool itself (benchmarks/training_kernels.py measures both). It is also in every gradient
step of every attack on the CNNs, LeNet and VGG.

For the pools these models use (windows that tile the image: strides equal to the window,
'VALID' padding) `max_pool` reshapes the image into its windows and takes the maximum; its
backward pass sends each window's output gradient to the window's first maximum in row-major
order, the element select-and-scatter picks, with one comparison per window position. Values
and gradients are nn.max_pool's exactly for finite inputs, ties included
(tests/test_pooling.py). A window holding a NaN pools to NaN as flax's does, but its gradient
(meaningless then) goes nowhere, where select-and-scatter hands it to one element. Like the
convolution (models/conv.py) it gives up forward-mode differentiation. Other pools and other
backends use nn.max_pool unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(x, window_shape, strides=None, padding="VALID"):
  """nn.max_pool's signature and results; see the module docstring."""
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides else (1,) * len(window_shape)  # flax's default.
  tiling = (strides == window_shape and padding == "VALID" and x.ndim == 4
            and len(window_shape) == 2 and jax.default_backend() == "cpu")
  if not tiling:
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
  with jax.named_scope("max_pool"):  # Names its ops in profiles.
    return _tiled_max_pool(x, window_shape)


def _windows(x, window_shape):
  """(n, rows, window rows, columns, window columns, c): the tiles of x, the edges that fill
  no whole window (which a 'VALID' pool drops) left out."""
  n, height, width, c = x.shape
  a, b = window_shape
  rows, columns = height // a, width // b
  return x[:, :rows * a, :columns * b].reshape(n, rows, a, columns, b, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x, window_shape):
  return _windows(x, window_shape).max(axis=(2, 4))


def _forward(x, window_shape):
  pooled = _windows(x, window_shape).max(axis=(2, 4))
  return pooled, (x, pooled)


def _backward(window_shape, residuals, g):
  x, pooled = residuals
  windows = _windows(x, window_shape)
  a, b = window_shape
  # Each window position's row-major index; a window's gradient goes to its first maximum.
  position = (jnp.arange(a)[:, None, None] * b + jnp.arange(b)[None, None, :]).reshape(
      1, 1, a, 1, b, 1)
  at_max = windows == pooled[:, :, None, :, None, :]
  first = jnp.min(jnp.where(at_max, position, a * b), axis=(2, 4), keepdims=True)
  tiled = jnp.where(position == first, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  tiled = tiled.reshape(x.shape[0], pooled.shape[1] * a, pooled.shape[2] * b, x.shape[3])
  # Rows and columns beyond the last whole window get no gradient.
  return (jnp.pad(tiled, ((0, 0), (0, x.shape[1] - tiled.shape[1]),
                          (0, x.shape[2] - tiled.shape[2]), (0, 0))),)


_tiled_max_pool.defvjp(_forward, _backward)
