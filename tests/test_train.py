import json
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.checkpoint import CheckpointMismatchError, latest_checkpoint_step
from defenses_jax.evaluation import evaluate
from defenses_jax.experiment import NoCheckpointError
from defenses_jax.optim import l2_penalty
from defenses_jax.preemption import Preempted


def read_log(workdir, name="tiny"):
  with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_training_lowers_the_loss_and_learns(tmp_path, blobs):
  config = tiny_config(epochs=6, learning_rate=3e-3)
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  losses = [r["train_loss"] for r in read_log(tmp_path) if "train_loss" in r]
  assert losses[-1] < 0.5 * losses[0]
  assert summary.test_accuracy >= 0.9
  assert summary.final_step == 6 * 6
  assert os.path.exists(tmp_path / "tiny" / "results" / "train.json")
  assert os.path.exists(tmp_path / "tiny" / "config.json")


def _final_params(workdir, config, blobs, **kwargs):
  exp = experiment_lib.Experiment(config, str(workdir), blobs)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  return jax.device_get(state.as_dict())


def assert_same_state(expected: dict, actual: dict) -> None:
  """Field by field, with the field named on failure (a resume that drops one field must not
  hide behind the others)."""
  assert set(expected) == set(actual)
  for field in sorted(expected):
    chex.assert_trees_all_equal(expected[field], actual[field],
                                custom_message=f"TrainState.{field}")


@pytest.mark.parametrize("interrupt_at", [3, 7])  # Right after a checkpoint, and between two.
def test_killed_and_resumed_run_ends_with_identical_state(tmp_path, blobs, interrupt_at):
  # A model with dropout and BatchNorm, so that randomness and running statistics must resume
  # too; Adam, so that the optimizer's moments must resume.
  config = tiny_config(model="tt_mnist_cnn", epochs=2, checkpoint_every_steps=3)
  straight, _ = train_lib.train(config, str(tmp_path / "straight"), datasets=blobs)
  straight = jax.device_get(straight.as_dict())
  _, out = train_lib.train(config, str(tmp_path / "killed"), datasets=blobs,
                           interrupt_at_step=interrupt_at)
  assert out.interrupted_at_step == interrupt_at and out.final_step is None
  resumed, summary = train_lib.train(config, str(tmp_path / "killed"), datasets=blobs)
  assert summary.resumed_from_step == 3 * (interrupt_at // 3)
  resumed = jax.device_get(resumed.as_dict())
  assert int(resumed["step"]) == 12
  # Compared with the uninterrupted run's state as it was in memory, not as restored: reading
  # both through the restore path would hide a field that is not saved or not restored.
  assert_same_state(straight, resumed)
  # The fields a resume can lose really changed during training (else equality proves nothing).
  exp = experiment_lib.Experiment(config, str(tmp_path / "fresh"), blobs)
  initial = jax.device_get(exp.initial_state().as_dict())
  for field in ("params", "batch_stats", "opt_state"):
    with pytest.raises(AssertionError):
      chex.assert_trees_all_equal(initial[field], resumed[field])


def test_sigterm_saves_the_current_step_and_the_relaunch_ends_bit_identical(tmp_path, blobs):
  # Checkpoints every 100 steps: the step-7 checkpoint can only come from the SIGTERM path.
  config = tiny_config(model="tt_mnist_cnn", epochs=2, checkpoint_every_steps=100)
  straight, _ = train_lib.train(config, str(tmp_path / "straight"), datasets=blobs)
  straight = jax.device_get(straight.as_dict())
  with pytest.raises(Preempted) as stopped:
    train_lib.train(config, str(tmp_path / "preempted"), datasets=blobs, sigterm_at_step=7)
  assert stopped.value.step == 7
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is removed again.
  assert latest_checkpoint_step(str(tmp_path / "preempted"), config.experiment_name) == 7
  resumed, summary = train_lib.train(config, str(tmp_path / "preempted"), datasets=blobs)
  assert summary.resumed_from_step == 7
  assert_same_state(straight, jax.device_get(resumed.as_dict()))


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, blobs):
  config = tiny_config(epochs=1)
  a = train_lib.train_and_evaluate(config, str(tmp_path / "a"), datasets=blobs)
  b = train_lib.train_and_evaluate(config, str(tmp_path / "b"), datasets=blobs)
  config.seed = 1
  train_lib.train_and_evaluate(config, str(tmp_path / "c"), datasets=blobs)
  pa, pb, pc = (_final_params(tmp_path / d, cfg, blobs) for d, cfg in
                (("a", tiny_config(epochs=1)), ("b", tiny_config(epochs=1)), ("c", config)))
  jax.tree.map(np.testing.assert_array_equal, pa["params"], pb["params"])
  assert a.test_accuracy == b.test_accuracy
  assert not np.array_equal(pa["params"]["Dense_2"]["kernel"], pc["params"]["Dense_2"]["kernel"])


def test_checkpoint_of_another_model_is_refused_before_training(tmp_path, blobs):
  train_lib.train_and_evaluate(tiny_config(epochs=1), str(tmp_path), datasets=blobs)
  with pytest.raises(CheckpointMismatchError, match="model"):
    train_lib.train_and_evaluate(tiny_config(model="tt_mnist_cnn", epochs=1), str(tmp_path),
                                 datasets=blobs)
  # Same shapes, another experiment: a different seed, or a defense with other options, would
  # restore without complaint from orbax; the saved config refuses them.
  other_seed = tiny_config(epochs=2)
  other_seed.seed = 1
  with pytest.raises(CheckpointMismatchError, match="seed"):
    train_lib.train_and_evaluate(other_seed, str(tmp_path), datasets=blobs)
  other_defense = tiny_config(epochs=2)
  other_defense.defense.name = "adversarial_training"
  with pytest.raises(CheckpointMismatchError, match="defense"):
    train_lib.train_and_evaluate(other_defense, str(tmp_path), datasets=blobs)


