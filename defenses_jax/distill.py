"""A black-box attacker's proxy: a network trained on the *target's* predicted labels, not the
true ones (paper 002's distilled ResNet-32). Transfer attacks then craft examples on the proxy
(`threat_model='transfer', source_experiment=<proxy experiment>`)."""

from __future__ import annotations

from typing import Optional

import jax
import ml_collections
import numpy as np

from defenses_jax import data as data_lib
from defenses_jax import train as train_lib
from defenses_jax.evaluation.results import TrainSummary
from defenses_jax.experiment import load_experiment
from defenses_jax.evaluation.runner import make_predictor, run_over_dataset
from defenses_jax.progress import announce


def teacher_labels(teacher, ds: data_lib.ArrayDataset, batch_size: int) -> np.ndarray:
  """The deployed classifier's predictions on every example of ds."""
  exp, state = teacher.exp, teacher.state
  predict = make_predictor(exp.model, exp.defense, exp.mesh)
  out = run_over_dataset(ds, batch_size, exp.mesh,
                         lambda b, n: predict(state.params, state.batch_stats, b["image"],
                                              jax.random.fold_in(jax.random.key(0), n)))
  return np.concatenate(out).astype(np.int32)


def distill_proxy(config: ml_collections.ConfigDict, workdir: str,
                  datasets: Optional[tuple] = None) -> TrainSummary:
  """Trains `config` (the proxy) on the training images labelled by `config.distill.teacher`."""
  teacher = load_experiment(workdir, config.distill.teacher, config, datasets)
  train_ds = teacher.exp.train_ds
  labels = teacher_labels(teacher, train_ds, config.eval.batch_size)
  relabelled = data_lib.ArrayDataset(train_ds.images, labels, train_ds.num_classes,
                                     f"{train_ds.name} labelled by {config.distill.teacher}")
  summary = train_lib.train_and_evaluate(config, workdir,
                                         datasets=(relabelled, teacher.exp.test_ds))
  summary.teacher = config.distill.teacher
  summary.teacher_train_accuracy = float(np.mean(labels == train_ds.labels))
  announce(f"proxy {config.experiment_name} distilled from {config.distill.teacher}: its labels "
           f"agree with the truth on {summary.teacher_train_accuracy:.1%} of training images")
  return summary
