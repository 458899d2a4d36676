"""Adversarial examples an evaluation crafted white-box, saved so that a transfer evaluation of
another model can reuse them instead of crafting them again (results/adversarial/<key>.npz).

They are reused only when they are the same examples a fresh run would craft: same attack and
parameters, same checkpoint step of the source, and the same test images (by label sequence) at
least as many as needed. Attacks here are per-example, so a prefix of a longer run is exact for
deterministic attacks and an equally distributed draw for random ones.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional

import numpy as np


def _canonical(params: dict) -> str:
  return json.dumps(params, sort_keys=True, default=str)


def save(results_dir: str, key: str, attack: str, params: dict, step: int, x_adv: np.ndarray,
         labels: np.ndarray) -> None:
  directory = os.path.join(results_dir, "adversarial")
  os.makedirs(directory, exist_ok=True)
  np.savez_compressed(os.path.join(directory, f"{key}.npz"), x_adv=x_adv, labels=labels,
                      attack=attack, params=_canonical(params), step=step)


def find(experiment_dir: str, attack: str, params: dict, step: int,
         labels: np.ndarray) -> Optional[tuple[np.ndarray, str]]:
  """(x_adv for the first len(labels) test images, path) if a matching saved run exists."""
  wanted = _canonical(params)
  for path in sorted(glob.glob(os.path.join(experiment_dir, "results", "adversarial", "*.npz"))):
    with np.load(path) as saved:
      n = len(labels)
      if (str(saved["attack"]) == attack and str(saved["params"]) == wanted
          and int(saved["step"]) == step and len(saved["labels"]) >= n
          and np.array_equal(saved["labels"][:n], labels)):
        return saved["x_adv"][:n], path
  return None
