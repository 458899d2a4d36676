"""models/conv.py: the convolution whose backward pass keeps XLA CPU's fast kernel layout gives
lax.conv_general_dilated's values and gradients, and inside a loop its input gradient is
compiled with the (height, width, in, out) kernel layout that nn.Conv's is not."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from defenses_jax.models import conv as conv_lib

CASES = [  # (features, kernel, strides, padding, input size): every form the models use.
    (8, (3, 3), (1, 1), "VALID", 9),
    (8, (3, 3), (1, 1), "SAME", 8),
    (6, (5, 5), (1, 1), "SAME", 7),
    (8, (3, 3), (2, 2), "SAME", 9),  # ResNet's strided block, odd input.
    (8, (1, 1), (2, 2), "SAME", 8),  # ResNet's projection shortcut (flax's default padding).
    (4, (3, 3), (1, 1), ((2, 0), (1, 1)), 6),  # Explicit, asymmetric padding.
]


def _pair(features, kernel, strides, padding, size):
  x = jax.random.uniform(jax.random.key(0), (3, size, size, 5))
  modules = [make(features, kernel, strides, padding=padding)
             for make in (nn.Conv, conv_lib.Conv)]
  params = modules[0].init(jax.random.key(1), x)
  return x, params, modules


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_are_those_of_the_plain_convolution(case):
  x, params, (plain, ours) = _pair(*case)
  # A loss with curvature, so that second derivatives depend on the input.
  loss = lambda m: lambda p, z: jnp.sum(jnp.tanh(m.apply(p, z)) ** 2)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), atol=1e-6)
  for argnum in (0, 1):
    want = jax.grad(loss(plain), argnum)(params, x)
    got = jax.grad(loss(ours), argnum)(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, want)
  # Reverse over reverse (a gradient penalty's derivative): the backward pass is differentiable.
  penalty = lambda m: lambda p, z: jnp.sum(jax.grad(loss(m), 1)(p, z) ** 2)
  want, got = (jax.grad(penalty(m))(params, x) for m in (plain, ours))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)


def _kernel_labels_in_a_loop(module, params, x):
  """The kernel dimension labels of every convolution XLA compiles for 3 gradient steps on the
  input inside a fori_loop."""
  step = lambda z: z + 1e-2 * jax.grad(lambda q: jnp.sum(module.apply(params, q) ** 2))(z)
  loop = jax.jit(lambda z: lax.fori_loop(0, 3, lambda i, q: step(q), z))
  hlo = loop.lower(x).compile().as_text()
  return re.findall(r"convolution\(.*?dim_labels=\w+_(\w+)->", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is XLA CPU's")
def test_inside_a_loop_the_input_gradient_keeps_the_fast_kernel_layout():
  x, params, (plain, ours) = _pair(8, (3, 3), (1, 1), "VALID", 9)
  x = jnp.concatenate([x, x], -1)  # Two convolutions: the first's input gradient is used.
  two = lambda make: nn.Sequential([make(8, (3, 3), padding="VALID"),
                                    make(4, (3, 3), padding="VALID")])
  params = two(nn.Conv).init(jax.random.key(1), x)
  assert "01oi" in _kernel_labels_in_a_loop(two(nn.Conv), params, x)  # What this fixes.
  labels = _kernel_labels_in_a_loop(two(conv_lib.Conv), params, x)
  assert labels and set(labels) == {"01io"}, labels


def test_other_convolutions_fall_back_to_lax():
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 4))
  for kwargs in ({"kernel_dilation": (2, 2)}, {"feature_group_count": 2}):
    plain, ours = (make(4, (3, 3), **kwargs) for make in (nn.Conv, conv_lib.Conv))
    params = plain.init(jax.random.key(1), x)
    np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), atol=1e-6)
    g = [jax.grad(lambda z: jnp.sum(m.apply(params, z) ** 2))(x) for m in (plain, ours)]
    np.testing.assert_allclose(g[1], g[0], atol=1e-5)
