"""Paper suites: a tiny run of the Target Training suite end to end (every member trained and
evaluated, tables filled), resumption, and bad suite configs rejected before any training."""

import copy
import glob
import inspect
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import blob_dataset
from defenses_jax.attacks.registry import attack_info
from defenses_jax.evaluation import report
from defenses_jax.suites import publish
from defenses_jax.suites import runner as suite
from experiments.common import table_row
from experiments.paper_000_target_training import config as target_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shrink(member):
  """The member's code path on tiny data: one epoch, attacks cut to a few iterations."""
  member.train.epochs = 1
  member.train.replays = min(member.train.replays, 2)
  member.eval.monitor.num_examples = 8
  member.train.batch_size = 16
  member.train.progress = False
  member.train.fail_at_chance = False  # One epoch of a few steps may end near chance.
  member.eval.batch_size = 8
  member.eval.num_attack_examples = 8
  member.eval.sanity.enabled = False
  member.eval.eps_sweep.attack = ""
  cuts = {"max_iterations": 3, "binary_search_steps": 1, "max_total_iterations": 6,
          "max_iter": 3, "steps": 2, "n2": 2, "restarts": 2, "max_passes": 1, "max_iter_df": 2,
          "square_queries": 10, "coordinates": 4, "phase1_iterations": 3, "phase2_iterations": 3,
          "phase1_binary_steps": 1, "phase2_binary_steps": 1, "max_steps": 3,
          "max_queries": 40, "eot_iter": 2}
  for entry in member.eval.attacks.values():
    # Defaults too (DeepFool's 50 iterations cost minutes on a tiny CNN with XLA's optimisations
    # off); a cut never lengthens an attack.
    defaults = inspect.signature(attack_info(entry.attack).fn).parameters
    for name, value in cuts.items():
      current = entry.params.get(name, defaults[name].default if name in defaults else None)
      if isinstance(current, int) and not isinstance(current, bool):
        entry.params[name] = min(current, value)
    if "fit_examples" in entry:
      entry.fit_examples = 16
  options = member.defense.options
  if "attack_params" in options:
    for name, value in cuts.items():
      if name in options.attack_params:
        options.attack_params[name] = value


def tiny_suite(arg="cpu", module=target_training):
  config = module.get_config(arg)
  for name in config.order:
    shrink(config.members[name])
  if "figures" in config:
    for fig_id in config.figures.order:
      fig = config.figures[fig_id]
      for field, value in (("num_examples", 8), ("n_values", (1, 2)), ("n1", 2), ("n2", 3),
                           ("eps_values", (0.05, 0.1))):  # Each eps compiles its attack.
        if field in fig:
          fig[field] = value
  return config


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("suite"))
  datasets = (blob_dataset(64, num_classes=10, seed=0), blob_dataset(16, num_classes=10, seed=1))
  config = tiny_suite()
  out = suite.run_suite(config, workdir, "train", datasets)
  return config, workdir, datasets, out


