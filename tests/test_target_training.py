"""Target Training (paper 000) and Adversarial Training: batch construction, merged prediction,
and tiny end-to-end runs through the training loop."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import attacks
from defenses_jax import train as train_lib
from defenses_jax.defenses import create_defense
from defenses_jax.defenses.target_training import merged_class_logits, summed_pair_logits


def test_algorithm_1_duplicates_the_batch_with_labels_shifted_by_k():
  defense = create_defense("target_training", 3)
  batch = {"image": jnp.arange(4.0).reshape(2, 2, 1, 1), "label": jnp.array([0, 2])}
  out, _ = defense.training_batch(batch, jax.random.key(0), None, {})
  np.testing.assert_array_equal(out["image"], jnp.concatenate([batch["image"]] * 2))
  np.testing.assert_array_equal(out["label"], [0, 2, 3, 5])
  assert defense.output_width() == 6


def test_algorithm_3_and_adversarial_training_add_attacked_copies():
  w = jax.random.normal(jax.random.key(0), (4, 6))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  batch = {"image": jnp.full((2, 2, 2, 1), 0.5), "label": jnp.array([1, 2])}
  params = {"eps": 0.1}
  tt = create_defense("target_training", 3, attack="fgsm", attack_params=params)
  out, _ = tt.training_batch(batch, jax.random.key(0), logits_fn, {})
  expected_adv = attacks.fgsm(logits_fn, batch["image"], batch["label"], jax.random.key(0),
                              eps=0.1)
  np.testing.assert_allclose(out["image"][2:], expected_adv)
  np.testing.assert_array_equal(out["label"], [1, 2, 4, 5])
  at = create_defense("adversarial_training", 6, attack="fgsm", attack_params=params)
  out, _ = at.training_batch(batch, jax.random.key(0), logits_fn, {})
  np.testing.assert_array_equal(out["label"], [1, 2, 1, 2])
  with pytest.raises(ValueError, match="unknown attack"):
    create_defense("target_training", 3, attack="pgdd")


def test_prediction_merges_each_class_with_its_duplicate():
  # p = [0.3, 0.1, 0.05 | 0.0, 0.35, 0.2]: class 1 wins with 0.45 though p_0 is the largest of
  # the first half and p_4 the largest overall.
  p = jnp.array([[0.3, 0.1, 0.05, 0.0 + 1e-9, 0.35, 0.2]])
  merged = merged_class_logits(jnp.log(p), 3)
  np.testing.assert_allclose(jnp.exp(merged), [[0.3, 0.45, 0.25]], rtol=1e-5)
  assert int(jnp.argmax(merged)) == 1
  logits = jax.random.normal(jax.random.key(1), (5, 8))
  q = jax.nn.softmax(logits)
  np.testing.assert_allclose(merged_class_logits(logits, 4), jnp.log(q[:, :4] + q[:, 4:]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(summed_pair_logits(logits, 4), logits[:, :4] + logits[:, 4:])


@pytest.mark.parametrize("defense,options", [
    ("target_training", {}),
    ("target_training", {"attack": "fgsm", "attack_params": {"eps": 0.3}}),
    ("adversarial_training", {"attack": "fgsm", "attack_params": {"eps": 0.3}}),
])
def test_tiny_end_to_end_runs(tmp_path, blobs, defense, options):
  config = tiny_config(epochs=3, learning_rate=3e-3)
  config.defense.name = defense
  config.defense.options = ml_collections.ConfigDict(options)
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert summary["test_accuracy"] >= 0.5  # 4 classes: chance is 0.25.
