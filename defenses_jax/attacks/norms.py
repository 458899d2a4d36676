"""Norm balls around the clean input, and the [0, 1] box every adversarial example lies in."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")
_TINY = 1e-12


def check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}.")


def per_example(v, like):
  """Reshapes a per-example vector (B,) to broadcast against a batch shaped like `like`."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def varying_like(carry, x):
  """Loop carries built from constants, marked as varying over the same devices as the batch x.

  Inside a data-parallel step (shard_map with its varying-axes typing, as in a defense's train
  step) a per-example constant such as jnp.zeros(batch) is "replicated" while the loop body
  turns it into a function of the device's shard; the loop would then reject its own carry.
  Outside shard_map this is the identity. Only per-example leaves (leading axis = batch) change.
  """
  return jax.tree.map(
      lambda v: match_varying(v, x) if jnp.ndim(v) >= 1 and jnp.shape(v)[0] == x.shape[0] else v,
      carry)


def match_varying(v, like):
  """v, marked as varying over every manual mesh axis `like` varies over (see varying_like)."""
  missing = tuple(a for a in _varying_axes(like) if a not in _varying_axes(v))
  return jax.lax.pcast(v, missing, to="varying") if missing else v


def _varying_axes(v) -> frozenset:
  """The manual mesh axes v varies over (`.vma` before JAX 0.9, `.mat.varying` in 0.10)."""
  aval = jax.typeof(v)
  if hasattr(aval, "vma"):
    return aval.vma
  return getattr(getattr(aval, "mat", None), "varying", frozenset())


def _per_example(v, reduce):
  return reduce(v.reshape(v.shape[0], -1), axis=-1).reshape((-1,) + (1,) * (v.ndim - 1))


def l2_norm(v):
  """Per-example L2 norm, broadcastable against v."""
  return jnp.sqrt(_per_example(jnp.square(v), jnp.sum))


def distances(x_adv, x) -> dict:
  """Per example: L2 and L-inf norms of the perturbation and L0, the number of features (each
  channel value) it changes."""
  d = (x_adv - x).reshape(x.shape[0], -1)
  return {"l2": jnp.sqrt(jnp.sum(d * d, -1)), "linf": jnp.max(jnp.abs(d), -1),
          "l0": jnp.sum(d != 0, -1)}


def project(x_adv, x, eps, norm: str):
  """The closest point to x_adv in the eps-ball around x, intersected with [0, 1]. Clipping to
  the box after the ball projection keeps the point in both (the box clip only shrinks |delta|)."""
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), _TINY))
  return jnp.clip(x + delta, 0.0, 1.0)


def steepest_ascent(grad, norm: str):
  """The unit-norm direction of steepest ascent: sign(g) for L-inf, g/||g||_2 for L2."""
  if norm == "linf":
    return jnp.sign(grad)
  return grad / jnp.maximum(l2_norm(grad), _TINY)


def random_point_in_ball(key, x, eps, norm: str):
  """Uniform in the L-inf ball, or uniform in the L2 ball (gaussian direction, radius u^(1/d))."""
  if norm == "linf":
    return x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, x.dtype)
  direction = direction / jnp.maximum(l2_norm(direction), _TINY)
  dim = x[0].size
  radius = eps * jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1)) ** (1.0 / dim)
  return x + radius * direction