def test_suite_trains_evaluates_and_writes_every_table(suite_run):
  config, workdir, _, out = suite_run
  with open(os.path.join(workdir, config.suite_name, "tables.json")) as f:
    tables = json.load(f)["tables"]
  assert [t["id"] for t in tables] == list(config.tables.order)
  markdown = open(out["tables"]).read()
  for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 7"):
    assert title in markdown
  cells = [c for t in tables for r in t["rows"] for c in r["cells"]]
  # Every cell that names a result found it, ZOO's included: no paper row is left "not run".
  assert not [c for c in cells if c["status"] in ("missing", "not run")]
  assert [c for c in cells if c["source"].endswith(":zoo_paper")]
  # Every number is the one its member's eval.json holds for the cell's result key.
  for c in cells:
    if c["status"] not in ("ok", "warn"):
      continue
    member, _, key = c["source"].partition(":")
    with open(os.path.join(workdir, member, "results", "eval.json")) as f:
      saved = json.load(f)
    expected = saved["clean_accuracy"] if key == "clean" else saved["attacks"][key][
        "robust_accuracy"]
    assert c["ours"] == pytest.approx(expected), c["source"]
  table_7 = next(t for t in tables if t["id"] == "table_7")
  assert table_7["columns"][2] == "No defense"
  assert table_7["rows"][0]["cells"][2]["paper"] == pytest.approx(0.991)
  table_1 = next(t for t in tables if t["id"] == "table_1")
  uap = next(r for r in table_1["rows"] if r["label"] == "UAP")
  assert [c["paper"] for c in uap["cells"]] == [0.986, 0.584, 0.421]
  assert [c["source"] for c in uap["cells"]] == ["tt_mnist_cpu:uap_paper",
                                                 "at_pgd_mnist_cpu:uap_wb", "standard_mnist_cpu:uap"]
  beyond = next(t for t in tables if t["id"] == "beyond_threat_models")  # Algorithm 1 only.
  sources = [c["source"] for r in beyond["rows"] for c in r["cells"] if c["source"]]
  assert len(sources) == 3 * 4 + 2 + 3 and all(s.startswith("tt_mnist_cpu:") for s in sources)
  zoo = next(r for r in table_1["rows"] if r["label"] == "ZOO")
  assert zoo["cells"][1]["paper"] is None and zoo["cells"][1]["status"] == "no entry"


def test_transfer_reuses_the_sources_saved_examples(suite_run):
  config, workdir, _, _ = suite_run
  source = config.order[0]
  (path,) = glob.glob(os.path.join(workdir, source, "results", "adversarial", "cw_l2_k0-*.npz"))
  assert np.load(path)["x_adv"].shape == (8, 12, 12, 1)
  with open(os.path.join(workdir, "tt_mnist_cpu", "results", "eval.json")) as f:
    transfer = json.load(f)["attacks"]["cw_l2_k0_transfer"]
  assert transfer["reused_examples"] == os.path.relpath(path, workdir)


def test_publish_copies_the_suite_with_its_provenance_and_findings(suite_run, tmp_path):
  config, workdir, _, _ = suite_run
  results_root, readme = str(tmp_path / "results"), str(tmp_path / "README.md")
  with open(readme, "w") as f:
    f.write(f"intro\n{publish.BEGIN}\nstale\n{publish.END}\nrest\n")
  dest = publish.publish_suite(config, workdir, results_root, readme)
  out_dir = os.path.join(workdir, config.suite_name)
  read = lambda path, mode="r": open(path, mode).read()
  # The suite's tables exactly as it wrote them, under a header naming the code that made them.
  published_md = read(os.path.join(dest, "tables.md"))
  assert published_md.endswith(read(os.path.join(out_dir, "tables.md")))
  commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  header = published_md[:-len(read(os.path.join(out_dir, "tables.md")))]
  assert commit[:12] in header and f"{os.cpu_count()} cores" in header
  assert read(os.path.join(dest, "tables.json"), "rb") == read(
      os.path.join(out_dir, "tables.json"), "rb")
  (run,) = json.loads(read(os.path.join(dest, "provenance.json")))["runs"]
  assert run["mode"] == "train" and run["finished"] and run["versions"]["jax"]
  assert [s["stage"] for s in run["stages"]] == (
      [f"train {m}" for m in config.order] + [f"evaluate {m}" for m in config.order]
      + ["tables and figures"])
  # The README's block: our numbers as the members' eval.json hold them, the rest untouched.
  text = read(readme)
  assert text.startswith(f"intro\n{publish.BEGIN}\n") and text.endswith(f"{publish.END}\nrest\n")
  assert "stale" not in text
  member = f"tt_pgd_mnist_cpu"
  with open(os.path.join(workdir, member, "results", "eval.json")) as f:
    attacks = json.load(f)["attacks"]
  row = next(line for line in text.splitlines() if line.startswith("| Target Training (Alg"
                                                                     "orithm 3"))
  lowest = min(attacks[k]["robust_accuracy"] for k in ("pgd_paper", "pgd_deployed",
                                                      "ll_pgd_deployed", "autoattack_deployed"))
  assert f"| {report.pct(attacks['pgd_paper']['robust_accuracy'])}" in row
  assert f"| {report.pct(lowest)}" in row and "92.3%" in row
  assert os.path.exists(os.path.join(results_root, publish.FIGURE))
  # Publishing again changes nothing.
  everything = glob.glob(os.path.join(results_root, "**"), recursive=True) + [readme]
  before = {p: (os.stat(p).st_mtime_ns, read(p, "rb")) for p in everything if os.path.isfile(p)}
  publish.publish_suite(config, workdir, results_root, readme)
  assert {p: (os.stat(p).st_mtime_ns, read(p, "rb")) for p in before} == before


