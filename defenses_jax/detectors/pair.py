"""Paper 003's pair detector: an input is accepted iff argmax Z' (the robust head) is the
Classmap's robust label of the deployed class argmax Z*.

Its score is the negated pair margin, -margin(Z', Classmap[argmax Z*]), read from the defense's
`accept_margin` output (defenses/collaborative.py): negative exactly when the pair matches. The
decision rule is fixed, so the detector's threshold is 0 (`fixed_threshold`), not one chosen at
a false-positive rate; the clean held-out images then measure its benign false-positive rate
(paper 003 section 4.5). The continuous score also gives a ROC AUC.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from defenses_jax.detectors.base import Detector


@dataclasses.dataclass(frozen=True)
class PairDetector(Detector):
  num_classes: int
  name: str = "pair"
  fixed_threshold = 0.0  # Flag iff score >= 0: the pair does not match (ties count as flagged).

  def fit(self, batches) -> dict:
    del batches  # Nothing to fit: the Classmap is the defense's, fixed before training.
    return {}

  def score(self, state, outputs, x):
    if "accept_margin" not in outputs:
      raise ValueError("the pair detector reads the defense's `accept_margin` output (margin of "
                       "Z' to each class's Classmap label); only the collaborative defense "
                       "(paper 003) produces it.")
    predicted = jnp.argmax(outputs["class_logits"], axis=-1)
    margins = jnp.take_along_axis(outputs["accept_margin"], predicted[:, None], axis=-1)[:, 0]
    return -margins
