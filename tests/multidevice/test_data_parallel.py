"""Runs with 8 fake CPU devices (see tests/test_parallel.py, which starts this process)."""

import chex
import jax
import numpy as np
import optax
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.defenses import create_defense
from defenses_jax.models import create_model


def _steps(mesh, batches, model, defense, tx, state):
  step = parallel.data_parallel(
      train_lib.make_train_step(model, defense, tx, l2_weight=1e-3, l2_scope="all"), mesh,
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED))
  state = parallel.replicate(state, mesh)
  key = parallel.replicate(jax.random.key(0), mesh)
  for batch in batches:
    state, _ = step(state, parallel.shard_batch(batch, mesh), key)
  return jax.device_get(state.as_dict())


def test_eight_devices_match_one_device_on_the_same_global_batch():
  assert jax.device_count() == 8
  ds = blob_dataset(64)
  batches = list(data_lib.train_batches(ds, 32, seed=0, epoch=0))  # 2 steps of 32 = 8 x 4.
  model = create_model("lenet", 4)  # No BatchNorm or dropout: the step is deterministic.
  defense = create_defense("standard", 4)
  tx = optax.sgd(0.1, momentum=0.9)
  state = experiment_lib.init_train_state(model, defense, tx, jax.random.key(0), (12, 12, 1),
                                          64, 32)
  one = _steps(parallel.make_mesh(1), batches, model, defense, tx, state)
  eight = _steps(parallel.make_mesh(8), batches, model, defense, tx, state)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), one["params"],
                       jax.device_get(state.params))
  assert max(jax.tree.leaves(moved)) > 1e-3  # The steps really changed the parameters.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               one["params"], eight["params"])


def test_batchnorm_dropout_model_trains_and_resumes_on_eight_devices(tmp_path):
  blobs = blob_dataset(128), blob_dataset(40, seed=1)
  config = tiny_config(model="tt_mnist_cnn", epochs=2, batch_size=32, checkpoint_every_steps=3)
  config.eval.batch_size = 16
  straight, summary = train_lib.train(config, str(tmp_path / "a"), datasets=blobs)
  assert summary.num_devices == 8
  straight = jax.device_get(straight.as_dict())
  train_lib.train(config, str(tmp_path / "b"), datasets=blobs, interrupt_at_step=4)
  resumed, summary = train_lib.train(config, str(tmp_path / "b"), datasets=blobs)
  assert summary.resumed_from_step == 3
  resumed = jax.device_get(resumed.as_dict())
  # Every field, against the uninterrupted run's in-memory state (not read back through the
  # restore path under test): params, BatchNorm statistics, optimizer moments, step.
  for field in sorted(straight):
    chex.assert_trees_all_equal(straight[field], resumed[field],
                                custom_message=f"TrainState.{field}")


def test_batchnorm_running_statistics_are_averaged_over_devices():
  """As under pmap, each device normalises with its own shard's statistics and the running
  statistics are then averaged over the devices. So after one step on 8 devices they must equal
  the average of eight 1-device steps, one on each shard (not their sum or maximum). BatchNorm
  runs before either dropout layer of this model, so one step's statistics do not depend on the
  dropout masks (which differ per device)."""
  ds = blob_dataset(32, seed=3)
  model = create_model("tt_mnist_cnn", 4)
  defense = create_defense("standard", 4)
  tx = optax.sgd(0.1)
  state = experiment_lib.init_train_state(model, defense, tx, jax.random.key(0), (12, 12, 1),
                                          32, 32)
  batch = {"image": ds.images, "label": ds.labels, "index": np.arange(32, dtype=np.int32)}
  eight = _steps(parallel.make_mesh(8), [batch], model, defense, tx, state)
  one_mesh = parallel.make_mesh(1)
  per_shard = [_steps(one_mesh, [{k: v[4 * i:4 * i + 4] for k, v in batch.items()}], model,
                      defense, tx, state)["batch_stats"] for i in range(8)]
  expected = jax.tree.map(lambda *shards: np.mean(shards, axis=0), *per_shard)
  before = jax.device_get(state.batch_stats)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), expected, before)
  assert min(jax.tree.leaves(moved)) > 1e-4  # The step really updated every statistic.
  spread = jax.tree.map(lambda *shards: np.ptp(shards, axis=0).max(), *per_shard)
  assert min(jax.tree.leaves(spread)) > 1e-4  # The shards differ, so mean != max != sum.
  chex.assert_trees_all_close(eight["batch_stats"], expected, rtol=1e-5, atol=1e-6)


def test_evaluation_on_eight_devices_matches_one_device(tmp_path):
  import ml_collections
  from defenses_jax.evaluation import evaluate
  from experiments.common import attack
  blobs = blob_dataset(128), blob_dataset(40, seed=1)
  config = tiny_config(epochs=2, batch_size=32)
  config.eval.num_attack_examples = 32
  config.eval.sanity.enabled = False
  config.eval.attacks = ml_collections.ConfigDict({
      "pgd": attack("pgd", "PGD", eps=0.3, step_size=0.05, steps=5, random_start=False),
      "deepfool": attack("deepfool", "DeepFool"),
      "cw": attack("cw_l2", "CW", binary_search_steps=2, max_iterations=20),
      # A query attack with slot refill: 4 slots on each of 8 devices against 32 on one, each
      # image's noise and directions from its position in the set.
      "hsj": attack("hop_skip_jump", "HSJ", steps=3, init_evals=10, max_init_queries=20,
                    chunk=8)})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  eight = evaluate(config, str(tmp_path), datasets=blobs)
  config.num_devices = 1
  one = evaluate(config, str(tmp_path), datasets=blobs)
  for key in ("pgd", "deepfool", "cw", "hsj"):
    assert eight.attacks[key].robust_accuracy == one.attacks[key].robust_accuracy
    np.testing.assert_allclose(eight.attacks[key].median_l2, one.attacks[key].median_l2,
                               rtol=1e-4)
  assert eight.attacks["hsj"].queries == one.attacks["hsj"].queries
  assert eight.attacks["hsj"].attack_success_rate > 0


@pytest.mark.parametrize("defense,options", [
    ("sim_adv", {"eps": 0.3, "n1": 2, "n2": 3}), ("free_adv", {"eps": 0.1})])
def test_sharded_defense_state_on_eight_devices_matches_one_device(tmp_path, defense, options):
  """SIM-Adv's per-example buffer (split in row blocks over the devices) and Free-Adv's
  batch-shaped perturbation end the same on 8 devices as on 1."""
  blobs = blob_dataset(128), blob_dataset(40, seed=1)
  finals = []
  for devices in (1, 8):
    config = tiny_config(epochs=2, batch_size=32)
    config.num_devices = devices
    config.defense.name = defense
    config.defense.options = options
    workdir = str(tmp_path / str(devices))
    train_lib.train_and_evaluate(config, workdir, datasets=blobs)
    exp = experiment_lib.Experiment(config, workdir, blobs)
    ckpt = exp.checkpoints()
    finals.append(jax.device_get(exp.restore_or_init(ckpt).as_dict()))
    ckpt.close()
  one, eight = finals
  assert np.abs(one["defense_state"]["perturbation"]).max() > 0.05
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               {k: one[k] for k in ("params", "defense_state")},
               {k: eight[k] for k in ("params", "defense_state")})
