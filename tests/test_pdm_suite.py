"""Paper 002's suite end to end on tiny data (its own file, so that the parallel test run
balances the long suite tests)."""

import json
import os

from conftest import blob_dataset
from defenses_jax.suites import runner as suite
from experiments.paper_002_pdm import config as pdm
from test_suite import tiny_suite


def test_pdm_suite_fills_every_table_cell_and_figure(tmp_path):
  """Paper 002 end to end on tiny data: four variants, three distilled proxies, the KDE
  detector, gray-box AUCs, CW-wb (white-box and through each proxy), the adaptive attacks,
  Davies-Bouldin indices and Figure 3."""
  # 48 test images: 8 attacked, 40 held out to fix the detector's threshold at 5% FPR.
  datasets = (blob_dataset(96, num_classes=10, seed=0), blob_dataset(48, num_classes=10, seed=1))
  config = tiny_suite("cpu", pdm)
  out = suite.run_suite(config, str(tmp_path), "train", datasets)
  suite_dir = tmp_path / config.suite_name
  with open(suite_dir / "tables.json") as f:
    tables = {t["id"]: t for t in json.load(f)["tables"]}
  with open(suite_dir / "tables.json") as f:
    findings = json.load(f)["findings"]  # Every finding's cells name results that exist.
  assert findings and all(f["strongest"] and f["verdict"] != "not measured" for f in findings)
  assert list(tables) == ["table_1", "table_2", "table_3", "table_4", "figure_2_dbi", "adaptive"]
  cells = [c for t in tables.values() for r in t["rows"] for c in r["cells"]]
  assert not [c for c in cells if c["status"] == "missing"]
  auc = tables["table_2"]["rows"][0]["cells"]
  assert all(c["source"].endswith(":fgsm_005:auc") for c in auc)
  dbi = tables["figure_2_dbi"]["rows"][0]["cells"]
  assert all(c["ours"] is not None and c["ours"] > 0 for c in dbi)
  with open(tmp_path / "pdm_mnist_cpu" / "results" / "eval.json") as f:
    summary = json.load(f)
  # The black-box CW-wb evaded the attacker's own KDE, fitted on the proxy.
  assert summary["attacks"]["cw_wb_proxy"]["source_experiment"] == "pdm_proxy_mnist_cpu"
  assert os.listdir(tmp_path / "pdm_proxy_mnist_cpu" / "detectors")
  for fig_id in config.figures.order:
    assert (suite_dir / f"{fig_id}.png").exists(), fig_id
  assert "Table 4" in open(out["tables"]).read()
