"""Running a compiled function over chosen images in batches of one fixed shape."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def in_batches(fn: Callable, x, y, rows: np.ndarray, key, batch_size: int):
  """fn(x_batch, y_batch, key) on the images `rows`, in batches of `batch_size`; the last one
  padded with copies of its first image to the next power of two (at most `batch_size`), its
  extra rows dropped. A cascade's later attacks see a few images: padding them to a full batch
  would cost a full batch, and powers of two keep the compiled shapes few. Returns each output
  concatenated over `rows`."""
  outputs = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
    padded = np.concatenate([chunk, np.full(size - len(chunk), chunk[0])])
    out = fn(jnp.asarray(x[padded]), jnp.asarray(y[padded]), jax.random.fold_in(key, start))
    outputs.append(jax.tree.map(lambda a: np.asarray(a)[:len(chunk)], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
