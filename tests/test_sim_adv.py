"""SIM-Adv and its single-step baselines (paper 001): the per-example buffer, Free-Adv's replays
and input-gradient update, ATDA's losses against hand-computed values, resumption."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.defenses import atda, create_defense

EPS, N1, N2 = 0.2, 4, 6


def linear_two_class(w):
  """logits = [0, x . w]: the CE gradient sign for label 0 is sign(w), for label 1 -sign(w)."""
  return lambda x: jnp.stack([jnp.zeros(x.shape[0]), x.reshape(x.shape[0], -1) @ w], -1)


def run_training_batch(defense, state, batch, logits_fn):
  mesh = parallel.make_mesh(1)
  specs = defense.state_specs()

  def per_device(state, batch):
    return defense.training_batch(batch, jax.random.key(0), logits_fn, state)

  fn = parallel.data_parallel(per_device, mesh, in_specs=(specs, parallel.SHARDED),
                              out_specs=(parallel.SHARDED, specs))
  return fn(parallel.place(state, specs, mesh), parallel.shard_batch(batch, mesh))


def test_sim_buffer_takes_one_step_per_epoch_and_restarts_every_n2_epochs():
  w = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], 16))
  fn = linear_two_class(w)
  defense = create_defense("sim_adv", 2, eps=EPS, n1=N1, n2=N2)
  n = 8
  images = np.full((n, 4, 4, 1), 0.5, np.float32)  # Mid-grey: the box never binds.
  labels = np.arange(n) % 2
  state = defense.init_state(n, (4, 4, 1), 4)
  direction = np.where(labels[:, None] == 0, 1.0, -1.0) * np.sign(np.asarray(w))[None]
  for epoch in range(2 * N2 + 2):
    steps_since_restart = epoch % N2 + 1
    expected = min(steps_since_restart, N1) * EPS / N1 * direction
    for half in (np.arange(0, n, 2), np.arange(1, n, 2)):  # Two batches per epoch.
      batch = {"image": images[half], "label": labels[half], "index": half.astype(np.int32),
               "epoch": np.full(half.shape, epoch, np.int32)}
      train_batch, state = run_training_batch(defense, state, batch, fn)
      # The batch trains on its clean images and their new adversarial versions.
      trained_on = np.asarray(train_batch["image"]).reshape(2 * len(half), -1)
      np.testing.assert_array_equal(trained_on[:len(half)], images[half].reshape(len(half), -1))
      np.testing.assert_allclose(trained_on[len(half):], 0.5 + expected[half], atol=1e-6,
                                 err_msg=f"epoch {epoch}: adversarial half")
      np.testing.assert_array_equal(np.asarray(train_batch["label"]),
                                    np.concatenate([labels[half]] * 2))
    np.testing.assert_allclose(np.asarray(state["perturbation"]).reshape(n, -1), expected,
                               atol=1e-6, err_msg=f"epoch {epoch}")


def test_sim_adv_run_resumes_exactly_including_the_buffer(tmp_path, blobs):
  config = tiny_config(epochs=3, checkpoint_every_steps=4)
  config.defense.name = "sim_adv"
  config.defense.options = {"eps": 0.3, "n1": 2, "n2": 3}
  train_lib.train_and_evaluate(config, str(tmp_path / "straight"), datasets=blobs)
  train_lib.train_and_evaluate(config, str(tmp_path / "killed"), datasets=blobs,
                               interrupt_at_step=7)
  resumed = train_lib.train_and_evaluate(config, str(tmp_path / "killed"), datasets=blobs)
  assert resumed.resumed_from_step == 4

  def final(workdir):
    exp = experiment_lib.Experiment(config, str(workdir), blobs)
    ckpt = exp.checkpoints()
    state = exp.restore_or_init(ckpt)
    ckpt.close()
    return jax.device_get(state.as_dict())

  assert resumed.training_seconds > 0
  # Re-running a finished experiment keeps the timing of the run that trained it.
  again_summary = train_lib.train_and_evaluate(config, str(tmp_path / "killed"), datasets=blobs)
  assert again_summary.seconds_per_step == resumed.seconds_per_step
  straight, again = final(tmp_path / "straight"), final(tmp_path / "killed")
  buffer = straight["defense_state"]["perturbation"]
  assert buffer.shape == (96, 12, 12, 1) and np.abs(buffer).max() == pytest.approx(0.3)
  jax.tree.map(np.testing.assert_array_equal, straight, again)


def test_free_adv_replays_each_batch_and_steps_along_the_input_gradient(blobs):
  train, _ = blobs
  once = [b["index"] for b in data_lib.train_batches(train, 16, seed=0, epoch=0)]
  thrice = [b["index"] for b in data_lib.train_batches(train, 16, seed=0, epoch=0, replays=3)]
  assert len(thrice) == 3 * len(once)
  for i, idx in enumerate(once):
    for r in range(3):
      np.testing.assert_array_equal(thrice[3 * i + r], idx)
  resumed = [b["index"] for b in data_lib.train_batches(train, 16, seed=0, epoch=0, replays=3,
                                                        start_step=4)]
  assert len(resumed) == len(thrice) - 4
  np.testing.assert_array_equal(resumed[0], thrice[4])

  defense = create_defense("free_adv", 4, eps=0.1)
  state = {"perturbation": jnp.full((2, 3), 0.05)}
  grad = jnp.asarray([[1.0, -2.0, 0.0], [-0.5, 3.0, 1.0]])
  new = defense.after_step(state, {}, {}, grad)["perturbation"]
  np.testing.assert_allclose(new, [[0.1, -0.05, 0.05], [-0.05, 0.1, 0.1]], atol=1e-7)
  batch = {"image": jnp.full((2, 3), 0.98), "label": jnp.zeros(2, jnp.int32)}
  train_batch, _ = defense.training_batch(batch, None, None, {"perturbation": new})
  np.testing.assert_allclose(train_batch["image"], [[1.0, 0.93, 1.0], [0.93, 1.0, 1.0]],
                             atol=1e-6)  # Only the adversarial copy, clipped to [0, 1].


def test_free_adv_trains_with_replays_end_to_end(tmp_path, blobs):
  config = tiny_config(epochs=1)
  config.defense.name = "free_adv"
  config.defense.options = {"eps": 0.1}
  config.train.replays = 3
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert summary.final_step == 3 * 6


def test_atda_losses_match_hand_computed_values():
  clean = np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
  adv = np.array([[0.0, 1.0, 1.0], [2.0, 2.0, 0.0], [1.0, 1.0, 3.0]])
  k = 3
  coral = np.abs(np.cov(clean, rowvar=False) - np.cov(adv, rowvar=False)).sum() / k**2
  mmd = np.abs(clean.mean(0) - adv.mean(0)).sum() / k
  np.testing.assert_allclose(atda.coral_loss(jnp.asarray(clean), jnp.asarray(adv)), coral,
                             rtol=1e-6)
  np.testing.assert_allclose(atda.mmd_loss(jnp.asarray(clean), jnp.asarray(adv)), mmd, rtol=1e-6)

  logits = np.concatenate([clean, adv])
  labels = np.array([0, 1, 2, 0, 1, 2])
  centers = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  total = 0.0
  for x, y in zip(logits, labels):
    own = np.abs(x - centers[y]).sum()
    for m in range(k):
      if m != y:
        total += np.log1p(np.exp(own - np.abs(x - centers[m]).sum()))
  np.testing.assert_allclose(atda.sda_loss(jnp.asarray(logits), jnp.asarray(labels),
                                           jnp.asarray(centers)),
                             total / ((k - 1) * len(logits)), rtol=1e-6)

  beta = 0.1
  expected = centers.copy()
  for m in range(k):
    members = logits[labels == m]
    expected[m] = centers[m] - beta * (centers[m] - members).sum(0) / (1 + len(members))
  np.testing.assert_allclose(atda.updated_centers(jnp.asarray(centers), jnp.asarray(logits),
                                                  jnp.asarray(labels), beta), expected,
                             rtol=1e-6)


def test_atda_trains_end_to_end_and_moves_its_centers(tmp_path, blobs):
  config = tiny_config(epochs=1)
  config.defense.name = "atda"
  config.defense.options = {"eps": 0.1, "domain_weight": 0.3}
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  exp = experiment_lib.Experiment(config, str(tmp_path), blobs)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  centers = np.asarray(state.defense_state["centers"])
  assert np.isfinite(centers).all() and np.abs(centers).max() > 0
