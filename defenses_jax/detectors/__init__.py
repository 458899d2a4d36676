"""Detectors (registry) and their fitted states, cached beside the checkpoint by its step."""

from __future__ import annotations

import jax
import numpy as np

from defenses_jax import artifact_cache, parallel
from defenses_jax.checkpoint import step_artifact_path
from defenses_jax.defenses.base import Network
from defenses_jax.detectors.base import Detector
from defenses_jax.experiment import variables
from defenses_jax.detectors.class_mean import ClassMeanDistance
from defenses_jax.detectors.kde import KernelDensity
from defenses_jax.detectors.pair import PairDetector
from defenses_jax.registry import Registry

DETECTORS = Registry("detector", {"class_mean": ClassMeanDistance, "kde": KernelDensity,
                                  "pair": PairDetector})


def create_detector(name: str, num_classes: int, **options) -> Detector:
  return DETECTORS.create(name, options, num_classes=num_classes)


def cache_path(exp_dir: str, detector: Detector, step: int,
               compute_dtype: str = "float32") -> str:
  """<exp_dir>/detectors/<name>-<options hash>-step<step>.npz: a state belongs to one
  checkpoint step, one detector configuration and the precision the network ran in (bfloat16
  embeddings are not float32 ones; float32 keeps the hash it always had)."""
  settings = dict(vars(detector))
  if compute_dtype != "float32":
    settings["__compute_dtype"] = compute_dtype
  return step_artifact_path(exp_dir, "detectors", detector.name, settings, step)


def fitted_state(detector: Detector, trained, batch_size: int) -> dict:
  """The detector's state for this trained model: loaded if a verified cache exists (its
  checksum, the detector settings, checkpoint step, model and training data that produced it,
  and the detector's own check of the state: artifact_cache.py), else fitted on the training
  images (the network in inference mode) and saved (by process 0)."""
  exp, state = trained.exp, trained.state
  compute_dtype = exp.config.model.compute_dtype
  path = cache_path(exp.exp_dir, detector, int(state.step), compute_dtype)
  identity = {"detector": dict(vars(detector)), "step": int(state.step),
              "model": trained.fingerprint, "fit_data": exp.train_ds.fingerprint,
              "compute_dtype": compute_dtype}
  cached = artifact_cache.load(path, identity,
                               lambda arrays, info: detector.check_state(arrays))
  if cached is not None:
    return cached.arrays
  outputs_fn = jax.jit(lambda v, x: Network(exp.model, v).outputs(x),
                       compiler_options=parallel.COMPILER_OPTIONS)
  trained_variables = variables(state.params, state.batch_stats)
  ds = exp.train_ds

  def batches():
    for start in range(0, len(ds), batch_size):
      images = ds.images[start:start + batch_size]
      yield (jax.device_get(outputs_fn(trained_variables, images)),
             ds.labels[start:start + batch_size])

  fitted = {k: np.asarray(v) for k, v in detector.fit(batches()).items()}
  if jax.process_index() == 0:
    artifact_cache.save(path, fitted, identity)
  return fitted


__all__ = ["DETECTORS", "ClassMeanDistance", "Detector", "KernelDensity", "PairDetector", "cache_path",
           "create_detector", "fitted_state"]
