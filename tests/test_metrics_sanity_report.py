"""Metrics, sanity checks and report rendering on hand-made cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.evaluation import metrics, report, sanity
from defenses_jax.evaluation.results import EvalSummary


def test_auc_of_perfect_random_and_inverted_detectors():
  clean, adv = np.arange(10), np.arange(10, 20)
  assert metrics.roc_auc(clean, adv) == 1.0
  assert metrics.roc_auc(adv, clean) == 0.0
  assert metrics.roc_auc(np.zeros(50), np.zeros(30)) == 0.5  # All ties: a coin flip.
  rng = np.random.default_rng(0)
  assert abs(metrics.roc_auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.02
  # One adversarial score below one clean score: 1 of 4 x 4 pairs misordered.
  assert metrics.roc_auc([0, 1, 2, 5], [3, 4, 6, 7]) == pytest.approx(1 - 2 / 16)


def test_threshold_fixed_on_clean_data_flags_at_most_the_target_rate():
  clean = np.arange(100, dtype=float)  # Scores 0..99.
  t = metrics.threshold_at_fpr(clean, 0.05)
  assert np.mean(clean >= t) == 0.05
  with_ties = np.array([0.0] * 90 + [1.0] * 10)
  t = metrics.threshold_at_fpr(with_ties, 0.05)  # Flagging the ten tied 1.0s would be 10%.
  assert np.mean(with_ties >= t) <= 0.05
  assert metrics.threshold_at_fpr(clean, 0.0) > clean.max()
  # Any threshold in (94, 95] flags the same five clean inputs; the convention is the clean
  # score itself (the (1 - fpr) quantile), so an adversarial score of 94.5 is not detected.
  assert metrics.threshold_at_fpr(clean, 0.05) == 95.0
  out = metrics.detection(clean, np.array([94.5, 95.0]), threshold=95.0,
                          adv_correct=np.zeros(2, bool), clean_correct=np.ones(100, bool))
  assert out["detection_rate"] == 0.5


def test_detection_metrics_at_a_fixed_threshold():
  clean, adv = np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.8, 0.95, 0.05, 0.99])
  out = metrics.detection(clean, adv, threshold=0.85, adv_correct=np.array([0, 0, 1, 0], bool),
                          clean_correct=np.array([1, 1, 0, 1], bool))
  assert out["false_positive_rate"] == 0.25 and out["detection_rate"] == 0.5
  assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 0.5
  # Accepted: clean 0.1, 0.2, 0.3 (correct, correct, wrong) + adversarial 0.8, 0.05 (wrong, right).
  assert out["accuracy_on_accepted"] == pytest.approx(3 / 5)


def test_robustness_and_worst_case_over_attacks():
  clean = np.array([1, 1, 1, 1, 0], bool)
  a = np.array([1, 0, 1, 1, 0], bool)
  b = np.array([1, 1, 0, 1, 1], bool)  # Last example: wrong clean, "right" adversarially.
  assert metrics.worst_case_accuracy(clean, [a, b]) == pytest.approx(2 / 5)
  out = metrics.robustness(clean, a, clean & ~a, l2=np.arange(5.0), linf=np.ones(5))
  assert out["robust_accuracy"] == pytest.approx(3 / 5)
  # A clean error stays an error, however the attacked input is classified.
  assert metrics.robustness(clean, b, clean & ~b, l2=np.zeros(5), linf=np.zeros(5))[
      "robust_accuracy"] == pytest.approx(3 / 5)
  assert out["attack_success_rate"] == pytest.approx(1 / 4)
  assert out["median_l2"] == 1.0  # Only the successful example's distance counts.


def test_more_steps_check_warns_on_broken_and_on_unconverged_attacks():
  weakening = {10: 0.20, 40: 0.45}.__getitem__  # Robust accuracy rises with steps: broken.
  record = sanity.more_steps_do_not_help("pgd", weakening, 10)
  assert record.status == sanity.WARN and "broken" in record.detail
  still_falling = {10: 0.30, 40: 0.22}.__getitem__  # Not converged at 10 steps.
  record = sanity.more_steps_do_not_help("pgd", still_falling, 10)
  assert record.status == sanity.WARN and "not converged" in record.detail
  converged = {10: 0.30, 40: 0.295}.__getitem__
  assert sanity.more_steps_do_not_help("pgd", converged, 10).status == sanity.PASS
  # On 32 examples, one example (3.1%) is not evidence; two are.
  one_example = {10: 1 / 32, 40: 0.0}.__getitem__
  assert sanity.more_steps_do_not_help("cw", one_example, 10, num_examples=32).status == "pass"
  two_examples = {10: 2 / 32, 40: 0.0}.__getitem__
  assert sanity.more_steps_do_not_help("cw", two_examples, 10, num_examples=32).status == "warn"


def test_gradient_check_catches_a_model_with_zero_gradients():
  w = jax.random.normal(jax.random.key(0), (16, 3))
  x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
  y = jnp.zeros(8, jnp.int32)
  honest = lambda z: z.reshape(8, -1) @ w
  masked = lambda z: jnp.round(z.reshape(8, -1) * 4) / 4 @ w  # Quantised: zero gradient.
  assert sanity.gradients_are_informative(honest, x, y).status == sanity.PASS
  record = sanity.gradients_are_informative(masked, x, y)
  assert record.status == sanity.WARN and record.numbers["zero_fraction"] == 1.0
  nan_model = lambda z: jnp.sqrt(z.reshape(8, -1) - 2.0) @ w
  assert sanity.gradients_are_informative(nan_model, x, y).status == sanity.WARN


def test_unbounded_noise_and_transfer_checks():
  assert sanity.unbounded_attack_succeeds(1.0).status == sanity.PASS
  assert sanity.unbounded_attack_succeeds(0.7).status == sanity.WARN
  assert sanity.noise_weaker_than_attack("pgd", 0.1, 0.9).status == sanity.PASS
  assert sanity.noise_weaker_than_attack("pgd", 0.6, 0.3).status == sanity.WARN
  assert sanity.transfer_not_stronger("t", 0.5, "w", 0.2).status == sanity.PASS
  assert sanity.transfer_not_stronger("t", 0.1, "w", 0.6).status == sanity.WARN


def attack_row(label, attack, threat_model, robust, success, l2, linf, source="", **extra):
  """An eval.json attack entry as evaluate() writes it."""
  return {"label": label, "attack": attack, "threat_model": threat_model, "params": {},
          "source_experiment": source, "robust_accuracy": robust, "attack_success_rate": success,
          "num_examples": 128, "mean_l2": l2, "median_l2": l2, "mean_linf": linf,
          "median_linf": linf, **extra}


SUMMARY = {
    "step": 100, "experiment_name": "demo", "dataset": "mnist_embedded", "clean_accuracy": 0.97,
    "num_test_examples": 1000, "num_attack_examples": 128,
    "clean_accuracy_attacked_subset": 0.98, "worst_case_robust_accuracy": 0.0,
    "attacks": {"pgd": attack_row("PGD", "pgd", "white_box", 0.0, 1.0, 4.2, 0.3),
                "fgsm": attack_row("FGSM", "fgsm", "transfer", 0.12, 0.88, float("nan"), 0.3,
                                   source="other")},
    "sanity": [{"check": "unbounded", "status": "warn", "detail": "success 0.5"}],
    "sanity_passed": False,
    "eps_sweep": {"label": "PGD", "num_examples": 64,
                  "points": [{"eps": 0.0, "robust_accuracy": 0.97},
                             {"eps": 0.1, "robust_accuracy": 0.2}]},
    "paper": {"source": "paper 000", "clean_accuracy": 0.991,
              "robust_accuracy": {"pgd": 0.797, "fgsm": 0.1, "zoo": 0.96}},
}


def test_report_puts_the_paper_beside_ours_and_keeps_rows_we_did_not_run(tmp_path):
  table = report.markdown_table(EvalSummary.from_json(SUMMARY))
  # The failed unbounded check concerns every row: each is marked as in the suites' tables.
  assert "| PGD | white_box | 0.0% (differs) (!) | 79.7% |" in table
  assert "| FGSM | transfer from other | 12.0% (!) | 10.0% |" in table
  assert "| zoo | - | not run | 96.0% |" in table
  assert "WARNINGS" in table and "[warn] unbounded" in table
  assert "| robust accuracy | 97.0% | 20.0% |" in table
  clean = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  paths = report.write_report(EvalSummary.from_json(SUMMARY), str(tmp_path), clean, {"PGD": np.clip(clean + 0.1, 0, 1)})
  for key in ("table", "eps_sweep", "examples"):
    assert (tmp_path / paths[key].split("/")[-1]).stat().st_size > 0
  report.plot_roc({"toy": ([0.1, 0.4], [0.3, 0.9])}, str(tmp_path / "roc.png"))
  assert (tmp_path / "roc.png").stat().st_size > 0


def test_eval_md_marks_doubtful_rows_names_query_access_and_prints_counts():
  """eval.md under-reported its doubts: a row whose check warned was not marked, ZOO was listed
  under "white_box", a query count printed as 8515.000, and noise beating a universal
  perturbation by one image of 32 passed."""
  weaker = sanity.noise_weaker_than_attack("UAP", 26 / 32, 25 / 32, num_examples=32)
  assert weaker.status == sanity.WARN and "on 32 images" in weaker.detail
  assert sanity.noise_weaker_than_attack("UAP", 25 / 32, 25 / 32, 32).status == sanity.PASS
  summary = {**SUMMARY, "sanity": [weaker.to_json()], "attacks": {
      **SUMMARY["attacks"],
      "uap": attack_row("UAP", "uap", "white_box", 26 / 32, 0.1, 1.0, 0.3, access="universal"),
      "zoo": attack_row("ZOO", "zoo", "white_box", 0.5, 0.5, 1.0, 0.2, access="scores",
                        queries={"budget": 10000, "mean": 8515.0, "median_successful": 4021.5})}}
  table = report.markdown_table(EvalSummary.from_json(summary))
  assert "| UAP | universal, white_box | 81.2% (!) |" in table
  assert "| ZOO | black-box (scores) | 50.0% (differs) | 96.0% |" in table  # No (!): not its check.
  assert "| PGD | white_box | 0.0% (differs) | 79.7% |" in table
  assert ("ZOO: a query budget of 10,000 per image; 8,515 queries on average, median 4,021.5 "
          "to succeed.") in table
  assert "do not trust the rows marked (!)" in table
