"""Target Training (paper 000) and Adversarial Training: batch construction, merged prediction,
and tiny end-to-end runs through the training loop."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import experiment as experiment_lib
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


def numpy_fgsm(x, labels, w, eps):
  """FGSM on logits = x . w, computed by hand: the cross-entropy's input gradient is
  w (softmax(z) - onehot(y)), and the step is eps times its sign, clipped to [0, 1]."""
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  z = flat @ w
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  grad = (p - np.eye(w.shape[1])[labels]) @ w.T
  return np.clip(flat + eps * np.sign(grad), 0.0, 1.0).reshape(x.shape)


@pytest.mark.parametrize("name,num_classes,label_offset", [
    ("target_training", 3, 3),  # Algorithm 3: the attacked copies are labelled y + k.
    ("adversarial_training", 6, 0),
    ("atda", 6, 0),
])
def test_the_second_half_of_the_batch_is_the_attack_output(name, num_classes, label_offset):
  w = np.asarray(jax.random.normal(jax.random.key(0), (4, 6)), np.float64)
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, jnp.float32)
  rng = np.random.default_rng(0)
  images = rng.uniform(0.4, 0.6, (3, 2, 2, 1)).astype(np.float32)
  labels = np.array([1, 2, 0])
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  options = {"eps": 0.1} if name == "atda" else {"attack": "fgsm",
                                                  "attack_params": {"eps": 0.1}}
  defense = create_defense(name, num_classes, **options)
  state = defense.init_state(3, (2, 2, 1), 3)
  out, _ = defense.training_batch(batch, jax.random.key(0), logits_fn, state)
  np.testing.assert_array_equal(out["image"][:3], images)
  # The attacker (of Algorithm 3 too) sees the whole network and the true label.
  np.testing.assert_allclose(out["image"][3:], numpy_fgsm(images, labels, w, 0.1), atol=1e-6)
  np.testing.assert_array_equal(out["label"], np.concatenate([labels, labels + label_offset]))
  with pytest.raises(ValueError, match="unknown attack"):
    create_defense("target_training", 3, attack="pgdd")
  if name == "adversarial_training":  # Madry et al.: the attacked copies alone.
    madry = create_defense(name, num_classes, include_clean=False, **options)
    only, _ = madry.training_batch(batch, jax.random.key(0), logits_fn, state)
    np.testing.assert_allclose(only["image"], out["image"][3:], atol=1e-6)
    np.testing.assert_array_equal(only["label"], labels)


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
  assert summary.test_accuracy >= 0.5  # 4 classes: chance is 0.25.


# A network whose class scores do not depend on the input: logits = bias of the last layer.
# argmax of p_0..p_3 is class 0, but p_1 + p_5 = 2 e^1.5 > e^2 + e^0 = p_0 + p_4, so the deployed
# Target Training classifier, argmax_i (p_i + p_{i+4}), answers class 1.
CONSTANT_LOGITS = np.array([2.0, 1.5, 0.0, 0.0, 0.0, 1.5, 0.0, 0.0], np.float32)


def test_every_call_site_uses_the_merged_deployed_classifier(tmp_path):
  from conftest import blob_dataset
  from defenses_jax import data as data_lib
  from defenses_jax.evaluation import evaluate
  from defenses_jax.evaluation.monitor import RobustnessMonitor
  from defenses_jax.attacks import call_logits
  from defenses_jax.evaluation.threat_models import TargetBuilder
  from experiments.common import attack

  ones = lambda ds: data_lib.ArrayDataset(ds.images, np.ones_like(ds.labels), 4, ds.name)
  datasets = ones(blob_dataset(32, seed=0)), ones(blob_dataset(16, seed=1))  # Every label is 1.
  config = tiny_config(epochs=1)
  config.defense.name = "target_training"
  config.eval.num_attack_examples = 16
  config.eval.sanity.enabled = False
  config.eval.attacks = ml_collections.ConfigDict(
      {"fgsm": attack("fgsm", "FGSM", eps=0.3), "pgd": attack("pgd", "PGD", eps=0.3,
                                                                 step_size=0.1, steps=2)})
  config.eval.monitor.attack = "pgd"
  config.eval.monitor.num_examples = 16
  exp = experiment_lib.Experiment(config, str(tmp_path), datasets)
  state = exp.initial_state()
  params = jax.device_get(state.params)
  params["Dense_2"]["kernel"] = np.zeros_like(params["Dense_2"]["kernel"])
  params["Dense_2"]["bias"] = CONSTANT_LOGITS
  state = state.replace(params=params, step=jnp.ones((), jnp.int32))
  ckpt = exp.checkpoints()
  ckpt.save(1, state.as_dict(), force=True)
  ckpt.close()

  # Clean accuracy during training (the eval step).
  assert experiment_lib.evaluate_clean(exp.eval_step(), state, exp.test_ds, 16, exp.mesh) == 1.0
  # The white-box attacker differentiates log(p_i + p_{i+k}); the gray-box one the raw logits.
  x = jnp.asarray(datasets[1].images[:2])
  p = np.exp(CONSTANT_LOGITS) / np.exp(CONSTANT_LOGITS).sum()
  logits = lambda threat: call_logits(
      TargetBuilder(threat, exp.model, exp.defense)(params, state.batch_stats), x, None)
  white = logits("white_box")
  np.testing.assert_allclose(white, np.log(p[:4] + p[4:])[None].repeat(2, 0), rtol=1e-5)
  gray = logits("gray_box")
  np.testing.assert_allclose(gray, CONSTANT_LOGITS[None].repeat(2, 0), rtol=1e-6)
  # The robustness monitor and the evaluation's predictor score the merged class.
  assert RobustnessMonitor(config, exp)(state) == 1.0
  out = evaluate(config, str(tmp_path), datasets=datasets)
  assert out.clean_accuracy == 1.0 and out.clean_accuracy_attacked_subset == 1.0
  assert out.attacks["fgsm"].robust_accuracy == 1.0
  assert out.attacks["pgd"].robust_accuracy == 1.0
