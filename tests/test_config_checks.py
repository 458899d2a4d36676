"""Reliability defects a new user hit (issue 11): impossible sizes and misspelt attack keys fail
before any compute, divergence stops the run with a clear error and valid JSON logs, and
channels-first images are refused."""

import json
import os

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import data as data_lib
from defenses_jax import train as train_lib
from defenses_jax.progress import TrainingDiverged
from experiments.common import attack


@pytest.mark.parametrize("key,value,message", [
    ("train.epochs", -1, "train.epochs"),
    ("train.epochs", 0, "train.epochs"),
    ("train.batch_size", 0, "train.batch_size"),
    ("eval.every_epochs", 0, "eval.every_epochs"),
    ("train.log_every_steps", 0, "train.log_every_steps"),
    ("train.checkpoint_every_steps", 0, "checkpoint_every_steps"),
    ("train.learning_rate", -1e-3, "learning_rate"),
    ("seed", -1, "seed"),
    ("dataset.num_train_examples", 0, "num_train_examples"),
    ("eval.eps_sweep.attack", "pgdd", "eps_sweep.attack 'pgdd'"),
    ("eval.monitor.attack", "pgdd", "monitor.attack 'pgdd'"),
])
def test_impossible_settings_fail_before_any_compute(tmp_path, blobs, key, value, message):
  config = tiny_config()
  config.eval.attacks = ml_collections.ConfigDict({"pgd": attack("pgd", "PGD", eps=0.3,
                                                                 step_size=0.1, steps=2)})
  section, _, name = key.rpartition(".")
  target = config
  for part in filter(None, section.split(".")):
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert not os.listdir(tmp_path)  # Nothing written, nothing trained.


def test_a_misspelt_attack_fails_in_train_mode_before_training(tmp_path, blobs):
  config = tiny_config()
  config.eval.attacks = ml_collections.ConfigDict({"x": attack("pgdd", "typo")})
  with pytest.raises(ValueError, match="unknown attack"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert not (tmp_path / "tiny" / "checkpoints").exists()


def test_divergence_stops_the_run_and_the_log_stays_json(tmp_path, blobs):
  config = tiny_config(learning_rate=1e4, optimizer="sgd")
  with pytest.raises(TrainingDiverged, match="diverged"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  lines = (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]  # Strict JSON: no bare NaN.
  assert records[-2]["train_loss"] is None and "diverged" in records[-1]
  summary = json.loads((tmp_path / "tiny" / "results" / "train.json").read_text())
  assert "training loss is nan" in summary["diverged"]


def test_channels_first_images_are_refused_with_a_hint():
  with pytest.raises(data_lib.DataError, match="channels-first"):
    data_lib.from_arrays(np.zeros((4, 1, 28, 28), np.uint8), np.zeros(4, np.int64))
  ds = data_lib.from_arrays(np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.int64))
  assert ds.images.shape == (4, 28, 28, 1)


def test_a_truncated_config_json_gets_a_clear_error(tmp_path, blobs):
  config = tiny_config(epochs=1)
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  path = tmp_path / "tiny" / "config.json"
  path.write_text(path.read_text()[:40])  # Cut off, as by a kill during the write.
  with pytest.raises(ValueError, match="not valid JSON"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
