"""What a detector is: fitted on training data after training, then a pure score per input.

A detector flags inputs as adversarial when its score is high. `fit` runs once on the host
(numpy is fine) from the trained network's outputs on training images and returns a state (a
dict of arrays), which evaluation caches beside the checkpoint, keyed by the checkpoint's step
(detectors/cache.py). `score(state, outputs, x)` is pure JAX, so it runs inside the compiled,
data-parallel evaluation and can be differentiated by a detector-aware attack.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import jax
import numpy as np


class Detector:
  """Base class: subclasses are frozen dataclasses with `num_classes` and `name` fields."""

  num_classes: int
  name: str = "detector"
  # A detector with a fixed decision rule (flag iff score >= fixed_threshold) keeps it; others
  # get their threshold at the configured false-positive rate on clean held-out images.
  fixed_threshold = None

  def fit(self, batches: Iterable[tuple[dict, np.ndarray]]) -> dict:
    """State from (network outputs {'logits', 'embedding'}, true labels) of training batches."""
    raise NotImplementedError(f"{type(self).__name__} must define fit")

  def score(self, state: dict, outputs: dict, x: jax.Array) -> jax.Array:
    """(B,) scores, higher meaning more likely adversarial. `outputs` holds the network's
    `logits` and `embedding` and the deployed classifier's `class_logits`."""
    raise NotImplementedError(f"{type(self).__name__} must define score")

  def scorer(self, state: dict) -> Callable[[dict, jax.Array], jax.Array]:
    """score with this fitted state, (outputs, x) -> scores: the `detector` a deployed system
    (Defense.deployed) is built with."""
    return functools.partial(self.score, state)

  def check_state(self, state: dict) -> Optional[str]:
    """A problem with a (cached) fitted state, as a sentence, or None. Default: every array
    holds finite values; detectors with stronger invariants add theirs."""
    for name, value in state.items():
      value = np.asarray(value)
      if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        return f"its {name!r} holds non-finite values"
    return None

  def anchor_embeddings(self, state: dict) -> jax.Array:
    """(num_classes, d): for each class, a training embedding the detector accepts as typical
    of it; what a feature-matching attacker steers an input's embedding towards."""
    raise ValueError(f"detector {self.name!r} has no anchor embeddings for feature matching.")


OutputsFn = Callable[[np.ndarray], dict]
