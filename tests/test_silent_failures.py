"""Runs that went wrong and said nothing, or failed late (issue: "No silent wrong numbers"): a
finite divergence, damage inside a checkpoint's compressed data, your own data not
round-tripping, arrays that look like a mistake, results that went stale during evaluation, a
changed optimiser, a read-only experiment."""

import glob
import json
import os
import warnings

import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import data as data_lib
from defenses_jax import train as train_lib
from defenses_jax.checkpoint import CheckpointMismatchError
from defenses_jax.evaluation import evaluate, evaluator
from defenses_jax.experiment import load_experiment
from defenses_jax.files import UnwritableDirectoryError
from defenses_jax.progress import TrainingDiverged
from experiments.common import attack


def test_a_finite_divergence_stops_training_and_is_recorded(tmp_path, blobs):
  # Adam at a learning rate of 1e4: the loss climbs to ~1e5 x its start and stays finite.
  config = tiny_config(epochs=4, learning_rate=1e4)
  with pytest.raises(TrainingDiverged, match="above .* for 3 log intervals in a row"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  summary = json.loads((tmp_path / "tiny" / "results" / "train.json").read_text())
  assert "training diverged" in summary["diverged"] and summary["final_step"] == 6
  records = [json.loads(line) for line in open(tmp_path / "tiny" / "metrics.jsonl")]
  initial = records[0]["initial_train_loss"]  # The first step's: the initial parameters'.
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert 1.0 < initial < 2.0 and records[0]["step"] == 0  # About log(4) classes.
  assert all(np.isfinite(losses)) and min(losses) > 100 * initial
  assert "diverged" in records[-1]
  # The same run with the check off trains to the end (the factor is what stopped it).
  config.train.divergence_factor = 0.0
  config.experiment_name = "unchecked"
  assert train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs).final_step == 24


def test_a_model_no_better_than_chance_fails_at_the_end(tmp_path):
  rng = np.random.default_rng(123)  # Not blob_dataset's seed: its labels come from seed 0.
  train, test = blob_dataset(96, seed=0), blob_dataset(200, seed=1)
  # Labels unrelated to the images: nothing to learn that carries over to the test set.
  noise = data_lib.ArrayDataset(train.images, rng.integers(0, 4, 96).astype(np.int32), 4)
  config = tiny_config(epochs=3)
  config.train.fail_at_chance = True
  with pytest.raises(TrainingDiverged, match="no better than chance"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=(noise, test))
  summary = json.loads((tmp_path / "tiny" / "results" / "train.json").read_text())
  assert "no better than chance" in summary["diverged"]
  # Learnable data passes the same check.
  config.experiment_name = "learns"
  config.train.epochs = 6
  config.train.learning_rate = 3e-3
  out = train_lib.train_and_evaluate(config, str(tmp_path), datasets=(train, test))
  assert out.diverged is None and out.test_accuracy > 0.6


def test_chance_level_by_hand():
  labels = np.array([0] * 60 + [1] * 40)  # Always predicting 0 scores 0.6.
  limit = 0.6 + 3 * np.sqrt(0.6 * 0.4 / 100)  # 0.747
  assert train_lib.chance_level(0.74, labels, 2) is not None
  assert train_lib.chance_level(0.75, labels, 2) is None
  assert f"{limit:.4f}" in train_lib.chance_level(0.5, labels, 2)


