"""Evaluation end to end on tiny data: threat models, transfer, sanity checks, report files."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import attacks as attacks_lib
from defenses_jax import models
from defenses_jax.evaluation import sanity
from defenses_jax.suites import tables as paper_tables
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.evaluation import evaluate
from experiments.common import attack, table, table_row


def eval_config(name="tiny", attacks=None, epochs=4, **train):
  c = tiny_config(epochs=epochs, **{"learning_rate": 3e-3, **train})
  c.experiment_name = name
  c.eval.num_attack_examples = 32
  c.eval.sanity.num_examples = 16
  c.eval.sanity.unbounded_steps = 30
  c.eval.attacks = ml_collections.ConfigDict(attacks or {})
  return c


ATTACKS = {
    "fgsm": attack("fgsm", "FGSM", eps=0.3),
    "pgd": attack("pgd", "PGD", eps=0.3, step_size=0.05, steps=10, random_start=False),
    "pgd_gray": attack("pgd", "PGD gray-box", threat_model="gray_box", eps=0.3,
                       step_size=0.05, steps=10, random_start=False),
    "pgd_transfer": attack("pgd", "PGD transfer", threat_model="transfer",
                           source_experiment="source", eps=0.3, step_size=0.05, steps=10,
                           random_start=False),
    "deepfool": attack("deepfool", "DeepFool"),
    "cw": attack("cw_l2", "CW", binary_search_steps=3, max_iterations=30),
}


def test_evaluation_writes_results_table_and_figures(tmp_path, blobs):
  train_lib.train_and_evaluate(eval_config("source"), str(tmp_path), datasets=blobs)
  config = eval_config(attacks=ATTACKS)
  config.seed = 3  # A different network from the transfer source.
  config.eval.eps_sweep.attack = "pgd"
  config.eval.eps_sweep.eps_values = (0.0, 0.1, 0.3)
  config.eval.eps_sweep.num_examples = 16
  config.paper.robust_accuracy = ml_collections.ConfigDict({"pgd": 0.5, "zoo": 0.9})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  out = evaluate(config, str(tmp_path), datasets=blobs)

  assert set(out.attacks) == set(ATTACKS)
  # Bounded attacks stay inside their budget.
  assert out.attacks["pgd"].median_linf <= 0.3 + 1e-5
  # The saved examples are what the table reports: recount robust accuracy from them.
  (saved,) = [np.load(p) for p in (tmp_path / "tiny" / "results" / "adversarial").glob("pgd-*.npz")]
  exp = experiment_lib.Experiment(config, str(tmp_path), blobs)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  network = lambda z: exp.model.apply({"params": state.params, "batch_stats":
                                       state.batch_stats}, z, train=False)
  x = blobs[1].images[:32]
  clean_ok = np.argmax(network(x), -1) == blobs[1].labels[:32]
  adv_ok = np.argmax(network(saved["x_adv"]), -1) == blobs[1].labels[:32]
  assert out.attacks["pgd"].robust_accuracy == pytest.approx(np.mean(clean_ok & adv_ok))
  assert out.clean_accuracy_attacked_subset == pytest.approx(np.mean(clean_ok))
  # CW-L2 and DeepFool run with slot refill over the 32 images (slots of 16): each image gets
  # what the attack gives it in a batch of its own.
  for name, run in (("cw", functools.partial(attacks_lib.cw_l2, binary_search_steps=3,
                                             max_iterations=30)),
                    ("deepfool", attacks_lib.deepfool)):
    (path,) = (tmp_path / "tiny" / "results" / "adversarial").glob(f"{name}-*.npz")
    refilled = np.load(path)["x_adv"]
    expected, _ = run(attacks_lib.as_target(network), jnp.asarray(x),
                      jnp.asarray(blobs[1].labels[:32]), jax.random.key(0))
    np.testing.assert_allclose(refilled, expected, atol=1e-4, err_msg=name)
  checks = {c.check for c in out.sanity}
  assert {"gradients", "unbounded", "more_steps", "noise_weaker",
          "transfer_not_stronger"} <= checks
  unbounded = next(c for c in out.sanity if c.check == "unbounded")
  assert unbounded.status == "pass"
  sweep = [p["robust_accuracy"] for p in out.eps_sweep["points"]]
  assert sweep[0] >= sweep[-1]
  results = tmp_path / "tiny" / "results"
  assert json.loads((results / "eval.json").read_text())["attacks"]["cw"]["attack"] == "cw_l2"
  table = (results / "eval.md").read_text()
  assert "| PGD transfer | transfer from source |" in table and "| zoo | - | not run |" in table
  assert (results / "examples.png").stat().st_size > 0
  assert (results / "robust_accuracy_vs_eps.png").stat().st_size > 0


@pytest.mark.parametrize("entry,message", [
    (attack("pgdd", "x"), "unknown attack"),
    (attack("pgd", "x", epsilon=0.3), "does not take"),
    (attack("pgd", "x", threat_model="black_box", eps=0.3, step_size=0.1, steps=1),
     "threat_model"),
    (attack("pgd", "x", threat_model="transfer", eps=0.3, step_size=0.1, steps=1),
     "source_experiment"),
    (attack("fgsm", "x", threat_model="adaptive", eps=0.3), "no adaptive"),
    (attack("uap", "x"), r"needs \['eps'\]"),  # No default radius: ART's 10 is no constraint.
    (attack("fgsm", "x", fit_examples=10, eps=0.3), "fit_examples"),
    (attack("fgsm", "x", detector_aware=True, eps=0.3), "detector-aware"),  # No detector.
])
def test_bad_attack_specs_fail_before_any_attack_runs(tmp_path, blobs, entry, message):
  config = eval_config(attacks={"bad": entry})
  train_lib.train_and_evaluate(eval_config(), str(tmp_path), datasets=blobs)
  with pytest.raises(ValueError, match=message):
    evaluate(config, str(tmp_path), datasets=blobs)


def test_a_universal_perturbation_is_fitted_on_training_images_cached_and_added_to_test_images(
    tmp_path, blobs):
  config = eval_config(attacks={"uap": attack("uap", "UAP", fit_examples=24, eps=0.25,
                                              max_passes=2, max_iter_df=5)})
  config.eval.sanity.enabled = False
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  out = evaluate(config, str(tmp_path), datasets=blobs).attacks["uap"]
  cached = tmp_path / out.universal["cached"]
  v = np.load(cached)["v"]
  assert v.shape == blobs[1].images.shape[1:] and np.abs(v).max() <= 0.25 + 1e-6
  assert out.universal["fit_examples"] == 24 and 1 <= out.universal["passes"] <= 2
  assert out.universal["fooling_rate"] == max(out.universal["fooling_rate_per_pass"])
  # The table's numbers are those of x + v (clipped) on the attacked test images.
  exp = experiment_lib.Experiment(config, str(tmp_path), blobs)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  network = lambda z: np.argmax(exp.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, z, train=False), -1)
  x, y = blobs[1].images[:32], blobs[1].labels[:32]
  still_right = (network(x) == y) & (network(np.clip(x + v, 0, 1)) == y)
  assert out.robust_accuracy == pytest.approx(np.mean(still_right))
  # Fitted on the training images: the fooling rate it reports is theirs.
  train_x = blobs[0].images[:24]
  fooled = network(np.clip(train_x + v, 0, 1)) != network(train_x)
  assert out.universal["fooling_rate"] == pytest.approx(np.mean(fooled))
  test_x = blobs[1].images[:24]  # Informative: v fools a different share of the test images.
  assert np.mean(fooled) != np.mean(network(np.clip(test_x + v, 0, 1)) != network(test_x))
  # A second evaluation loads the cached perturbation instead of fitting it again (its norms
  # computed from v itself); a changed file is named in a warning and fitted again.
  from defenses_jax import artifact_cache
  from defenses_jax.evaluation import universal
  fit_again = universal.TargetBuilder
  def no_refit(*args, **kwargs):
    raise AssertionError("fitted again although a verified perturbation is cached")
  universal.TargetBuilder = no_refit
  try:
    again = evaluate(config, str(tmp_path), datasets=blobs).attacks["uap"]
  finally:
    universal.TargetBuilder = fit_again
  assert again.robust_accuracy == out.robust_accuracy
  assert again.universal["linf"] == pytest.approx(np.abs(v).max())
  with np.load(cached) as saved:
    arrays = {k: saved[k] for k in saved.files}
  np.savez(cached, **{**arrays, "v": np.zeros_like(v)})
  with pytest.warns(artifact_cache.StaleCacheWarning, match=f"{cached}: its content does not"):
    refitted = evaluate(config, str(tmp_path), datasets=blobs).attacks["uap"]
  assert refitted.robust_accuracy == out.robust_accuracy
  assert "UAP: one perturbation" in (tmp_path / "tiny" / "results" / "eval.md").read_text()


def test_distilled_proxy_learns_the_teachers_labels_and_serves_as_transfer_source(
    tmp_path, blobs, monkeypatch):
  from defenses_jax.distill import distill_proxy
  from defenses_jax.experiment import NoCheckpointError
  proxy = eval_config("proxy")
  proxy.distill.teacher = "teacher"
  with pytest.raises(NoCheckpointError, match="teacher"):
    distill_proxy(proxy, str(tmp_path), datasets=blobs)
  # A barely trained teacher: wrong on many training images, so its labels are not the truth.
  train_lib.train_and_evaluate(eval_config("teacher", epochs=1, learning_rate=1e-4),
                               str(tmp_path), datasets=blobs)
  trained_on = []
  real_training = train_lib.train_and_evaluate

  def spy(config, workdir, datasets=None, **kwargs):
    trained_on.append(datasets[0])
    return real_training(config, workdir, datasets, **kwargs)

  monkeypatch.setattr(train_lib, "train_and_evaluate", spy)
  out = distill_proxy(proxy, str(tmp_path), datasets=blobs)
  assert out.teacher == "teacher"
  # The proxy trained on the teacher's predictions, computed here from the teacher's parameters.
  teacher_config = eval_config("teacher", epochs=1, learning_rate=1e-4)
  exp = experiment_lib.Experiment(teacher_config, str(tmp_path), blobs)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  images = blobs[0].images
  predicted = np.argmax(exp.model.apply({"params": state.params, "batch_stats":
                                         state.batch_stats}, images, train=False), -1)
  assert not np.array_equal(predicted, blobs[0].labels)  # Else the check below proves nothing.
  np.testing.assert_array_equal(trained_on[0].labels, predicted)
  np.testing.assert_array_equal(trained_on[0].images, images)
  assert out.teacher_train_accuracy == pytest.approx(np.mean(predicted == blobs[0].labels))
  config = eval_config(attacks={"transfer": attack(
      "fgsm", "FGSM from proxy", threat_model="transfer", source_experiment="proxy", eps=0.3)})
  config.experiment_name = "teacher"
  config.train.epochs = 1
  config.eval.sanity.enabled = False
  result = evaluate(config, str(tmp_path), datasets=blobs)
  assert result.attacks["transfer"].source_experiment == "proxy"


class QuantisedLeNet(nn.Module):
  """LeNet behind an input quantiser: it learns, but its input gradient is zero everywhere, the
  textbook gradient-masking defense that only looks robust."""
  num_outputs: int = 4

  @nn.compact
  def __call__(self, x, train=False, return_embedding=False):
    return models.LeNet(self.num_outputs)(jnp.round(x * 4) / 4, train, return_embedding)


SANITY_TABLE = ml_collections.ConfigDict({
    "order": ("t",), "t": table("T", (("pgd", "PGD"),), (table_row("model", {}, pgd="tiny:pgd"),))})


def _table(summary) -> str:
  return paper_tables.markdown("demo", paper_tables.fill_tables(SANITY_TABLE, {"tiny": summary}),
                               {"tiny": summary})


def _checks(summary) -> dict:
  return {(c.check, c.attack): c.status for c in summary.sanity}


CONVERGED_PGD = attack("pgd", "PGD", eps=0.3, step_size=0.05, steps=20, random_start=False)


def test_sanity_checks_pass_a_healthy_model_and_flag_an_unconverged_attack(tmp_path, blobs):
  config = eval_config(attacks={"pgd": CONVERGED_PGD}, epochs=4)
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  healthy = evaluate(config, str(tmp_path), datasets=blobs)
  assert healthy.sanity_passed, healthy.sanity
  assert "(!)" not in _table(healthy).split("## T")[1]
  # Two steps of 0.02 do not converge: four times as many lower the robust accuracy.
  config.eval.attacks = ml_collections.ConfigDict({"pgd": attack(
      "pgd", "PGD 2 steps", eps=0.3, step_size=0.02, steps=2, random_start=False)})
  short = evaluate(config, str(tmp_path), datasets=blobs)
  record = next(c for c in short.sanity if c.check == "more_steps")
  assert record.status == sanity.WARN and "not converged" in record.detail, record
  assert record.numbers["longer_steps"] == 8
  assert not short.sanity_passed
  assert "(!)" in _table(short).split("## T")[1]


def test_sanity_checks_flag_a_gradient_masking_model_end_to_end(tmp_path, blobs, monkeypatch):
  monkeypatch.setitem(models.MODELS, "quantised_lenet", QuantisedLeNet)
  config = eval_config(attacks={"pgd": CONVERGED_PGD}, epochs=4, model="quantised_lenet")
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert summary.test_accuracy >= 0.9  # It classifies well...
  masked = evaluate(config, str(tmp_path), datasets=blobs)
  # ...and PGD cannot move it, so it looks robust: the checks must say why not to trust that.
  assert masked.attacks["pgd"].robust_accuracy >= 0.9
  checks = _checks(masked)
  assert checks[("gradients", None)] == sanity.WARN
  assert checks[("unbounded", None)] == sanity.WARN
  unbounded = next(c for c in masked.sanity if c.check == "unbounded")
  assert unbounded.numbers["success_rate"] < 0.5
  assert not masked.sanity_passed
  assert "(!)" in _table(masked).split("## T")[1]


def test_more_steps_check_does_not_rerun_an_attack_that_fooled_everything(tmp_path, blobs,
                                                                         monkeypatch):
  config = eval_config(attacks={"pgd": attack("pgd", "PGD, whole box", eps=1.0, step_size=0.1,
                                              steps=20, random_start=False, loss="margin")})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  calls = []

  @functools.wraps(attacks_lib.pgd)
  def counted_pgd(*args, **kwargs):  # Called when a run is traced: each run compiles anew.
    calls.append(kwargs["steps"])
    return attacks_lib.pgd(*args, **kwargs)

  monkeypatch.setitem(attacks_lib.ATTACKS, "pgd", dataclasses.replace(
      attacks_lib.ATTACKS["pgd"], fn=counted_pgd))
  summary = evaluate(config, str(tmp_path), datasets=blobs)
  assert summary.attacks["pgd"].robust_accuracy == 0.0
  record = next(c for c in summary.sanity if c.check == "more_steps")
  assert record.status == sanity.PASS and record.numbers["skipped"], record
  # The evaluation's own run and the unbounded check's (30 steps): no base rerun, no 4x rerun.
  assert sorted(calls) == [20, 30], calls
