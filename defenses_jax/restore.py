"""Trained experiments restored from their checkpoints: the model under evaluation, a transfer
source, or the teacher a proxy is distilled from."""

from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections

from defenses_jax.experiment import Experiment


class NoCheckpointError(FileNotFoundError):
  """An experiment was needed that has not been trained."""


class TrainedExperiment:
  """An Experiment and its latest checkpointed TrainState."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: Optional[tuple] = None):
    self.exp = Experiment(config, workdir, datasets)
    ckpt = self.exp.checkpoints()
    if ckpt.latest_step() is None:
      ckpt.close()
      raise NoCheckpointError(f"no checkpoint under {self.exp.exp_dir}/checkpoints; train first "
                              "with --mode=train (same --config and --workdir).")
    self.state = self.exp.restore_or_init(ckpt)
    ckpt.close()


def load_experiment(workdir: str, name: str, like: ml_collections.ConfigDict,
                    datasets: Optional[tuple] = None) -> TrainedExperiment:
  """The experiment `name` of `workdir`, from its saved config.json. It must use the same dataset
  as `like` (the experiment that needs it)."""
  path = os.path.join(os.path.abspath(workdir), name, "config.json")
  if not os.path.exists(path):
    raise NoCheckpointError(f"experiment {name!r} not found at {path}; train it first.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.dataset.name != like.dataset.name:
    raise ValueError(f"experiment {name!r} was trained on {config.dataset.name}, but "
                     f"{like.experiment_name} uses {like.dataset.name}.")
  config.dataset.num_train_examples = like.dataset.num_train_examples
  config.dataset.num_test_examples = like.dataset.num_test_examples
  return TrainedExperiment(config, workdir, datasets)
