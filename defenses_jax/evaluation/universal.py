"""Universal attacks in an evaluation: the perturbation is fitted once on the first
`fit_examples` training images of the experiment it is crafted on (never on the test images it
is scored on), cached beside that experiment's checkpoint, and added to every test image.

Cache: <exp_dir>/universal/<attack>-<settings hash>-step<N>.npz, the settings being the attack's
parameters, the threat model it differentiates, EOT samples, fit_examples and the seed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax import artifact_cache, parallel
from defenses_jax.checkpoint import step_artifact_path
from defenses_jax.evaluation.threat_models import AttackSpec, TargetBuilder


class UniversalPerturbation(NamedTuple):
  v: np.ndarray  # Shaped like one image.
  info: dict  # The fit's report (fooling rate on the fitting images, passes, norms of v).
  path: str  # Where it is cached.


def cache_path(exp_dir: str, spec: AttackSpec, threat_model: str, seed: int, step: int,
               compute_dtype: str = "float32") -> str:
  settings = {"params": spec.params, "threat_model": threat_model,
              "eot_samples": spec.eot_samples, "fit_examples": spec.fit_examples, "seed": seed}
  if compute_dtype != "float32":  # Fitted on a bfloat16 network; float32 keeps its old hash.
    settings["compute_dtype"] = compute_dtype
  return step_artifact_path(exp_dir, "universal", spec.attack, settings, step)


def fitted_perturbation(spec: AttackSpec, crafted_on, threat_model: str, seed: int
                        ) -> UniversalPerturbation:
  """The universal perturbation for this attack on this trained model: loaded if a verified
  cache exists (checksum; the settings, checkpoint step, model and fitting images that produced
  it; shaped like an image and within its eps: artifact_cache.py), else fitted (one device: the
  fit is sequential over images) and saved by process 0. Its reported norms are those of the
  perturbation itself, never carried over from a note."""
  exp, state = crafted_on.exp, crafted_on.state
  compute_dtype = exp.config.model.compute_dtype
  path = cache_path(exp.exp_dir, spec, threat_model, seed, int(state.step), compute_dtype)
  ds = exp.train_ds.take(spec.fit_examples)
  identity = {"attack": spec.attack, "params": spec.params, "threat_model": threat_model,
              "eot_samples": spec.eot_samples, "seed": seed, "step": int(state.step),
              "model": crafted_on.fingerprint, "fit_data": ds.fingerprint,
              "compute_dtype": compute_dtype}
  norm = spec.info.norm_of(spec.params)

  def contract(arrays, info):
    v = arrays.get("v")
    if v is None or v.shape != ds.image_shape:
      return f"it is not one perturbation of shape {ds.image_shape}"
    return artifact_cache.in_box(np.abs(v)) or artifact_cache.within_norm_ball(
        v[None], spec.params["eps"], norm)

  cached = artifact_cache.load(path, identity, contract)
  if cached is not None:
    v, info = cached.arrays["v"], cached.info
  else:
    build = TargetBuilder(threat_model, exp.model, exp.defense, spec.eot_samples)
    fit = jax.jit(lambda params, batch_stats, x, key: spec.fn(build(params, batch_stats), x, key,
                                                              **spec.params),
                  compiler_options=parallel.COMPILER_OPTIONS)
    key = jax.random.fold_in(jax.random.key(seed), 5 * 2**20)
    v, info = fit(state.params, state.batch_stats, jnp.asarray(ds.images), key)
    v = np.asarray(v)
    info = {k: np.asarray(a).tolist() for k, a in info.items()}
    info["fit_examples"] = len(ds)
    if jax.process_index() == 0:
      artifact_cache.save(path, {"v": v}, identity, info)
  info = {**info, **_norms(v)}
  return UniversalPerturbation(v, info, path)


def _norms(v: np.ndarray) -> dict:
  flat = np.asarray(v, np.float64).ravel()
  return {"l2": float(np.sqrt(np.sum(flat * flat))), "linf": float(np.abs(flat).max())}
