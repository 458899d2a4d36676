"""Paper 004's defense f_a(g(x)): a frozen f_b restored from its own experiment, g inside the
compiled train and eval steps, the deployed classifier randomised through g's start."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.checkpoint import CheckpointMismatchError
from defenses_jax.defenses import create_defense
from defenses_jax.defenses.base import Network
from defenses_jax.models import create_model


def untrained(**options):
  defense = create_defense("adv_transform", 4, transform_model="lenet", **options)
  return defense.bind_trained(None, (12, 12, 1))


def test_options_are_checked_before_compute_and_the_defense_stays_hashable():
  with pytest.raises(ValueError, match="exactly one f_b"):
    create_defense("adv_transform", 4)
  with pytest.raises(ValueError, match="exactly one f_b"):
    create_defense("adv_transform", 4, transform_model="lenet", transform_experiment="fb")
  with pytest.raises(ValueError, match="variant"):
    create_defense("adv_transform", 4, transform_model="lenet", variant="authors")
  with pytest.raises(ValueError, match="delta > 0"):
    create_defense("adv_transform", 4, transform_model="lenet", delta=-0.1)
  defense = untrained()
  hash(defense)
  assert defense.randomised and not untrained(random_start=False).randomised
  assert untrained(variant="code").settings.step_fraction == pytest.approx(0.1)
  with pytest.raises(ValueError, match="not attached"):
    create_defense("adv_transform", 4, transform_model="lenet").transform(jnp.zeros((1, 12, 12, 1)))


def test_deployed_is_f_a_of_g_with_g_in_the_ball_and_a_fresh_draw_per_key():
  defense = untrained(delta=0.1, steps=3)
  x = jnp.asarray(blob_dataset(8, seed=0).images)
  # f_a: the identity on the image's first 4 pixels, so class scores reveal g(x) itself.
  fa = lambda z: z.reshape(z.shape[0], -1)[:, :4]
  out = defense.deployed(fa, x, jax.random.key(0)).class_logits
  g = np.asarray(defense.transform(x, jax.random.key(0)))
  np.testing.assert_allclose(out, g.reshape(8, -1)[:, :4])
  assert np.abs(g - np.asarray(x)).max() <= 0.1 + 1e-6 and g.min() >= 0 and g.max() <= 1
  assert np.abs(g - np.asarray(x)).max() > 0.05  # g moved the input.
  again = defense.deployed(fa, x, jax.random.key(0)).class_logits
  other = defense.deployed(fa, x, jax.random.key(1)).class_logits
  np.testing.assert_array_equal(out, again)
  assert not np.allclose(out, other)
  # The white-box target is stochastic: attacks pass it a fresh key each call.
  assert getattr(defense.attack_target("white_box", fa), "stochastic", False)


def test_training_batch_is_g_of_the_batch_and_no_gradient_reaches_f_b():
  defense = untrained(delta=0.1, steps=3)
  ds = blob_dataset(8, seed=0)
  batch = {"image": jnp.asarray(ds.images), "label": jnp.asarray(ds.labels)}
  out, _ = defense.training_batch(batch, jax.random.key(3), None, {})
  np.testing.assert_array_equal(out["image"], defense.transform(batch["image"],
                                                                jax.random.key(3)))
  np.testing.assert_array_equal(out["label"], ds.labels)
  # f_b's variables as the argument of the training images: their gradient is exactly 0.
  fb = defense.frozen

  def training_image_sum(fb_variables):
    swapped = dataclasses.replace(defense, frozen=Network(fb.model, fb_variables))
    return jnp.sum(swapped.training_batch(batch, jax.random.key(3), None, {})[0]["image"])

  grads = jax.grad(training_image_sum)(fb.variables)
  assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(grads))


def fb_and_fa_configs(fb_epochs=1):
  fb = tiny_config(epochs=fb_epochs, learning_rate=3e-3)
  fb.experiment_name = "fb"
  fa = tiny_config(epochs=2, learning_rate=3e-3)
  fa.experiment_name = "fa"
  fa.defense.name = "adv_transform"
  fa.defense.options.transform_experiment = "fb"
  fa.defense.options.delta = 0.1
  fa.defense.options.steps = 3
  return fb, fa


def test_f_a_trains_on_g_with_f_b_frozen_and_refuses_a_retrained_f_b(tmp_path):
  datasets = blob_dataset(96, seed=0), blob_dataset(32, seed=1)
  fb_config, fa_config = fb_and_fa_configs()
  train_lib.train_and_evaluate(fb_config, str(tmp_path), datasets)
  fb_before = experiment_lib.load_experiment(str(tmp_path), "fb", datasets=datasets)
  summary = train_lib.train_and_evaluate(fa_config, str(tmp_path), datasets)
  assert summary["test_accuracy"] > 0.5  # Blobs survive a 0.1 transformation.
  with open(tmp_path / "fa" / "config.json") as f:
    saved = json.load(f)["defense"]["options"]
  assert saved["transform_step"] == int(fb_before.state.step)
  fb_after = experiment_lib.load_experiment(str(tmp_path), "fb", datasets=datasets)
  for a, b in zip(jax.tree.leaves(fb_before.state.params), jax.tree.leaves(fb_after.state.params)):
    np.testing.assert_array_equal(a, b)
  fa = experiment_lib.load_experiment(str(tmp_path), "fa", datasets=datasets)
  # f_b is not part of f_a's state: same parameter tree as a plain f_a.
  plain = create_model("lenet", 4).init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))["params"]
  assert jax.tree.structure(fa.state.params) == jax.tree.structure(plain)
  # The deployed classifier runs g on f_b from fb's checkpoint.
  np.testing.assert_array_equal(jax.tree.leaves(fa.exp.defense.frozen.variables["params"])[0],
                                jax.tree.leaves(fb_before.state.params)[0])
  # f_b trained further: f_a (trained on the old f_b) is refused, restored or resumed.
  fb_longer, _ = fb_and_fa_configs(fb_epochs=2)
  train_lib.train_and_evaluate(fb_longer, str(tmp_path), datasets)
  with pytest.raises(ValueError, match="f_b 'fb' is at step"):
    experiment_lib.load_experiment(str(tmp_path), "fa", datasets=datasets)
  with pytest.raises(CheckpointMismatchError, match="defense"):
    train_lib.train_and_evaluate(fa_config, str(tmp_path), datasets)