def test_eval_mode_restores_the_checkpoint(tmp_path, blobs):
  config = tiny_config(epochs=3, learning_rate=3e-3)
  with pytest.raises(NoCheckpointError, match="train first"):
    evaluate(config, str(tmp_path), datasets=blobs)
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  result = evaluate(config, str(tmp_path), datasets=blobs)
  assert result.step == summary.final_step
  assert result.clean_accuracy == pytest.approx(summary.test_accuracy)


def test_batch_size_must_divide_over_devices_and_fit_the_data(tmp_path, blobs):
  with pytest.raises(ValueError, match="exceeds"):
    train_lib.train_and_evaluate(tiny_config(batch_size=512), str(tmp_path), datasets=blobs)


def test_standard_config_end_to_end_on_the_embedded_default(tmp_path):
  from experiments import standard
  config = standard.get_config("cpu")
  config.train.epochs = 2
  config.train.progress = False
  config.dataset.num_train_examples = 512
  config.dataset.num_test_examples = 100
  summary = train_lib.train_and_evaluate(config, str(tmp_path))
  assert summary.final_step == 2 * 512 // config.train.batch_size
  assert summary.num_test_examples == 100
  assert summary.test_accuracy >= 0.6, summary  # 16 Adam steps on real digits; chance 0.1.


def test_checkpoints_from_before_a_config_section_existed_still_resume(tmp_path, blobs):
  config = tiny_config(epochs=1)
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  path = tmp_path / "tiny" / "config.json"
  saved = json.loads(path.read_text())
  del saved["distill"]  # As written by a version without distillation.
  path.write_text(json.dumps(saved))
  config.train.epochs = 2
  out = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert out.resumed_from_step == 6


def test_each_step_draws_new_randomness_and_the_same_step_the_same():
  """Dropout masks (and attacks' random starts) come from fold_in(key, step): the same state
  and batch at another step count must train differently, and at the same one identically."""
  from conftest import blob_dataset
  from defenses_jax import parallel
  from defenses_jax.defenses import create_defense
  from defenses_jax.models import create_model
  model = create_model("tt_mnist_cnn", 4)  # Dropout 0.25 and 0.5.
  defense = create_defense("standard", 4)
  tx = optax.sgd(0.1)
  mesh = parallel.make_mesh(1)
  step = parallel.data_parallel(
      train_lib.make_train_step(model, defense, tx, l2_weight=0.0, l2_scope="all"), mesh,
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED))
  ds = blob_dataset(8)
  batch = parallel.shard_batch({"image": ds.images, "label": ds.labels,
                                "index": np.arange(8, dtype=np.int32)}, mesh)
  state = experiment_lib.init_train_state(model, defense, tx, jax.random.key(0), (12, 12, 1), 8, 8)
  key = jax.random.key(1)
  params = lambda at_step: jax.device_get(
      step(state.replace(step=jnp.asarray(at_step, jnp.int32)), batch, key)[0].params)
  chex.assert_trees_all_equal(params(0), params(0))
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(params(0), params(1))


def test_l2_penalty_sums_squared_kernels_of_its_scope_only():
  params = {"Conv_0": {"kernel": np.full((3, 3, 1, 2), 2.0), "bias": np.full(2, 5.0)},
            "BatchNorm_0": {"scale": np.full(2, 7.0), "bias": np.full(2, 3.0)},
            "Dense_0": {"kernel": np.full((4, 3), 1.0), "bias": np.full(3, 9.0)}}
  assert float(l2_penalty(params, "conv")) == pytest.approx(18 * 4.0)
  assert float(l2_penalty(params, "all")) == pytest.approx(18 * 4.0 + 12 * 1.0)
  with pytest.raises(ValueError, match="l2_scope"):
    l2_penalty(params, "everything")


def test_crc32c_known_answer():
  from defenses_jax.tensorboard import crc32c
  assert crc32c(b"123456789") == 0xE3069283  # The Castagnoli check value.


def _tensorboard_scalars(logdir) -> dict:
  """{tag: {step: value}} read back with TensorFlow's own event parser."""
  import tensorflow as tf
  out = {}
  (path,) = [os.path.join(logdir, f) for f in os.listdir(logdir)]
  for record in tf.data.TFRecordDataset(path):  # Checks each record's CRCs.
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def test_tensorboard_scalars_mirror_the_metrics_log_and_a_profile_is_written(tmp_path, blobs):
  config = tiny_config(epochs=2)
  config.train.profile_steps = (2, 4)
  config.train.schedule = "cosine"
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  scalars = _tensorboard_scalars(tmp_path / "tiny" / "tensorboard")
  logged = read_log(tmp_path)
  for tag in ("train_loss", "train_accuracy", "test_accuracy", "learning_rate"):
    records = [r for r in logged if tag in r]
    assert records, tag
    assert scalars[tag] == {r["step"]: pytest.approx(r[tag], rel=1e-6) for r in records}, tag
  total = max(r["step"] for r in logged)
  for step, rate in scalars["learning_rate"].items():  # The rate of the update that made `step`.
    assert rate == pytest.approx(config.train.learning_rate * 0.5 * (
        1 + np.cos(np.pi * (step - 1) / total)), rel=1e-5), step
  assert all(v > 0 for v in scalars["steps_per_second"].values())
  traces = [f for _, _, files in os.walk(tmp_path / "tiny" / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
