"""Evaluation end to end on tiny data: threat models, transfer, sanity checks, report files."""

import json

import ml_collections
import pytest

from conftest import tiny_config
from defenses_jax import train as train_lib
from defenses_jax.evaluate import evaluate
from experiments.common import attack


def eval_config(name="tiny", attacks=None, epochs=4, **train):
  c = tiny_config(epochs=epochs, learning_rate=3e-3, **train)
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

  assert set(out["attacks"]) == set(ATTACKS)
  for r in out["attacks"].values():
    assert 0.0 <= r["robust_accuracy"] <= out["clean_accuracy_attacked_subset"] + 1e-9
  # Bounded attacks stay inside their budget.
  assert out["attacks"]["pgd"]["median_linf"] <= 0.3 + 1e-5
  # The worst case is no better than any single attack.
  assert out["worst_case_robust_accuracy"] <= min(r["robust_accuracy"]
                                                   for r in out["attacks"].values())
  # For an undefended network white-box and gray-box are the same attack.
  assert out["attacks"]["pgd"]["robust_accuracy"] == out["attacks"]["pgd_gray"]["robust_accuracy"]
  checks = {c["check"] for c in out["sanity"]}
  assert {"gradients", "unbounded", "more_steps", "noise_weaker",
          "transfer_not_stronger"} <= checks
  unbounded = next(c for c in out["sanity"] if c["check"] == "unbounded")
  assert unbounded["status"] == "pass"
  sweep = [p["robust_accuracy"] for p in out["eps_sweep"]["points"]]
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
])
def test_bad_attack_specs_fail_before_any_attack_runs(tmp_path, blobs, entry, message):
  config = eval_config(attacks={"bad": entry})
  train_lib.train_and_evaluate(eval_config(), str(tmp_path), datasets=blobs)
  with pytest.raises(ValueError, match=message):
    evaluate(config, str(tmp_path), datasets=blobs)


def test_distilled_proxy_learns_the_teachers_labels_and_serves_as_transfer_source(tmp_path,
                                                                                 blobs):
  from defenses_jax.distill import distill_proxy
  from defenses_jax.restore import NoCheckpointError
  proxy = eval_config("proxy")
  proxy.distill.teacher = "teacher"
  with pytest.raises(NoCheckpointError, match="teacher"):
    distill_proxy(proxy, str(tmp_path), datasets=blobs)
  train_lib.train_and_evaluate(eval_config("teacher", epochs=1), str(tmp_path), datasets=blobs)
  out = distill_proxy(proxy, str(tmp_path), datasets=blobs)
  assert out["teacher"] == "teacher" and 0.0 < out["teacher_train_accuracy"] <= 1.0
  # A teacher trained for one epoch is wrong on some training images; the proxy learns its
  # labels, not the truth.
  config = eval_config(attacks={"transfer": attack(
      "fgsm", "FGSM from proxy", threat_model="transfer", source_experiment="proxy", eps=0.3)})
  config.experiment_name = "teacher"
  config.train.epochs = 1
  config.eval.sanity.enabled = False
  result = evaluate(config, str(tmp_path), datasets=blobs)
  assert 0.0 <= result["attacks"]["transfer"]["robust_accuracy"] <= 1.0
