"""Checksums of a train state's arrays, computed on the devices, to verify a restored checkpoint.

A flipped bit in a saved array (a bad disk, a copy cut short and patched) restores without
error and shows up, if ever, as NaN or 1e38 optimizer moments many steps later. Each leaf's
checksum is the position-weighted sum of its raw bits (uint32 arithmetic, wrapping), so any
single changed element, and any two swapped elements, change it.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
from jax import lax

_MODULUS = 65521  # Position weights 1 .. 65521 (a prime), so swaps within a leaf are seen.


def _leaf_checksum(x):
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize == 4:
    bits = lax.bitcast_convert_type(x, jnp.uint32)
  elif x.dtype.itemsize == 2:
    bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  elif x.dtype.itemsize == 1:
    bits = lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  else:
    raise TypeError(f"no checksum for dtype {x.dtype}")
  weights = (jnp.arange(x.size, dtype=jnp.uint32) % _MODULUS) + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.uint32(x.size)


_checksums = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def state_checksums(state) -> dict[str, int]:
  """{leaf path: uint32 checksum} of every array in `state` (a pytree of jax/numpy arrays)."""
  sums = jax.device_get(_checksums(state))
  return {jax.tree_util.keystr(path): int(value)
          for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]}


def fingerprint(tree) -> str:
  """A short hex digest of every array in `tree` (through state_checksums): what identifies a
  trained model in the caches computed from it, whatever its checkpoint step is called."""
  text = json.dumps(state_checksums(tree), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]