def test_publish_refuses_stale_tables_and_evaluations(suite_run, tmp_path):
  config, workdir, _, _ = suite_run
  results_root, readme = str(tmp_path / "results"), str(tmp_path / "README.md")
  with open(readme, "w") as f:
    f.write(f"{publish.BEGIN}\n{publish.END}\n")
  tables_path = os.path.join(workdir, config.suite_name, "tables.json")
  original = open(tables_path).read()
  edited = json.loads(original)
  edited["tables"][0]["rows"][0]["cells"][0]["ours"] = 0.123
  with open(tables_path, "w") as f:
    json.dump(edited, f)
  try:
    with pytest.raises(publish.PublishError, match="differs from the members' results"):
      publish.publish_suite(config, workdir, results_root, readme)
  finally:
    with open(tables_path, "w") as f:
      f.write(original)
  changed = copy.deepcopy(config)
  changed.members.tt_mnist_cpu.eval.num_attack_examples = 4
  with pytest.raises(publish.PublishError, match="tt_mnist_cpu"):
    publish.publish_suite(changed, workdir, results_root, readme)
  assert not os.path.exists(results_root)


def test_rerun_skips_finished_members_and_reevaluates_changed_ones(suite_run, capsys):
  config, workdir, datasets, _ = suite_run
  capsys.readouterr()
  suite.run_suite(config, workdir, "eval", datasets)
  printed = capsys.readouterr().out
  assert printed.count("evaluation up to date") == len(config.order)
  config.members.at_fgsm_mnist_cpu.eval.attacks.fgsm_wb.params.eps = 0.2
  suite.run_suite(config, workdir, "eval", datasets)
  assert "evaluating at_fgsm_mnist_cpu" in capsys.readouterr().out


def test_bad_suite_configs_fail_before_training(tmp_path):
  config = target_training.get_config("cpu")
  config.tables.table_1.rows = (table_row("CW", {}, target_training="tt_mnist_cpu:nope",
                                           adversarial_training="", unsecured=""),)
  with pytest.raises(ValueError, match="no attack 'nope'"):
    suite.run_suite(config, str(tmp_path))
  config.tables.table_1.rows = (table_row("CW", {"unsecure": 0.1}, target_training="",
                                           adversarial_training="", unsecured=""),)
  with pytest.raises(ValueError, match="paper numbers for"):  # A misspelt column.
    suite.run_suite(config, str(tmp_path))
  config = target_training.get_config("cpu")
  config.members.tt_mnist_cpu.eval.attacks.cw_l2_k0_paper.params.kappaa = 1.0
  with pytest.raises(ValueError, match="kappaa"):
    suite.run_suite(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_cifar_configs_are_consistent():
  for arg in ("cifar10_cpu", "cifar10_full", "full"):
    suite.validate(target_training.get_config(arg))
  with pytest.raises(ValueError, match="mnist_cpu"):
    target_training.get_config("svhn_cpu")
