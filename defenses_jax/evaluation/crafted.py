"""Adversarial examples an evaluation crafted white-box, saved so that a transfer evaluation of
another model can reuse them instead of crafting them again
(results/adversarial/<key>-<identity digest>.npz).

They are reused only when they are the examples a fresh run would craft: the same attack and
parameters on the same trained source (checkpoint step and model fingerprint), made from the
same test images (each image's digest, at least as many as needed, so that a prefix of a longer
run serves), with the same labels; the file must match its checksum, and its examples must lie
in [0, 1] and, for a bounded attack, within eps of those images (artifact_cache.py). Attacks
here are per-example, so a prefix of a longer run is exact for deterministic attacks and an
equally distributed draw for random ones. A file that fails a check is named in a warning and
the examples are crafted again.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import Optional

import numpy as np

from defenses_jax import artifact_cache


def _digest(identity: dict) -> str:
  return hashlib.sha256(artifact_cache.canonical(identity).encode()).hexdigest()[:10]


def save(results_dir: str, key: str, identity: dict, x_adv: np.ndarray, labels: np.ndarray,
         clean_images: np.ndarray) -> None:
  """Saves the examples of attack entry `key`; older files of the same entry are removed."""
  directory = os.path.join(results_dir, "adversarial")
  path = os.path.join(directory, f"{key}-{_digest(identity)}.npz")
  artifact_cache.save(path, {"x_adv": x_adv, "labels": labels,
                             "clean_rows": artifact_cache.row_digests(clean_images)}, identity)
  # The entry's files from older checkpoints (and of the format before identities) go.
  own = re.compile(re.escape(key) + r"(-[0-9a-f]{10})?\.npz")
  for name in os.listdir(directory):
    if own.fullmatch(name) and os.path.join(directory, name) != path:
      os.remove(os.path.join(directory, name))


def find(experiment_dir: str, identity: dict, labels: np.ndarray, clean_images: np.ndarray,
         eps: Optional[float] = None, norm: str = "linf") -> Optional[tuple[np.ndarray, str]]:
  """(x_adv for the first len(labels) test images, path) if verified saved examples exist."""
  n = len(labels)
  pattern = os.path.join(glob.escape(os.path.join(experiment_dir, "results", "adversarial")),
                         f"*-{_digest(identity)}.npz")

  def contract(arrays, info):
    x_adv, saved_labels = arrays.get("x_adv"), arrays.get("labels")
    rows = arrays.get("clean_rows")
    if x_adv is None or saved_labels is None or rows is None or len(x_adv) < n:
      return f"it holds fewer than the {n} examples needed"
    if x_adv.shape[1:] != clean_images.shape[1:] or len(saved_labels) != len(x_adv):
      return "its examples are not shaped like the test images"
    if not np.array_equal(saved_labels[:n], labels):
      return "its labels are not those of the test images"
    if not np.array_equal(rows[:n], artifact_cache.row_digests(clean_images[:n])):
      return "it was crafted from other images than these test images"
    return artifact_cache.in_box(x_adv[:n]) or (
        None if eps is None else artifact_cache.within_norm_ball(x_adv[:n] - clean_images[:n],
                                                                 eps, norm))

  for path in sorted(glob.glob(pattern)):
    cached = artifact_cache.load(path, identity, contract)
    if cached is not None:
      return cached.arrays["x_adv"][:n], path
  return None