def _two_steps_saved(tmp_path, blobs):
  config = tiny_config(epochs=2, checkpoint_every_steps=3)
  train_lib.train(config, str(tmp_path), datasets=blobs)
  step_dir = tmp_path / "tiny" / "checkpoints" / "12"
  data_files = glob.glob(str(step_dir / "**" / "ocdbt.process_0" / "d" / "*"), recursive=True)
  return config, max(data_files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damage_inside_compressed_checkpoint_data_falls_back_and_names_the_step(
    tmp_path, blobs, capsys, damage):
  config, data_file = _two_steps_saved(tmp_path, blobs)
  size = os.path.getsize(data_file)
  with open(data_file, "r+b") as f:
    if damage == "flipped":  # 4 KB inverted inside the compressed block.
      f.seek(size // 2)
      block = f.read(4096)
      f.seek(size // 2)
      f.write(bytes(255 - b for b in block))
    else:
      f.truncate(size // 3)
  _, summary = train_lib.train(config, str(tmp_path), datasets=blobs)
  assert summary.resumed_from_step == 9
  assert "checkpoint step 12 is damaged" in capsys.readouterr().out
  assert (tmp_path / "tiny" / "checkpoints" / "corrupt-12").is_dir()


def test_your_own_colour_images_round_trip_as_the_readme_shows(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
  labels = rng.integers(0, 3, 64)
  images[labels == 1, :16] //= 4  # Something to learn.
  mine = data_lib.from_arrays(images[:48], labels[:48]), data_lib.from_arrays(images[48:],
                                                                               labels[48:])
  config = tiny_config(epochs=1)
  config.experiment_name = "mine"
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=mine)
  # Without the data: refused, saying so (it used to fail on a misleading shape mismatch).
  with pytest.raises(data_lib.DataError, match="trained on arrays you passed in .*Pass the same "
                     "data"):
    load_experiment(str(tmp_path), "mine")
  net = load_experiment(str(tmp_path), "mine", datasets=mine).network()
  assert net(mine[1].images).shape == (16, 3)
  # Other test images: refused unless asked for knowingly.
  other = data_lib.from_arrays(images[:16], labels[:16])
  with pytest.raises(data_lib.DataError, match="test data 16 images .* other_test_data=True"):
    evaluate(config, str(tmp_path), datasets=(mine[0], other))
  out = evaluate(config, str(tmp_path), datasets=(mine[0], other), other_test_data=True)
  assert out.num_test_examples == 16
  # Other training data is another experiment.
  with pytest.raises(data_lib.DataError, match="trained with train data"):
    evaluate(config, str(tmp_path), datasets=(other, mine[1]))


def test_mnist_sized_arrays_are_not_silently_swapped_for_the_embedded_mnist(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (64, 28, 28)).astype(np.uint8)
  labels = rng.integers(0, 10, 64)
  mine = data_lib.from_arrays(images[:48], labels[:48], 10), data_lib.from_arrays(
      images[48:], labels[48:], 10)
  config = tiny_config(epochs=1)
  config.experiment_name = "digits"
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=mine)
  with pytest.raises(data_lib.DataError, match="not on the config's dataset 'mnist_embedded"):
    evaluate(config, str(tmp_path))  # The config says mnist_embedded; the model never saw it.


def test_arrays_that_look_like_a_mistake_are_named():
  images = np.zeros((4, 8, 8), np.uint8)
  images[:, 2:4] = 200
  with pytest.warns(data_lib.DataWarning, match="labels run from 1 to 3 .* pass labels - 1"):
    data_lib.from_arrays(images, np.array([1, 2, 3, 1]))
  with pytest.warns(data_lib.DataWarning, match="divided by 255 twice"):
    data_lib.from_arrays(images.astype(np.float32) / 255.0 / 255.0, np.array([0, 1, 2, 0]))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    data_lib.from_arrays(images, np.array([0, 1, 2, 1]))  # Nothing to say.
    data_lib.from_arrays(images.astype(np.float32) / 255.0, np.array([0, 1, 2, 1]))
  for dtype in (np.int64, np.uint16):
    with pytest.raises(data_lib.DataError, match=f"images are {np.dtype(dtype).name} "
                       r"\(values 0..200\); from_arrays takes uint8"):
      data_lib.from_arrays(images.astype(dtype), np.array([0, 1, 2, 1]))


def test_an_evaluation_that_finishes_after_training_moved_on_is_marked_stale(
    tmp_path, blobs, monkeypatch):
  config = tiny_config(epochs=2)
  config.eval.attacks = ml_collections.ConfigDict({"fgsm": attack("fgsm", "FGSM", eps=0.3)})
  config.eval.sanity.enabled = False
  train_lib.train(config, str(tmp_path), datasets=blobs, interrupt_at_step=6)
  write_report = evaluator.report.write_report

  def training_goes_on_meanwhile(*args, **kwargs):
    train_lib.train(config, str(tmp_path), datasets=blobs)  # Reaches step 12.
    return write_report(*args, **kwargs)

  monkeypatch.setattr(evaluator.report, "write_report", training_goes_on_meanwhile)
  out = evaluate(config, str(tmp_path), datasets=blobs)
  results = tmp_path / "tiny" / "results"
  assert out.step == 6 and out.stale_since_step == 12
  assert json.loads((results / "eval.json").read_text())["stale_since_step"] == 12
  assert (results / "eval.md").read_text().startswith("> **Stale:** evaluated at step 6")


def test_a_changed_optimiser_is_named_not_reported_as_another_model(tmp_path, blobs):
  train_lib.train_and_evaluate(tiny_config(epochs=1), str(tmp_path), datasets=blobs)
  for optimizer, momentum in (("sgd", 0.9), ("sgd", 0.0)):
    config = tiny_config(epochs=2, optimizer=optimizer, momentum=momentum)
    with pytest.raises(CheckpointMismatchError, match="optimiser state of "
                       "train.optimizer='adam', but this run uses train.optimizer='sgd'"):
      train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)


def test_a_read_only_experiment_fails_before_the_detector_is_fitted(tmp_path, blobs):
  datasets = blob_dataset(96, seed=0), blob_dataset(64, seed=1)
  config = tiny_config(epochs=1)
  config.eval.num_attack_examples = 24
  config.eval.detection.detector = "class_mean"
  config.eval.detection.false_positive_rate = 0.1
  config.eval.attacks = ml_collections.ConfigDict({"fgsm": attack("fgsm", "FGSM", eps=0.3)})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  results = tmp_path / "tiny" / "results"
  for name in os.listdir(results):
    os.remove(results / name)
  os.rmdir(results)
  results.write_text("")  # Where results go cannot take them (root ignores permission bits).
  with pytest.raises(UnwritableDirectoryError, match=f"cannot write to {results}"):
    evaluate(config, str(tmp_path), datasets=datasets)
  assert not (tmp_path / "tiny" / "detectors").exists()  # Nothing was fitted first.


def test_a_resumed_run_keeps_the_initial_loss_as_its_reference(tmp_path, blobs):
  config = tiny_config(epochs=4)
  train_lib.train(config, str(tmp_path), datasets=blobs, interrupt_at_step=6)
  config.train.learning_rate = 1e4  # Resumed at a rate that diverges at once.
  with pytest.raises(TrainingDiverged, match=r"max\(1, its initial value 1\.\d+\)"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
