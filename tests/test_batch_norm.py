"""models/batch_norm.py: the training-mode custom gradient gives nn.BatchNorm's values,
gradients and running statistics, with its variables, and falls back to it elsewhere."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.models import batch_norm
from defenses_jax.models.precision import with_compute_dtype

SHAPES = [(12, 5, 5, 6), (16, 7)]  # Convolution features and dense features.


def _input(shape, seed=0):
  # An offset and a spread far from (0, 1), so the normalisation does something.
  return 3.0 * jax.random.normal(jax.random.key(seed), shape) + 1.5


def _variables(module, x):
  """Initial variables with scale and bias moved off 1 and 0, so their gradients matter."""
  v = module.init(jax.random.key(2), x)
  nudge = lambda a, k: a + 0.3 * jax.random.normal(jax.random.key(k), a.shape)
  params = {"scale": nudge(v["params"]["scale"], 3), "bias": nudge(v["params"]["bias"], 4)}
  stats = {"mean": nudge(v["batch_stats"]["mean"], 5), "var": v["batch_stats"]["var"] + 0.5}
  return {"params": params, "batch_stats": stats}


def _train_apply(cls, x, g, **fields):
  """(output, updated statistics, gradients of <g, output> w.r.t. params and x)."""
  module = cls(use_running_average=False, momentum=0.9, **fields)
  v = _variables(nn.BatchNorm(use_running_average=False, **fields), x)
  f = lambda p, z: module.apply({"params": p, "batch_stats": v["batch_stats"]}, z,
                                mutable=["batch_stats"])
  y, back, updated = jax.vjp(f, v["params"], x, has_aux=True)
  return y, updated, back(g)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_mode_matches_flax(shape):
  x = _input(shape)
  g = jax.random.normal(jax.random.key(1), shape)
  want = jax.jit(lambda z, t: _train_apply(nn.BatchNorm, z, t))(x, g)
  got = jax.jit(lambda z, t: _train_apply(batch_norm.BatchNorm, z, t))(x, g)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               got[1], want[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5),
               got[2], want[2])


def test_the_custom_rule_is_the_one_differentiated_in_training_mode_on_cpu():
  assert "custom_vjp_call" in _forward_jaxpr(batch_norm.BatchNorm(use_running_average=False))


def _forward_jaxpr(module, shape=SHAPES[0]):
  x = _input(shape)
  v = _variables(nn.BatchNorm(use_running_average=False, axis=module.axis), x)
  return str(jax.make_jaxpr(lambda z: module.apply(v, z, mutable=["batch_stats"]))(x))


def test_cotangents_of_the_returned_statistics_reach_the_input():
  """The running-average update sends none, but the rule must handle them: compare with
  autodiff of the same forward computation, every output weighted."""
  x, scale, bias = _input((10, 4, 3)), jnp.array([0.5, -1.2, 2.0]), jnp.array([0.1, 0.0, -3.0])

  def plain(z, s, b):
    mean = z.mean((0, 1))
    var = jnp.maximum(0.0, (z * z).mean((0, 1)) - mean * mean)
    return (z - mean) * (jax.lax.rsqrt(var + 1e-5) * s) + b, mean, var

  custom = lambda z, s, b: batch_norm._normalize_with_batch_statistics(z, s, b, 1e-5)
  keys = jax.random.split(jax.random.key(7), 3)
  cotangents = (jax.random.normal(keys[0], x.shape), jax.random.normal(keys[1], (3,)),
                jax.random.normal(keys[2], (3,)))
  want = jax.vjp(plain, x, scale, bias)[1](cotangents)
  got = jax.vjp(custom, x, scale, bias)[1](cotangents)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_variance_clipped_at_zero_cuts_its_gradient_as_flaxs_does():
  """A channel far from 0 with almost no spread: E[x²] - mean² rounds below 0 and is clipped,
  and autodiff of the clip sends nothing back along the variance; neither must the rule."""
  x = 1000.0 + 1e-3 * jax.random.normal(jax.random.key(0), (8, 3, 3, 4))
  g = jax.random.normal(jax.random.key(1), x.shape)
  want = _train_apply(nn.BatchNorm, x, g)
  got = _train_apply(batch_norm.BatchNorm, x, g)
  assert (np.asarray(batch_norm._statistics(x)[1]) < 0).any()  # The case is reached.
  # Input gradients reach about 1,000 here and the sums are ill-conditioned (float32 rounding
  # of x near 1000): 1 in absolute terms still separates the cut gradient (off by about 9).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1.0),
               got[2], want[2])


def test_variables_are_flaxs_so_checkpoints_load():
  x = _input(SHAPES[0])
  ours = batch_norm.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
  theirs = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
  spec = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype, np.asarray(a).tolist()), tree)
  assert spec(ours) == spec(theirs)


def test_inference_mode_is_flaxs_computation_exactly():
  x = _input(SHAPES[0])
  v = _variables(nn.BatchNorm(use_running_average=True), x)
  np.testing.assert_array_equal(batch_norm.BatchNorm(use_running_average=True).apply(v, x),
                                nn.BatchNorm(use_running_average=True).apply(v, x))


def test_bfloat16_compute_gives_flaxs_dtypes_and_values():
  """Under the mixed-precision wrapper: bfloat16 output, float32 statistics and gradients."""
  x = _input(SHAPES[0])
  g = jax.random.normal(jax.random.key(1), x.shape)
  results = []
  for cls in (nn.BatchNorm, batch_norm.BatchNorm):
    module = with_compute_dtype(cls(use_running_average=False), "bfloat16")
    v = _variables(nn.BatchNorm(use_running_average=False), x)
    f = lambda p, z: module.module.apply(
        {"params": jax.tree.map(lambda a: a.astype(jnp.bfloat16), p),
         "batch_stats": v["batch_stats"]}, z.astype(jnp.bfloat16), mutable=["batch_stats"])
    y, back, updated = jax.vjp(f, v["params"], x, has_aux=True)
    results.append((y, updated, back(g.astype(y.dtype))))
  (want_y, want_stats, want_grads), (y, stats, grads) = results
  assert y.dtype == want_y.dtype == jnp.bfloat16
  assert jax.tree.map(lambda a: a.dtype, stats) == jax.tree.map(lambda a: a.dtype, want_stats)
  assert jax.tree.map(lambda a: a.dtype, grads) == jax.tree.map(lambda a: a.dtype, want_grads)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want_y, np.float32),
                             rtol=1e-2, atol=1e-2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), stats, want_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                       np.asarray(b, np.float32), rtol=3e-2,
                                                       atol=3e-2), grads, want_grads)


def test_second_derivatives_match_flax():
  """A gradient penalty differentiates the rule's backward pass."""
  x = _input(SHAPES[0])

  def penalty_gradient(cls):
    module = cls(use_running_average=False)
    v = _variables(nn.BatchNorm(use_running_average=False), x)
    out = lambda p, z: jnp.sum(jnp.tanh(module.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, z, mutable=["batch_stats"])[0]) ** 2)
    penalty = lambda p: jnp.sum(jax.grad(out, argnums=1)(p, x) ** 2)
    return jax.grad(penalty)(v["params"])

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               penalty_gradient(batch_norm.BatchNorm), penalty_gradient(nn.BatchNorm))


def test_inside_shard_map_the_parameter_gradients_are_summed_over_devices():
  from jax.sharding import Mesh, PartitionSpec
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = _input((4 * len(jax.devices()), 5, 5, 6))

  def grads(cls):
    module = cls(use_running_average=False)
    v = _variables(nn.BatchNorm(use_running_average=False), x)
    local = lambda p, z: jax.grad(lambda q: jnp.sum(jnp.tanh(module.apply(
        {"params": q, "batch_stats": v["batch_stats"]}, z, mutable=["batch_stats"])[0]) ** 2))(p)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(),
                                                             PartitionSpec("data")),
                                 out_specs=PartitionSpec()))(v["params"], x)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads(batch_norm.BatchNorm), grads(nn.BatchNorm))


def test_other_cases_are_flaxs_module():
  """Features on another axis: flax's computation (and its gradient), same results."""
  x = _input((6, 4, 5))
  g = jax.random.normal(jax.random.key(1), x.shape)
  want = _train_apply(nn.BatchNorm, x, g, axis=1)
  got = _train_apply(batch_norm.BatchNorm, x, g, axis=1)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert "custom_vjp_call" not in _forward_jaxpr(
      batch_norm.BatchNorm(use_running_average=False, axis=1), x.shape)
