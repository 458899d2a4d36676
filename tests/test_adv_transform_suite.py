"""Paper 004's suite end to end on tiny data: every f_b, an f_a on g(x) of each, the figures'
sweeps (cut to one or two values), the baselines and the black-box source; every table cell
and every figure filled."""

import json

import pytest

from conftest import blob_dataset
from defenses_jax.suites import runner as suite
from experiments.paper_004_adv_transform import config as adv_transform
from test_suite import tiny_suite


@pytest.fixture
def small_sweeps(monkeypatch):
  """The cpu settings with each sweep cut to the fewest values that still exercise its code:
  one f_b epoch count, one N, one Delta besides the default, two EOT counts."""
  cpu_settings = adv_transform.scale_settings

  def settings(dataset, scale):
    s = cpu_settings(dataset, scale)
    return dict(s, fb_epochs=(1,), fb_adv_epochs=1, n_values=(2,), deltas=(0.1, 0.2),
                eot_values=(1, 2), eot=2, steps=3, bpda_long=3,
                metric=dict(metric_images=8, metric_samples=16))

  monkeypatch.setattr(adv_transform, "scale_settings", settings)


def test_adv_transform_suite_fills_every_table_cell_and_figure(tmp_path, small_sweeps):
  # 16 x 16 images: the small VGG pools four times.
  datasets = (blob_dataset(64, size=16, num_classes=10, seed=0),
              blob_dataset(16, size=16, num_classes=10, seed=1))
  config = tiny_suite("cpu", adv_transform)
  out = suite.run_suite(config, str(tmp_path), "train", datasets)
  suite_dir = tmp_path / config.suite_name
  with open(suite_dir / "tables.json") as f:
    tables = {t["id"]: t for t in json.load(f)["tables"]}
  with open(suite_dir / "tables.json") as f:
    findings = json.load(f)["findings"]  # Every finding's cells name results that exist.
  assert findings and all(f["strongest"] and f["verdict"] != "not measured" for f in findings)
  assert list(tables) == ["table_1", "table_1_distance", "table_2", "table_3",
                          "training_time", "adaptive"]
  cells = [c for t in tables.values() for r in t["rows"] for c in r["cells"]]
  assert not [c for c in cells if c["status"] in ("missing", "not run")]
  assert all(c["ours"] is not None for c in cells)
  # The paper's numbers sit beside ours under their named columns (Table 1: 1 epoch).
  table_1 = tables["table_1"]
  assert table_1["columns"] == ["Untrained", "1 epoch", "Adv. trained"]
  assert [c["paper"] for c in table_1["rows"][1]["cells"]] == [0.306, 0.307, 0.805]
  # Worst cases: a superset of attacks can only lower robust accuracy.
  robust = {r["label"]: r["cells"][1]["ours"] for r in tables["table_3"]["rows"]}
  ours = [v for label, v in robust.items() if label.startswith("Ours")]
  assert len(ours) == 3 and ours[2] <= ours[1] <= ours[0]  # BPDA types <= paper's <= all.
  madry = [v for label, v in robust.items() if label.startswith("Madry")][:2]
  assert madry[0] <= madry[1]  # Its worst case against PGD alone.
  with open(tmp_path / "ours_mnist_cpu" / "config.json") as f:
    options = json.load(f)["defense"]["options"]
  assert options["transform_experiment"] == "fb_adv_mnist_cpu" and options["transform_step"] > 0
  for fig_id in config.figures.order:
    assert (suite_dir / f"{fig_id}.png").exists(), fig_id
    with open(suite_dir / f"{fig_id}.json") as f:
      series = json.load(f)["data"][""]
    assert all(v is not None for k, values in series.items() if k != "x" for v in values)
  assert "Table 3" in open(out["tables"]).read()


def test_configs_validate_and_a_bad_figure_cell_fails_before_training():
  for arg in ("cpu", "full", "mnist_full", "cifar10_cpu"):
    suite.validate(adv_transform.get_config(arg))
  config = adv_transform.get_config("cpu")
  assert config.suite_name == "paper_004_adv_transform_mnist_cpu"
  assert adv_transform.get_config("full").members.ours_cifar10_full.model.name == "resnet18"
  with pytest.raises(ValueError, match="svhn_cpu|'cpu', 'full'"):
    adv_transform.get_config("svhn_cpu")
  label, cells = config.figures.figure_7_eot.series[0]
  config.figures.figure_6_delta.series = ((label, cells[:-1]),)
  with pytest.raises(ValueError, match="figure_6_delta, series .*2 cells for 3 x values"):
    suite.validate(config)
  config = adv_transform.get_config("cpu")
  config.figures.figure_7_eot.series = ((label, cells[:-1] + ("ours_mnist_cpu:bpda_i_eot999",)),)
  # run_suite validates first, before any member trains.
  with pytest.raises(ValueError, match="figures.figure_7_eot: .*no attack 'bpda_i_eot999'"):
    suite.validate(config)
