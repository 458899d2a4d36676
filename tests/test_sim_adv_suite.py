"""Paper 001's suite end to end on tiny data: every method trained and evaluated, Table 5's
training times and their ratios, Figures 3-4 and the training curves (its own file, so that
the parallel test run balances the long suite tests)."""

import json

import pytest

from conftest import blob_dataset
from defenses_jax.suites import runner as suite
from experiments.paper_001_sim_adv import config as sim_adv
from test_suite import tiny_suite


def test_sim_adv_suite_writes_tables_timings_and_figures(tmp_path):
  datasets = (blob_dataset(64, num_classes=10, seed=0), blob_dataset(16, num_classes=10, seed=1))
  config = tiny_suite("cpu", sim_adv)
  out = suite.run_suite(config, str(tmp_path), "train", datasets)
  suite_dir = tmp_path / config.suite_name
  with open(suite_dir / "tables.json") as f:
    tables = {t["id"]: t for t in json.load(f)["tables"]}
  with open(suite_dir / "tables.json") as f:
    findings = json.load(f)["findings"]  # Every finding's cells name results that exist.
  assert findings and all(f["strongest"] and f["verdict"] != "not measured" for f in findings)
  cells = [c for t in tables.values() for r in t["rows"] for c in r["cells"]]
  assert not [c for c in cells if c["status"] == "missing"]
  # Training times and their ratios to BIM-Adv, from each member's own train.json.
  def seconds(member):
    with open(tmp_path / member / "results" / "train.json") as f:
      return json.load(f)["training_seconds"]

  for row in tables["table_5"]["rows"]:
    time_cell, ratio_cell = row["cells"]
    member = time_cell["source"].partition(":")[0]
    bim = ratio_cell["source"].rpartition(":")[2]
    assert seconds(member) > 0 and time_cell["ours"] == pytest.approx(seconds(member))
    assert ratio_cell["ours"] == pytest.approx(seconds(member) / seconds(bim)), row["label"]
  for fig_id in config.figures.order:
    assert (suite_dir / f"{fig_id}.png").exists(), fig_id
  with open(suite_dir / "figure_4_rho_iterations.json") as f:
    rho = json.load(f)["data"]
  assert all(len(d["rho"]) == 4 for d in rho.values())  # Iterates 0..n2 with n2 = 3.
  with open(suite_dir / "training_curves.json") as f:
    curves = json.load(f)["data"]
  assert all(d["robust_accuracy"] and None not in d["robust_accuracy"] for d in curves.values())
  assert "Table 5" in open(out["tables"]).read()
