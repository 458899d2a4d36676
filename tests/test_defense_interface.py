"""The Defense interface: declared defaults, the deployed classifier as a function of the input
(with a key for randomised defenses), and what each threat model's attacker differentiates."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import attacks, defenses, parallel
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.attacks import call_logits
from defenses_jax.defenses import Defense, Deployed, create_defense
from defenses_jax.defenses.base import unit_weighted
from defenses_jax.evaluation.runner import make_predictor
from defenses_jax.evaluation.threat_models import parse_attack_specs
from experiments.common import attack


@dataclasses.dataclass(frozen=True)
class RandomLabel(Defense):
  """A randomised toy defense: with probability 1/2 (per example, from the key) it answers the
  network's class, otherwise the next class. Its prediction depends on the key only."""
  num_classes: int
  name: str = "random_label"
  randomised = True

  def training_batch(self, batch, key, logits_fn, defense_state):
    return unit_weighted(batch["image"], batch["label"]), defense_state

  def deployed(self, net, x, key=None, detector=None):
    logits = net(x)
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1))
    return Deployed(jnp.where(flip, jnp.roll(logits, 1, axis=-1), logits))


def linear_net(num_classes=4, pixels=16):
  w = jax.random.normal(jax.random.key(0), (pixels, num_classes))
  return lambda x: x.reshape(x.shape[0], -1) @ w


def test_defaults_are_declared_on_the_base_class():
  standard = create_defense("standard", 4)
  assert standard.output_width() == 4 and standard.init_state(8, (2, 2, 1), 4) == {}
  assert standard.state_specs() == parallel.REPLICATED
  assert standard.after_step({"a": 1}, {}, {}, None) == {"a": 1}
  assert not standard.needs_input_gradient and not standard.randomised
  assert standard.attack_surfaces() == {} and standard.resolve(None, (2, 2, 1), 4) is standard
  assert set(create_defense("target_training", 4).attack_surfaces()) == {"adaptive"}
  assert create_defense("free_adv", 4).needs_input_gradient
  net = linear_net()
  x = jnp.full((2, 4, 4, 1), 0.5)
  np.testing.assert_allclose(standard.deployed(net, x).class_logits, net(x))
  assert standard.deployed(net, x).detector_score is None
  with pytest.raises(ValueError, match="no adaptive attack"):
    standard.attack_target("adaptive", net)
  with pytest.raises(ValueError, match="no adaptive"):
    parse_attack_specs(ml_collections.ConfigDict({"a": attack("fgsm", "x", eps=0.1,
                                                              threat_model="adaptive")}),
                       standard)


def test_each_threat_model_differentiates_its_own_target():
  tt = create_defense("target_training", 4)
  net = linear_net(num_classes=8)
  x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
  z = net(x)
  p = jax.nn.softmax(z)
  logits = lambda threat: call_logits(tt.attack_target(threat, net), x, jax.random.key(0))
  np.testing.assert_allclose(logits("white_box"), jnp.log(p[:, :4] + p[:, 4:]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(logits("transfer"), jnp.log(p[:, :4] + p[:, 4:]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(logits("gray_box"), z)
  np.testing.assert_allclose(logits("adaptive"), z[:, :4] + z[:, 4:])


def test_a_randomised_defense_draws_from_the_key_it_is_given_everywhere(tmp_path, monkeypatch):
  defense = RandomLabel(4)
  net = linear_net()
  x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 1))
  a = defense.deployed(net, x, jax.random.key(1)).class_logits
  b = defense.deployed(net, x, jax.random.key(2)).class_logits
  np.testing.assert_array_equal(a, defense.deployed(net, x, jax.random.key(1)).class_logits)
  assert not np.array_equal(a, b)
  # The white-box target draws from the key an attack passes it at every call.
  target = defense.attack_target("white_box", net)
  np.testing.assert_array_equal(call_logits(target, x, jax.random.key(1)), a)
  x_adv, _ = attacks.pgd(target, x, jnp.argmax(net(x), -1), jax.random.key(0), eps=0.1,
                      step_size=0.05, steps=2)
  assert x_adv.shape == x.shape

  # Through the pipeline: the data-parallel predictor and the training loop's eval step.
  monkeypatch.setitem(defenses.DEFENSES, "random_label", RandomLabel)
  datasets = blob_dataset(96, seed=0), blob_dataset(64, seed=1)
  config = tiny_config(epochs=3, learning_rate=3e-3)
  config.defense.name = "random_label"
  state, summary = train_lib.train(config, str(tmp_path), datasets)
  # The network is right; the flips make the deployed classifier right about half the time.
  assert 0.3 < summary.test_accuracy < 0.7, summary
  exp = experiment_lib.Experiment(config, str(tmp_path), datasets)
  predict = make_predictor(exp.model, exp.defense, exp.mesh)
  images = parallel.shard_batch({"x": datasets[1].images}, exp.mesh)["x"]
  first = np.asarray(predict(state.params, state.batch_stats, images, jax.random.key(1)))
  again = np.asarray(predict(state.params, state.batch_stats, images, jax.random.key(1)))
  other = np.asarray(predict(state.params, state.batch_stats, images, jax.random.key(2)))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  accuracy = lambda key: experiment_lib.evaluate_clean(exp.eval_step(), state, exp.test_ds, 16,
                                                  exp.mesh, key)
  assert accuracy(jax.random.key(1)) == accuracy(jax.random.key(1))
  assert accuracy(jax.random.key(1)) != accuracy(jax.random.key(2))


@dataclasses.dataclass(frozen=True)
class NoisyInput(Defense):
  """A randomised toy defense: Gaussian noise on the input before the network."""
  num_classes: int
  sigma: float = 0.3
  name: str = "noisy_input"
  randomised = True

  def training_batch(self, batch, key, logits_fn, defense_state):
    return unit_weighted(batch["image"], batch["label"]), defense_state

  def deployed(self, net, x, key=None, detector=None):
    noisy = jnp.clip(x + self.sigma * jax.random.normal(key, x.shape), 0.0, 1.0)
    return Deployed(net(noisy))


def test_a_randomised_defense_is_evaluated_with_eot(tmp_path, monkeypatch):
  from defenses_jax.evaluation import evaluate
  monkeypatch.setitem(defenses.DEFENSES, "noisy_input", NoisyInput)
  datasets = blob_dataset(96, seed=0), blob_dataset(32, seed=1)
  config = tiny_config(epochs=4, learning_rate=3e-3)
  config.defense.name = "noisy_input"
  config.eval.num_attack_examples = 32
  config.eval.sanity.enabled = False
  pgd = dict(eps=0.2, step_size=0.04, steps=10, random_start=False)
  config.eval.attacks = ml_collections.ConfigDict({
      "pgd": attack("pgd", "PGD, one draw per step", **pgd),
      "pgd_eot": attack("pgd", "PGD, EOT over 16 draws", eot_samples=16, **pgd)})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  out = evaluate(config, str(tmp_path), datasets=datasets)
  single, averaged = (out.attacks[k].robust_accuracy for k in ("pgd", "pgd_eot"))
  assert out.clean_accuracy_attacked_subset > 0.5
  # Averaging the gradient over the defense's randomness is the stronger attack (here 0.75
  # against 1.0: one noisy draw per step does not break this model at all).
  assert averaged <= single - 0.1, (averaged, single)
  # EOT against a deterministic defense is a configuration error.
  config.defense.name = "standard"
  with pytest.raises(ValueError, match="randomised"):
    parse_attack_specs(config.eval.attacks, create_defense("standard", 4))
