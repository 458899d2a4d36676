"""Per-example state that lives across epochs (SIM-Adv's adversarial perturbations), indexed by
the examples' dataset positions and split over the devices like the data.

Inside the data-parallel step each device holds one block of rows (rows d*R .. (d+1)*R - 1 of
the buffer) and one shard of the batch, whose examples may live in any block. Reading: every
device contributes the rows it owns for the whole global batch (zeros elsewhere) and a
reduce-scatter hands each device the rows of its own shard. Writing: the batch's new rows are
all-gathered and each device keeps those it owns. Traffic per step is proportional to the batch,
never to the dataset, and no device ever holds the whole buffer. On one device both are plain
indexing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks.norms import per_example
from defenses_jax.parallel import DATA_AXIS


def _owned(block: jax.Array, global_index: jax.Array):
  rows = block.shape[0]
  local = global_index - lax.axis_index(DATA_AXIS) * rows
  return local, (local >= 0) & (local < rows)


def gather_rows(block: jax.Array, index: jax.Array) -> jax.Array:
  """Rows `index` (this device's batch shard) of the buffer whose local block is `block`."""
  global_index = lax.all_gather(index, DATA_AXIS, tiled=True)
  local, mine = _owned(block, global_index)
  picked = jnp.where(per_example(mine, block), block[jnp.clip(local, 0, block.shape[0] - 1)], 0)
  return lax.psum_scatter(picked, DATA_AXIS, scatter_dimension=0, tiled=True)


def scatter_rows(block: jax.Array, index: jax.Array, values: jax.Array) -> jax.Array:
  """The local block with rows `index` (this device's batch shard) set to `values`."""
  global_index = lax.all_gather(index, DATA_AXIS, tiled=True)
  global_values = lax.all_gather(values, DATA_AXIS, tiled=True)
  local, mine = _owned(block, global_index)
  # Rows owned elsewhere point past the end of the block and are dropped.
  return block.at[jnp.where(mine, local, block.shape[0])].set(global_values, mode="drop")
