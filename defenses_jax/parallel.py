"""Data parallelism in pmap style, written as jax.jit(jax.shard_map(...)) over a 1-D mesh.

Each device runs the step on its shard of the global batch; gradients (and anything else that
must agree across devices) are averaged with `lax.pmean` over the `data` axis. Model state is
replicated (`P()`), batches are split along their leading axis (`P('data')`). Multi-host runs
build global batch arrays from each host's slice with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
REPLICATED = P()
SHARDED = P(DATA_AXIS)

# Compiles of networks (data_parallel: every train, eval and attack step; the detector and UAP
# fits) round each bfloat16 value (model.compute_dtype) where the program says so. Otherwise XLA
# may keep some in float32 ("excess precision") depending on how it fuses the code around them:
# the network inside an attack's loop and the same network in the attack's fresh re-check then
# differed by a bfloat16 step of the logits (0.4%), and CW-L2, which stops just past the decision
# boundary, lost 9-15% of its successes on re-check (tests/test_mixed_precision.py). A no-op
# for float32 programs. Jit your own attack code with it too:
# jax.jit(f, compiler_options=parallel.COMPILER_OPTIONS).
COMPILER_OPTIONS = {"xla_allow_excess_precision": False}


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D `data` mesh over all (or the first `num_devices`) devices JAX sees."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but JAX sees {len(devices)}: {devices}.")
  # Auto axis types: arrays outside shard_map (evaluation, sanity gradients) are placed by the
  # compiler; newer JAX defaults to Explicit sharding types, which pooling gradients reject.
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_divisible(global_batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  n = mesh.shape[DATA_AXIS]
  if global_batch_size % n:
    raise ValueError(f"{what} {global_batch_size} is not divisible by the {n} devices of the "
                     f"mesh; choose a multiple of {n}.")


def data_parallel(fn: Callable, mesh: Mesh, in_specs, out_specs, donate_argnums=(),
                  check_vma: bool = True) -> Callable:
  """jit(shard_map(fn)): `fn` sees per-device shards and may use collectives over DATA_AXIS.

  With check_vma (the default) JAX types every value as replicated or varying over devices;
  attacks mark their loop carries accordingly (attacks.norms.varying_like).
  """
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               check_vma=check_vma), donate_argnums=donate_argnums,
                 compiler_options=COMPILER_OPTIONS)


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This host's slice of a global batch -> global arrays split over the `data` axis."""
  sharding = NamedSharding(mesh, SHARDED)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh (model state under data parallelism)."""
  return place(tree, REPLICATED, mesh)


def place(tree: Any, specs: Any, mesh: Mesh) -> Any:
  """Places a pytree on the mesh; `specs` is a pytree prefix of PartitionSpecs (P() replicates,
  P('data') splits the leading axis over the devices). Every process must pass the same values
  (e.g. the state initialised from the same seed): each keeps the parts its devices hold."""
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                           is_leaf=lambda x: isinstance(x, P))
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  # device_put cannot target devices of other processes: build each global array from this
  # process's copy, one addressable shard at a time.
  return jax.tree.map(_global_array, tree, jax.tree.broadcast(shardings, tree))


def _global_array(leaf, sharding: NamedSharding):
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # Keys travel as their raw bits.
    data = _global_array(jax.random.key_data(leaf), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
  host = np.asarray(jax.device_get(leaf))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
