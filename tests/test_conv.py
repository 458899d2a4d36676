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
    (4, (3, 2), (2, 3), ((1, -1), (2, 0)), 9),  # Oblong kernel and strides, negative padding.
    (4, (2, 2), (3, 3), "VALID", 8),  # Strides larger than the kernel.
]


def _pair(features, kernel, strides, padding, size):
  x = jax.random.uniform(jax.random.key(0), (3, size, size, 5))
  modules = [make(features, kernel, strides, padding=padding)
             for make in (nn.Conv, conv_lib.Conv)]
  params = modules[0].init(jax.random.key(1), x)
  return x, params, modules


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunked", [False, True])
def test_values_and_gradients_are_those_of_the_plain_convolution(case, chunked, monkeypatch):
  """chunked: one image per weight-gradient chunk, so the second derivatives go through the
  scan."""
  if chunked:
    monkeypatch.setattr(conv_lib, "_WEIGHT_GRADIENT_CHUNK_FLOATS", 1)
  x, params, (plain, ours) = _pair(*case)
  # A loss with curvature, so that second derivatives depend on the input.
  loss = lambda m: lambda p, z: jnp.sum(jnp.tanh(m.apply(p, z)) ** 2)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), atol=1e-6)
  for argnum in (0, 1):
    want = jax.grad(loss(plain), argnum)(params, x)
    got = jax.grad(loss(ours), argnum)(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got,
                 want)
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


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("images_per_chunk", [2, 3])
def test_the_weight_gradient_added_up_over_chunks_is_the_whole_batchs(case, images_per_chunk,
                                                                       monkeypatch):
  """7 images, chunks of up to 2 (7 chunks of 1 image: 1 divides 7) or 3 (2 chunks in the scan,
  1 image left over): every image counts once, whatever the strides and padding."""
  features, kernel, strides, padding, size = case
  x = jax.random.uniform(jax.random.key(0), (7, size, size, 5))
  plain, ours = (make(features, kernel, strides, padding=padding)
                 for make in (nn.Conv, conv_lib.Conv))
  params = plain.init(jax.random.key(1), x)
  out = plain.apply(params, x)
  per_image = (x.size + out.size) // 7
  monkeypatch.setattr(conv_lib, "_WEIGHT_GRADIENT_CHUNK_FLOATS", per_image * images_per_chunk)
  loss = lambda m: lambda p: jnp.sum(jnp.tanh(m.apply(p, x)) ** 2)
  want = jax.grad(loss(plain))(params)["params"]["kernel"]
  got = jax.jit(jax.grad(loss(ours)))(params)["params"]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_weight_gradient_is_added_up_in_float32(monkeypatch):
  """64 chunks of one image each: added in bfloat16 the sum drifts by many bfloat16 steps;
  added in float32 it is the float32 gradient of the same bfloat16 values, rounded once."""
  x = jax.random.uniform(jax.random.key(0), (64, 6, 6, 4)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 8)).astype(jnp.bfloat16)
  g = jax.random.uniform(jax.random.key(2), (64, 4, 4, 8)).astype(jnp.bfloat16)
  monkeypatch.setattr(conv_lib, "_WEIGHT_GRADIENT_CHUNK_FLOATS", 1)
  ours = lambda k: conv_lib._eigen_friendly_conv(x, k, (1, 1), "VALID", None)
  got = jax.vjp(ours, w)[1](g)[0].astype(jnp.float32)
  exact = lambda k: lax.conv_general_dilated(x.astype(jnp.float32), k, (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = jax.vjp(exact, w.astype(jnp.float32))[1](g.astype(jnp.float32))[0]
  # One bfloat16 rounding of the exact sum: relative error at most 2^-8.
  np.testing.assert_array_less(np.abs(got - want), np.abs(want) * 2.0**-8 + 1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is XLA CPU's")
def test_inside_a_loop_the_weight_gradient_keeps_the_standard_layouts(monkeypatch):
  """Training steps in a fori_loop, the weight gradient in chunks (a scan inside that loop):
  every convolution XLA compiles has Eigen's (batch, rows, columns, features) input and
  (rows, columns, in, out) kernel labels."""
  monkeypatch.setattr(conv_lib, "_WEIGHT_GRADIENT_CHUNK_FLOATS", 2 * (9 * 9 * 5 + 7 * 7 * 8))
  x = jax.random.uniform(jax.random.key(0), (6, 9, 9, 5))
  model = conv_lib.Conv(8, (3, 3), padding="VALID")
  params = model.init(jax.random.key(1), x)
  step = lambda p: jax.tree.map(lambda a, b: a - 1e-2 * b, p, jax.grad(
      lambda q: jnp.sum(model.apply(q, x) ** 2))(p))
  hlo = jax.jit(lambda p: lax.fori_loop(0, 3, lambda i, q: step(q), p)).lower(
      params).compile().as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=(\S+?)[,}\s]", hlo)
  assert len(labels) >= 2 and set(labels) == {"b01f_01io->b01f"}, labels


def test_inside_shard_map_the_weight_gradient_is_summed_over_devices_as_autodiff_does(
    monkeypatch):
  """Parameters the same on every device, images split over the data axis: the kernel's
  gradient comes back with the parameters' type (summed over devices, as jax.grad of nn.Conv
  gives it), through the chunks' scan."""
  from jax.sharding import Mesh, PartitionSpec
  monkeypatch.setattr(conv_lib, "_WEIGHT_GRADIENT_CHUNK_FLOATS", 2 * (9 * 9 * 5 + 7 * 7 * 8))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = jax.random.uniform(jax.random.key(0), (6 * len(jax.devices()), 9, 9, 5))
  plain, ours = (make(8, (3, 3), padding="VALID") for make in (nn.Conv, conv_lib.Conv))
  params = plain.init(jax.random.key(1), x)

  def grads(module):
    local = lambda p, z: jax.grad(lambda q: jnp.sum(jnp.tanh(module.apply(q, z)) ** 2))(p)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(),
                                                             PartitionSpec("data")),
                                 out_specs=PartitionSpec()))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads(ours), grads(plain))
