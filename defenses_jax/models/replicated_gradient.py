"""The gradient a custom rule returns for a parameter that is the same on every device.

Inside shard_map a parameter replicated over the devices and used on data that differs has a
gradient that differs per device; autodiff sums it over those devices (the transpose of the
implicit broadcast from "same everywhere" to "varying"), and a custom rule must return the
parameter's own type. `sum_like_autodiff` sums the same way: it pulls the gradient back through
the parameter times ones that vary as the data does. Outside shard_map it is the identity.
Used by the custom rules of models/conv.py and models/batch_norm.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sum_like_autodiff(parameter, gradient, data):
  """`gradient` (of `parameter`'s shape) as autodiff would return it for `parameter` used on
  `data`: summed over the devices `data` varies over, if any."""
  _, back = jax.vjp(lambda p: p * jnp.ones_like(data, dtype=p.dtype, shape=p.shape), parameter)
  return back(gradient)[0]
