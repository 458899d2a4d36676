"""Dropout that draws 8 or 16 random bits per value instead of 32.

flax's nn.Dropout draws a 32-bit threefry word per activation (jax.random.bernoulli through a
float32 uniform). On XLA CPU threefry is the expensive part: for the (128, 12, 12, 64) dropout of
paper 000's MNIST CNN it took about 6 ms of a training step on 2 cores, where the same mask from
a quarter of the words took under 2 ms (benchmarks/training_kernels.py). A keep decision needs
far fewer than 32 bits: each 32-bit word is split into four 8-bit values when the rate is a
multiple of 1/256 (0.25 and 0.5, every rate this project's models use), else into two 16-bit
values. A value is dropped when it is below round(rate * 2^bits), so the probability of keeping
is exactly 1 - that / 2^bits: the nominal one for 8-bit rates, within 2^-17 of it otherwise.
Kept values are divided by that probability, so the expected output is the input (in bfloat16
the divisor is rounded, as flax's 1 / (1 - rate) is).

`Dropout` has nn.Dropout's fields, call and rng collection ('dropout'); only the random stream
differs (same seed, same masks; a different mask from flax's for the same key, so a training
run resumed across the change to this module mixes the two streams: the suites' provenance.json
records each part's commit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax


class Dropout(nn.Dropout):
  """nn.Dropout with masks from 8 or 16 bits per value; see the module docstring."""

  @nn.compact
  def __call__(self, inputs, deterministic=None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # flax's edge case: zeros, with no 0 / 0 in the gradient.
      return jnp.zeros_like(inputs)
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    keep, keep_probability = keep_mask(rng, self.rate, tuple(shape))
    if keep_probability == 0.0:  # A rate within 2^-17 of 1.
      return jnp.zeros_like(inputs)
    keep = jnp.broadcast_to(keep, inputs.shape)
    return lax.select(keep, inputs / jnp.asarray(keep_probability, inputs.dtype),
                      jnp.zeros_like(inputs))


def keep_mask(key, rate: float, shape: tuple) -> tuple[jax.Array, float]:
  """(boolean mask of `shape`, each True with probability p; p), p = 1 - rate up to 2^-17."""
  if not 0.0 < rate < 1.0:
    raise ValueError(f"a dropout rate is in (0, 1); got {rate}.")
  bits = 8 if float(rate * 256).is_integer() else 16
  unsigned = jnp.uint8 if bits == 8 else jnp.uint16
  threshold = round(rate * 2**bits)
  per_word = 32 // bits
  size = 1
  for d in shape:
    size *= d
  words = jax.random.bits(key, (-(-size // per_word),), jnp.uint32)
  values = lax.bitcast_convert_type(words, unsigned).reshape(-1)[:size].reshape(shape)
  return values >= threshold, 1.0 - threshold / 2**bits
