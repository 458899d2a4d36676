"""Paper 004's defense f_a(g(x)): a frozen f_b restored from its own experiment, g inside the
compiled train and eval steps, the deployed classifier randomised through g's start."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.attacks import call_logits
from defenses_jax.checkpoint import CheckpointMismatchError
from defenses_jax.evaluation import evaluate
from experiments.common import attack
from defenses_jax.defenses import create_defense
from defenses_jax.defenses.base import Network
from defenses_jax.models import create_model


def untrained(**options):
  defense = create_defense("adv_transform", 4, transform_model="lenet", **options)
  return defense.resolve(None, (12, 12, 1), batch_size=8)


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
  # The white-box target draws from the key an attack passes it at each call.
  target = defense.attack_target("white_box", fa)
  np.testing.assert_array_equal(call_logits(target, x, jax.random.key(0)), out)
  np.testing.assert_array_equal(call_logits(target, x, jax.random.key(1)), other)


@pytest.mark.parametrize("surface", ["", "bpda_identity"])
def test_eot_gradient_of_the_deployed_classifier_is_the_mean_of_single_draw_gradients(surface):
  from defenses_jax.attacks import eot
  defense = untrained(delta=0.1, steps=3)
  model = create_model("lenet", 4)
  ds = blob_dataset(4, seed=2)
  x, y = jnp.asarray(ds.images), jnp.asarray(ds.labels)
  fa = Network(model, model.init(jax.random.key(5), x[:1]))
  target = defense.attack_target("white_box", fa, surface)
  key, draws = jax.random.key(7), 5
  true_class_log_prob = lambda log_probs: jnp.sum(jnp.take_along_axis(log_probs, y[:, None], 1))
  # Chunks of 2 (three rematerialised chunks) and all 5 draws at once.
  for chunk in (2, 5):
    averaged = eot(target, draws, chunk=chunk)
    eot_grad = jax.grad(lambda z: true_class_log_prob(call_logits(averaged, z, key)))(x)
    singles = [jax.grad(lambda z, k=k: true_class_log_prob(
        jax.nn.log_softmax(call_logits(target, z, k))))(x) for k in jax.random.split(key, draws)]
    np.testing.assert_allclose(eot_grad, np.mean(singles, 0), rtol=1e-4, atol=1e-7)
    # The draws differ: a single draw's gradient is not the average.
    assert not np.allclose(singles[0], singles[1], atol=1e-6)


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
  fa.defense.options.metric_images = 8
  fa.defense.options.metric_samples = 16
  fa.eval.num_attack_examples = 16
  fa.eval.sanity.enabled = False
  pgd = dict(eps=0.2, step_size=0.05, steps=5)
  fa.eval.attacks = ml_collections.ConfigDict({
      "pgd": attack("pgd", "PGD through g", **pgd),
      "pgd_bpda": attack("pgd", "PGD, BPDA-identity", surface="bpda_identity", **pgd)})
  fa.eval.worst_case_groups = ml_collections.ConfigDict({"bpda_only": ("pgd_bpda",),
                                                         "both": ("pgd", "pgd_bpda")})
  return fb, fa


def test_f_a_trains_on_g_with_f_b_frozen_and_refuses_a_retrained_f_b(tmp_path):
  datasets = blob_dataset(96, seed=0), blob_dataset(32, seed=1)
  fb_config, fa_config = fb_and_fa_configs()
  train_lib.train_and_evaluate(fb_config, str(tmp_path), datasets)
  fb_before = experiment_lib.load_experiment(str(tmp_path), "fb", datasets=datasets)
  summary = train_lib.train_and_evaluate(fa_config, str(tmp_path), datasets)
  assert summary.test_accuracy > 0.5  # Blobs survive a 0.1 transformation.
  with open(tmp_path / "fa" / "config.json") as f:
    saved = json.load(f)["defense"]["options"]
  assert saved["transform_step"] == int(fb_before.state.step)
  out = evaluate(fa_config, str(tmp_path), datasets)
  assert 0.0 < out.defense_metrics["expected_image_linf"] <= 0.1 + 1e-6
  groups, attacks = out.worst_case_groups, out.attacks
  assert groups["bpda_only"] == pytest.approx(attacks["pgd_bpda"].robust_accuracy)
  assert groups["both"] <= min(groups["bpda_only"], attacks["pgd"].robust_accuracy)
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


def test_attack_surfaces_keep_g_forward_and_change_only_its_gradient():
  # delta 0.3 around bright pixels: the box clip holds many of them, where the plain gradient
  # through g is 0 and BPDA-identity's is f_a's own.
  defense = untrained(delta=0.3, steps=3)
  ds = blob_dataset(4, seed=2)
  x = jnp.asarray(np.clip(ds.images + 0.6, 0, 1))
  w = jax.random.normal(jax.random.key(1), (x[0].size, 4))
  fa = lambda z: z.reshape(z.shape[0], -1) @ w
  key = jax.random.key(7)
  deployed = defense.deployed(fa, x, key).class_logits
  assert sorted(defense.attack_surfaces()) == sorted(
      ["bpda_identity", "bpda_softsign", "bpda_tanh", "straight_through"])
  targets = {s: defense.attack_target("white_box", fa, s) for s in defense.attack_surfaces()}
  for surface, target in targets.items():
    np.testing.assert_allclose(call_logits(target, x, key), deployed, rtol=1e-5, atol=1e-5,
                               err_msg=surface)
  loss = lambda target: (lambda z: jnp.sum(call_logits(target, z, key)[:, 0]))
  identity_grad = jax.grad(loss(targets["bpda_identity"]))(x)
  np.testing.assert_allclose(identity_grad, np.broadcast_to(w[:, 0].reshape(x.shape[1:]),
                                                           x.shape), rtol=1e-5)
  plain = jax.grad(loss(defense.attack_target("white_box", fa)))(x)
  held = np.asarray(defense.transform(x, key)) >= 1.0  # Pixels the box clip holds at 1.
  assert held.any() and np.all(np.asarray(plain)[held] == 0.0)
  # Equation 5 and straight-through differentiate f_b's gradient step: not BPDA-I's identity.
  for surface in ("bpda_softsign", "straight_through"):
    assert not np.allclose(jax.grad(loss(targets[surface]))(x), identity_grad), surface
  with pytest.raises(ValueError, match="attack surface"):
    defense.attack_target("gray_box", fa, "bpda_identity")
  with pytest.raises(ValueError, match="attack surface"):
    create_defense("standard", 4).attack_target("white_box", fa, "bpda_identity")


def test_attack_specs_check_the_surface_before_compute():
  from defenses_jax.evaluation.threat_models import parse_attack_specs
  from experiments.common import attack
  defense = create_defense("adv_transform", 4, transform_model="lenet")
  pgd = dict(eps=0.1, step_size=0.01, steps=5)
  specs = parse_attack_specs({"a": attack("pgd", "BPDA-I", surface="bpda_identity", **pgd)},
                             defense)
  assert specs[0].surface == "bpda_identity"
  # Crafted on a source through its surface, then transferred (paper 004's appendix A.3).
  transfer = parse_attack_specs({"t": attack(
      "pgd", "x", surface="bpda_softsign", threat_model="transfer", source_experiment="fa_n1",
      **pgd)}, defense)[0]
  assert transfer.surface == "bpda_softsign" and transfer.threat_model == "transfer"
  for bad in (attack("pgd", "x", surface="bpda_magic", **pgd),
              attack("pgd", "x", surface="bpda_identity", threat_model="gray_box", **pgd)):
    with pytest.raises(ValueError, match="surface"):
      parse_attack_specs({"a": bad}, defense)
  with pytest.raises(ValueError, match="surface"):
    parse_attack_specs({"a": attack("pgd", "x", surface="bpda_identity", **pgd)},
                       create_defense("standard", 4))


def test_saved_examples_are_matched_on_surface_and_eot_draws_too():
  from defenses_jax.evaluation.attacked_set import crafted_as
  from defenses_jax.evaluation.threat_models import parse_attack_specs
  from experiments.common import attack
  defense = create_defense("adv_transform", 4, transform_model="lenet")
  pgd = dict(eps=0.1, step_size=0.01, steps=5)
  plain, bpda, eot = parse_attack_specs({
      "plain": attack("pgd", "PGD", **pgd),
      "bpda": attack("pgd", "BPDA-I", surface="bpda_identity", **pgd),
      "eot": attack("pgd", "EOT", eot_samples=8, **pgd)}, defense)
  assert crafted_as(plain) == pgd  # As saved before surfaces existed: old files still match.
  assert crafted_as(bpda) == {**pgd, "__surface": "bpda_identity"}
  assert crafted_as(eot) == {**pgd, "__eot_samples": 8}


def test_table_cells_read_the_defense_numbers_and_named_worst_cases():
  from defenses_jax.suites import tables as paper_tables
  from experiments.common import table, table_row
  from defenses_jax.evaluation.results import EvalSummary
  summary = EvalSummary("fa", 10, "d", 100, 100, 0.9, 0.9, {},
                        defense_metrics={"expected_image_linf": 0.13},
                        worst_case_groups={"bpda": 0.42})
  config = ml_collections.ConfigDict({"order": ("t",), "t": table(
      "T", (("d", "dist"), ("w", "worst"), ("m", "missing")), [table_row(
          "fa", {"d": 0.136}, d="fa:defense:expected_image_linf", w="fa:worst_case:bpda",
          m="fa:worst_case:eot")])})
  filled = paper_tables.fill_tables(config, {"fa": summary})[0]["rows"][0]["cells"]
  assert [c["ours"] for c in filled] == [0.13, 0.42, None]
  assert [c["status"] for c in filled] == ["ok", "ok", "missing"] and filled[0]["paper"] == 0.136
