"""The findings' verdict rule and their config checks (suites/findings.py), on hand-made numbers;
the repository's README findings block against its published results/."""

import os

import pytest

from defenses_jax.errors import ConfigError
from defenses_jax.evaluation import results
from defenses_jax.suites import findings, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("claim, protocol, strongest, expected", [
    (0.92, 0.93, 0.00, "broken by PGD-deployed; the paper's protocol gives its claim"),
    (0.92, 0.95, 0.86, "broken by PGD-deployed; the paper's protocol gives its claim"),
    (0.92, 0.95, 0.87, "agrees with the paper"),   # Five points below: still agrees.
    (0.92, 0.87, 0.86, "broken by PGD-deployed; the paper's protocol gives its claim"),
    (0.92, 0.99, 0.96, "agrees with the paper"),
    (0.02, 0.95, 0.90, "more robust than the paper reports"),  # A claimed failure that is not.
    (0.92, 0.50, 0.40, "below the claim, under the paper's protocol too (PGD-deployed: lowest)"),
    (0.92, None, 0.40, "not measured"),
])
def test_the_verdict_follows_from_the_numbers(claim, protocol, strongest, expected):
  assert findings.verdict(claim, protocol, strongest, "PGD-deployed") == expected


def test_findings_are_checked_before_training():
  from experiments.paper_000_target_training import config as target_training
  config = target_training.get_config("cpu")
  good = dict(config.findings[0])
  for change, message in (({"quantity": "accuracy"}, "quantity must be one of"),
                          ({"claim": 92.3}, "claim must be a fraction"),
                          ({"strongest": ()}, "strongest names no attack"),
                          ({"protocol": "tt_pgd_mnist_cpu:nope"}, "no attack 'nope'"),
                          ({"protocol": "tt_pgd_mnist_cpu:clean"}, "not an attack's number"),
                          ({"member": None, "defense": None}, None)):
    finding = {**good, **change}
    if message is None:
      del finding["member"]
      message = r"lacks \['member'\]"
    with pytest.raises(ConfigError, match=message):
      findings.check((finding,), config.members, "suite x")
  findings.check((good,), config.members, "suite x")


def test_the_readme_findings_are_those_of_the_published_results():
  """Edit results/ or the README's findings block by hand and this fails: both come from
  `launch.py --mode=publish`."""
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  assert readme.count(publish.BEGIN) == 1 and readme.count(publish.END) == 1
  block = readme.split(publish.BEGIN)[1].split(publish.END)[0]
  assert block == "\n" + publish.findings_markdown(os.path.join(ROOT, "results"), ROOT)


def _attack(label, robust, accepted):
  return results.AttackResult(
      label=label, attack="pgd", threat_model="white_box", params={}, robust_accuracy=robust,
      attack_success_rate=1 - robust, num_examples=10, mean_l2=1.0, median_l2=1.0,
      mean_linf=0.3, median_linf=0.3,
      detection=results.AttackDetection(num_successful=5, flagged_rate=0.1,
                                        flagged_precision=None,
                                        misclassified_and_accepted=accepted))


def test_a_detector_finding_counts_the_examples_it_stops():
  """Detector-guarded: 'stopped' is 1 - misclassified-and-accepted, and the strongest attack is
  the one that gets the most examples accepted (numbers written by hand)."""
  summary = results.EvalSummary(
      experiment_name="pdm", step=1, dataset="d", num_test_examples=10, num_attack_examples=10,
      clean_accuracy=0.9, clean_accuracy_attacked_subset=0.9,
      attacks={"oblivious": _attack("CW, detector-oblivious", 0.0, 0.05),
               "aware": _attack("CW, detector-aware", 0.1, 0.93)})
  finding = {"defense": "PDM", "member": "pdm", "quantity": "adversarial examples stopped",
             "claim": 0.96, "claim_source": "Table 1", "protocol":
             "pdm:oblivious:misclassified_and_accepted",
             "strongest": ("pdm:aware:misclassified_and_accepted",)}
  (out,) = findings.compute((finding,), {"pdm": summary})
  assert out["protocol"]["value"] == pytest.approx(0.95)
  assert out["strongest"]["value"] == pytest.approx(0.07)
  assert out["strongest"]["label"] == "CW, detector-aware"
  assert out["verdict"] == ("broken by CW, detector-aware; the paper's protocol gives its "
                            "claim")
  # The detector's per-example worst case, when lowest, is named in words, not as its cell.
  summary.detection = results.DetectionSummary(
      detector="kde", options={}, target_false_positive_rate=0.05, fixed_threshold=False,
      threshold=1.0, held_out_examples=10, held_out_false_positive_rate=0.05,
      attacked_clean_false_positive_rate=0.05, worst_case_misclassified_and_accepted=1.0,
      worst_case_bounded_misclassified_and_accepted=0.98, davies_bouldin_index=0.5)
  finding["strongest"] += ("pdm:worst_case_bounded_misclassified_and_accepted",)
  (out,) = findings.compute((finding,), {"pdm": summary})
  assert out["strongest"]["value"] == pytest.approx(0.02)
  assert out["verdict"] == ("broken by the per-example worst case over every bounded attack; "
                            "the paper's protocol gives its claim")


def test_a_missing_result_leaves_the_finding_unmeasured():
  summary = results.EvalSummary(
      experiment_name="m", step=1, dataset="d", num_test_examples=10, num_attack_examples=10,
      clean_accuracy=0.9, clean_accuracy_attacked_subset=0.9,
      attacks={"pgd": _attack("PGD", 0.4, None), "fgsm": _attack("FGSM", 0.6, None)})
  finding = {"defense": "D", "member": "m", "quantity": "robust accuracy", "claim": 0.9,
             "claim_source": "T", "protocol": "m:fgsm", "strongest": ("m:pgd", "m:cw")}
  (out,) = findings.compute((finding,), {"m": summary})
  assert out["strongest"] is None and out["verdict"] == "not measured"
  finding["strongest"] = ("m:pgd",)
  (out,) = findings.compute((finding,), {"m": summary})
  assert out["strongest"]["value"] == 0.4 and out["verdict"] == "below the claim, under the " \
      "paper's protocol too (PGD: lowest)"
