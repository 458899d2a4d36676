"""Evaluation of a trained experiment from its checkpoint.

Currently: clean accuracy of the deployed classifier (defense.class_logits) on the test split.
Robustness under attacks and threat models builds on this (see the evaluation-harness issue).
"""

from __future__ import annotations

import os
from typing import Optional

import ml_collections

from defenses_jax.train import Experiment, evaluate_clean, write_json


class NoCheckpointError(FileNotFoundError):
  """Evaluation was asked for an experiment that has not been trained."""


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             datasets: Optional[tuple] = None) -> dict:
  exp = Experiment(config, workdir, datasets)
  ckpt = exp.checkpoints()
  if ckpt.latest_step() is None:
    ckpt.close()
    raise NoCheckpointError(f"no checkpoint under {exp.exp_dir}/checkpoints; train first "
                            "with --mode=train (same --config and --workdir).")
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  accuracy = evaluate_clean(exp.eval_step(), state, exp.test_ds, config.eval.batch_size,
                            exp.mesh)
  results = {"experiment_name": config.experiment_name, "step": int(state.step),
             "num_test_examples": len(exp.test_ds), "clean_accuracy": accuracy}
  write_json(os.path.join(exp.exp_dir, "results", "eval.json"), results)
  return results
