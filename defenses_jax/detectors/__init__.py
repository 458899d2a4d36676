"""Detectors (registry) and their fitted states, cached beside the checkpoint by its step."""

from __future__ import annotations

import os

import jax
import numpy as np

from defenses_jax import parallel
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


def fitted_state(detector: Detector, exp, state, batch_size: int) -> dict:
  """The detector's state for this checkpoint: loaded if cached, else fitted on the training
  images (the network in inference mode) and saved (by process 0)."""
  path = cache_path(exp.exp_dir, detector, int(state.step),
                    exp.config.model.get("compute_dtype", "float32"))
  if os.path.exists(path):
    with np.load(path) as saved:
      return {k: saved[k] for k in saved.files}
  outputs_fn = jax.jit(lambda v, x: Network(exp.model, v).outputs(x),
                       compiler_options=parallel.COMPILER_OPTIONS)
  trained = variables(state.params, state.batch_stats)
  ds = exp.train_ds

  def batches():
    for start in range(0, len(ds), batch_size):
      images = ds.images[start:start + batch_size]
      yield jax.device_get(outputs_fn(trained, images)), ds.labels[start:start + batch_size]

  fitted = {k: np.asarray(v) for k, v in detector.fit(batches()).items()}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **fitted)
  return fitted


__all__ = ["DETECTORS", "ClassMeanDistance", "Detector", "KernelDensity", "PairDetector", "cache_path",
           "create_detector", "fitted_state"]
