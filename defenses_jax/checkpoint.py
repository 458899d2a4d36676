"""Orbax checkpoints of an experiment under <workdir>/<experiment_name>/checkpoints.

The config that produced the checkpoints is kept beside them as config.json. Restarting with a
config whose model, dataset or defense differ would silently mix two experiments, so it is
refused before anything is restored.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

# Config sections that fix the shape and meaning of the saved state. Changing anything else
# (epochs, logging, evaluation) keeps the checkpoints usable.
IDENTITY_SECTIONS = ("model", "dataset", "defense", "seed", "distill")


class CheckpointMismatchError(ValueError):
  """The checkpoints on disk belong to a different experiment."""


def experiment_dir(workdir: str, experiment_name: str) -> str:
  if not experiment_name or os.sep in experiment_name:
    raise ValueError(f"experiment_name must be a plain directory name; got {experiment_name!r}.")
  return os.path.join(os.path.abspath(workdir), experiment_name)


def latest_checkpoint_step(workdir: str, experiment_name: str) -> Optional[int]:
  """The newest saved step of an experiment, read from the directory names (no restore)."""
  directory = os.path.join(experiment_dir(workdir, experiment_name), "checkpoints")
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps) if steps else None


class ExperimentCheckpoints:
  """Saves every `save_every_steps` and on request; restores the latest step automatically."""

  def __init__(self, exp_dir: str, config: dict, save_every_steps: int, max_to_keep: int = 2):
    self.exp_dir = exp_dir
    os.makedirs(exp_dir, exist_ok=True)
    self._check_and_write_config(config)
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every_steps),
                                           max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(os.path.join(exp_dir, "checkpoints"), options=options)

  def _check_and_write_config(self, config: dict) -> None:
    path = os.path.join(self.exp_dir, "config.json")
    if os.path.exists(path):
      with open(path) as f:
        try:
          saved = json.load(f)
        except json.JSONDecodeError as e:
          raise CheckpointMismatchError(
              f"{path} is not valid JSON ({e}); it may have been cut off when a run was "
              "killed. Restore it from the experiment's config, or delete it if the "
              "checkpoints are to be kept with the config of this run.") from e
      for section in IDENTITY_SECTIONS:
        # A section missing from the saved config predates it, so it held the default.
        if section in saved and saved[section] != config.get(section):
          raise CheckpointMismatchError(
              f"{self.exp_dir} holds an experiment with {section}={saved.get(section)!r}, but "
              f"this run has {section}={config.get(section)!r}. Use another experiment_name "
              "or workdir, or delete the old directory.")
    with open(path, "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore_latest(self, template: dict) -> Optional[dict]:
    """The latest saved state, shaped and sharded like `template`; None if nothing is saved."""
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.exp_dir} does not fit this model: {e}") from e

  def save(self, step: int, state: dict, force: bool = False) -> bool:
    """Saves if `step` is due (every save_every_steps) or `force`; a step already on disk is
    never written twice."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
