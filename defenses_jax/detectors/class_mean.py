"""A simple statistical detector: the distance of an input's penultimate embedding from the mean
embedding of the class it is predicted as (means over the training images of each class).
A baseline for the papers' detectors (KDE, paper 002; the pair detector, paper 003), and the
interface's reference implementation."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from defenses_jax.detectors.base import Detector


@dataclasses.dataclass(frozen=True)
class ClassMeanDistance(Detector):
  num_classes: int
  name: str = "class_mean"

  def fit(self, batches) -> dict:
    sums, counts = None, np.zeros(self.num_classes)
    for outputs, labels in batches:
      embedding = np.asarray(outputs["embedding"], np.float64).reshape(len(labels), -1)
      one_hot = np.eye(self.num_classes)[labels]
      sums = one_hot.T @ embedding if sums is None else sums + one_hot.T @ embedding
      counts += one_hot.sum(0)
    if sums is None or (counts == 0).any():
      raise ValueError(f"{self.name}: every class needs training images; counts {counts}.")
    return {"means": (sums / counts[:, None]).astype(np.float32)}

  def score(self, state, outputs, x):
    embedding = outputs["embedding"].reshape(x.shape[0], -1)
    predicted = jnp.argmax(outputs["class_logits"], axis=-1)  # The deployed class.
    return jnp.linalg.norm(embedding - jnp.asarray(state["means"])[predicted], axis=-1)

  def anchor_embeddings(self, state):
    return jnp.asarray(state["means"])
