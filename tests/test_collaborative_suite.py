"""Paper 003's suite end to end on tiny data: oracle, substitute and the defended model (its
Classmap derived from the oracle), every table cell and both figures filled."""

import json

from defenses_jax.suites import runner as suite
from experiments.paper_003_collaborative import config as collaborative
from conftest import blob_dataset
from test_suite import tiny_suite


def test_collaborative_suite_fills_every_table_cell_and_figure(tmp_path):
  # 48 test images: 8 attacked, 40 held out for the pair detector's benign false positives.
  datasets = (blob_dataset(96, num_classes=10, seed=0), blob_dataset(48, num_classes=10, seed=1))
  config = tiny_suite("cpu", collaborative)
  out = suite.run_suite(config, str(tmp_path), "train", datasets)
  suite_dir = tmp_path / config.suite_name
  with open(suite_dir / "tables.json") as f:
    tables = {t["id"]: t for t in json.load(f)["tables"]}
  with open(suite_dir / "tables.json") as f:
    findings = json.load(f)["findings"]  # Every finding's cells name results that exist.
  assert findings and all(f["strongest"] and f["verdict"] != "not measured" for f in findings)
  assert list(tables) == ["table_3", "table_4", "table_5", "benign", "adaptive"]
  cells = [c for t in tables.values() for r in t["rows"] for c in r["cells"]]
  assert not [c for c in cells if c["status"] == "missing"]
  assert all(c["ours"] is not None for c in cells if c["status"] not in ("no entry",))
  with open(tmp_path / "collab_mnist_cpu" / "config.json") as f:
    classmap = json.load(f)["defense"]["options"]["classmap"]
  assert len(classmap) == 10 and all(r != y for y, r in enumerate(classmap))
  # Derived from the oracle's FGS confusion, cached beside the oracle's checkpoint.
  assert list((tmp_path / "oracle_mnist_cpu" / "classmaps").iterdir())
  with open(tmp_path / "collab_mnist_cpu" / "results" / "eval.json") as f:
    detection = json.load(f)["detection"]
  # The pair rule's own threshold (0), not one picked at a false-positive rate.
  assert detection["fixed_threshold"] and detection["threshold"] == 0.0
  for fig_id in config.figures.order:
    assert (suite_dir / f"{fig_id}.png").exists(), fig_id
  assert "Table 5" in open(out["tables"]).read()
