"""Mixed precision as a config switch (`config.model.compute_dtype`): bfloat16 compute with
float32 master weights, float32 BatchNorm statistics and float32 outputs.

Every place the library runs a network (the train step, `Network` for evaluation, attacks,
monitors and detectors) calls `model.apply` on the one model an `Experiment` builds, so wrapping
that model here is the whole switch; nothing else needs to know the compute dtype:

- The variables stay float32 everywhere outside `apply` (the TrainState, the optimiser's moments,
  checkpoints). Inside, only the `params` collection is cast to bfloat16, so gradients flow back
  through the cast and arrive float32 (the transpose of a cast is the cast back).
- Floating inputs are cast too: flax's Dense and Conv compute in the promoted dtype of input
  and kernel, so both must be bfloat16 for a bfloat16 matmul or convolution (XLA accumulates
  those in float32 on GPU). An attack differentiates through the cast and gets a float32 input
  gradient.
- `batch_stats` is not cast: flax's BatchNorm reduces in float32 (force_float32_reductions) and
  updates the running averages in the dtype they come in, so they stay float32 with their full
  precision (a momentum-0.9 update is 10% of the value; bfloat16 keeps 8 bits). It normalises in
  float32 and returns the promoted dtype of input, scale and bias: bfloat16, since the scale and
  bias are params.
- Every floating output narrower than float32 (logits, embeddings) is cast back to float32, so
  losses, softmax, attack objectives and metrics are float32.

The library compiles networks with parallel.COMPILER_OPTIONS, which makes XLA round every
bfloat16 value where the program says so: otherwise the same network can round differently in
two compiled contexts (an attack's loop and its fresh re-check), see there.

"float32" returns the model itself: the default path is exactly what it was.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_compute_dtype(name: Any) -> None:
  if not isinstance(name, str) or name not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}; got "
                     f"{name!r} (e.g. --config.model.compute_dtype=bfloat16).")


def _is_float(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def _widen(tree):
  """Floating leaves narrower than float32 -> float32 (float64 leaves, under x64, are kept)."""
  return jax.tree.map(
      lambda x: x.astype(jnp.float32) if _is_float(x) and jnp.finfo(x.dtype).bits < 32 else x,
      tree)


class MixedPrecision:
  """A flax module whose `apply` computes in `dtype` (see the module docstring); `init` and every
  other attribute are the module's own, so parameters are created float32 under the same names
  (checkpoints do not change)."""

  def __init__(self, module, dtype):
    self.module, self.dtype = module, dtype

  def init(self, *args, **kwargs):
    return self.module.init(*args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    variables = {name: _cast_floats(collection, self.dtype) if name == "params" else collection
                 for name, collection in variables.items()}
    # Flags (train, return_embedding, mutable) and PRNG keys are not floating: left as they are.
    args, kwargs = _cast_floats((args, kwargs), self.dtype)
    return _widen(self.module.apply(variables, *args, **kwargs))

  def __getattr__(self, name):  # Only for names not found on the wrapper itself.
    if name == "module":  # Not set yet (copy, pickle): no recursion.
      raise AttributeError(name)
    return getattr(self.module, name)

  def __repr__(self):
    return f"MixedPrecision({self.module!r}, {jnp.dtype(self.dtype).name})"


def with_compute_dtype(module, name: str):
  """`module` computing in the dtype named by config.model.compute_dtype."""
  check_compute_dtype(name)
  return module if name == "float32" else MixedPrecision(module, COMPUTE_DTYPES[name])
