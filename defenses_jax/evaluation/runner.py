"""Running an attack (or the deployed classifier) over a test set: data-parallel, in padded
fixed-shape batches, each device with its own random stream."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax.attacks import norms
from defenses_jax.defenses.base import Network
from defenses_jax.experiment import variables


def make_attack_runner(spec, build: Callable, mesh) -> Callable:
  """jit(shard_map(...)): (params, batch_stats, x, y, key[, detector_state]) -> (x_adv,
  queries), each device attacking its shard of the batch with its own random stream (`spec`: a
  threat_models.AttackSpec; `build`: the threat_models.TargetBuilder of its target, given the
  shard's labels and the detector state for a detector-aware target). A query attack gets the
  target only through an Oracle (its access kind, its budget) and `queries` are those it used
  per example; -1 for other attacks. An attack that reads the detector itself gets the system
  unfolded and what it must evade (`evasion=`)."""
  fn, params, info = spec.fn, spec.params, spec.info
  if info.universal:
    raise ValueError(f"{spec.attack} is a universal attack: fit it with "
                     "evaluation.universal.fitted_perturbation, not per batch.")

  def per_device(model_params, batch_stats, x, y, key, detector_state):
    key = jax.random.fold_in(key, lax.axis_index(parallel.DATA_AXIS))
    if info.needs_detector:
      x_adv, report = fn(build.system(model_params, batch_stats, detector_state), x, y, key,
                         evasion=build.evade.evasion(detector_state), **params)
    else:
      target = build(model_params, batch_stats, y, detector_state)
      if info.queries:
        target = info.oracle(target, params, independent_examples=build.independent_examples)
      x_adv, report = fn(target, x, y, key, **params)
    return x_adv, report.get("queries", jnp.full(x.shape[:1], -1, jnp.int32))

  run = parallel.data_parallel(
      per_device, mesh, in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED,
                                  parallel.SHARDED, parallel.REPLICATED, parallel.REPLICATED),
      out_specs=(parallel.SHARDED, parallel.SHARDED))
  return lambda params, batch_stats, x, y, key, detector_state=None: run(
      params, batch_stats, x, y, key, {} if detector_state is None else detector_state)


def make_predictor(model, defense, mesh) -> Callable:
  """(params, batch_stats, x, key) -> the deployed classifier's predictions, data-parallel
  (`key`: a randomised defense's draws; each device folds in its index)."""

  def per_device(model_params, batch_stats, x, key):
    key = jax.random.fold_in(key, lax.axis_index(parallel.DATA_AXIS))
    net = Network(model, variables(model_params, batch_stats))
    return defense.deployed(net, x, key).class_logits.argmax(-1)

  return parallel.data_parallel(per_device, mesh,
                                in_specs=(parallel.REPLICATED, parallel.REPLICATED,
                                          parallel.SHARDED, parallel.REPLICATED),
                                out_specs=parallel.SHARDED)


def to_host(a) -> np.ndarray:
  """A (possibly multi-host) global array as one numpy array on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return np.asarray(a)


def run_over_dataset(ds: data_lib.ArrayDataset, batch_size: int, mesh,
                     fn: Callable[[dict, int], Any], progress=None) -> list:
  """Applies fn(sharded_batch, batch_number) to every batch of the dataset (the last one padded,
  so that everything compiles once) and returns each output with the padding rows removed.
  Outputs are pytrees of arrays with a leading batch axis."""
  outputs = []
  rows = data_lib.host_rows(batch_size, jax.process_index(), jax.process_count())
  for number, batch in enumerate(data_lib.eval_batches(ds, batch_size)):
    keep = batch.pop("mask").astype(bool)
    local = {k: v[rows] for k, v in batch.items()}
    out = fn(parallel.shard_batch(local, mesh), number)
    outputs.append(jax.tree.map(lambda a: to_host(a)[keep], out))
    if progress is not None:
      progress.update(int(keep.sum()))
  return outputs


def adversarial_correct(runner: Callable, predictor: Callable, state, ds: data_lib.ArrayDataset,
                        batch_size: int, mesh, key) -> np.ndarray:
  """Per example of `ds`: is the deployed classifier (`predictor`) still right on the attack's
  (`runner`, from make_attack_runner) output? `state` holds params and batch_stats."""

  def one_batch(batch, number):
    batch_key = jax.random.fold_in(key, number)
    x_adv, _ = runner(state.params, state.batch_stats, batch["image"], batch["label"],
                      batch_key)
    return predictor(state.params, state.batch_stats, x_adv, jax.random.fold_in(batch_key, 1))

  return np.concatenate(run_over_dataset(ds, batch_size, mesh, one_batch)) == ds.labels


def noise_like(key, x, eps: float, norm: str):
  """Random noise of the attack's size: a random corner of the L-inf ball (the largest noise of
  that norm) or a random direction on the L2 sphere; clipped to [0, 1]."""
  if norm == "linf":
    noise = eps * jax.random.rademacher(key, x.shape, x.dtype)
  else:
    direction = jax.random.normal(key, x.shape, x.dtype)
    noise = eps * direction / norms.l2_norm(direction)
  return (x + noise).clip(0.0, 1.0)

