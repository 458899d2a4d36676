"""A paper's experiment as one run: train every model its tables need, evaluate each under its
attacks, and write the paper's tables with our numbers beside the paper's.

A suite config (experiments/paper_00N_<name>/config.py) holds
  suite_name, description,
  members: {experiment_name: an ordinary experiment config},
  order:   the members in the order to train and evaluate them (transfer sources first),
  tables:  {order: (table ids), <id>: {title, note, row_header, formats,
            columns: ((column key, heading), ...),
            rows: ({label, cells: {column key: cell}, paper: {column key: number}}, ...)}}
(built with experiments.common.table and table_row) where a cell is '<member>:<result key>' (a
key of that member's eval.attacks: its robust accuracy; or 'clean'),
'<member>:<attack key>:<metric>' (another number of that attack, e.g. its detection AUC), and
more: cells.py has the grammar, parses each cell once and checks it before training.

Re-running resumes: training from each member's last checkpoint, evaluation skips members whose
results/eval.json matches their current checkpoint, eval config and model.compute_dtype.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

from defenses_jax import data, defenses, distill, train
from defenses_jax import evaluation
from defenses_jax.config import upgrade
from defenses_jax.config_checks import check_config
from defenses_jax.errors import ConfigError
from defenses_jax.evaluation.preflight import check_evaluation
from defenses_jax.suites import figures as suite_figures
from defenses_jax.suites import cells
from defenses_jax.suites import findings as suite_findings
from defenses_jax.suites import provenance
from defenses_jax.suites import tables as paper_tables
from defenses_jax.checkpoint import experiment_dir, latest_checkpoint_step
from defenses_jax.evaluation import results
from defenses_jax.files import write_json, write_text
from defenses_jax.progress import announce

MODES = ("train", "eval", "report")


def is_suite(config: ml_collections.ConfigDict) -> bool:
  return "members" in config


def validate(config: ml_collections.ConfigDict, datasets: Optional[tuple] = None) -> None:
  """Every member's whole config (sizes, attacks and their parameters, detector) is checked,
  and every table cell names a member and a result that member will produce, before any
  training starts."""
  members = config.members
  if config.suite_name in members:
    raise ConfigError(f"suite_name {config.suite_name!r} is also a member's name; their "
                     "directories would collide.")
  if set(config.order) != set(members.keys()):
    raise ConfigError(f"suite {config.suite_name}: order {sorted(config.order)} must list exactly "
                     f"the members {sorted(members.keys())}.")
  for name in config.order:
    if members[name].experiment_name != name:
      raise ConfigError(f"suite member {name!r} has experiment_name "
                       f"{members[name].experiment_name!r}; they must match.")
  for position, name in enumerate(config.order):
    member = members[name]
    try:
      specs = _check_member(member, datasets)
    except ValueError as e:
      raise ConfigError(f"suite {config.suite_name}, member {name!r}: {e}") from None
    for spec in specs:
      # Every member is trained before any is evaluated; a source listed later must not craft
      # examples for reuse (its saved examples would not exist yet), so only a detector-aware
      # transfer (crafted afresh on the source) may name one.
      if spec.source_experiment and spec.source_experiment not in config.order[:position] and (
          not spec.detector_aware or spec.source_experiment not in config.order):
        raise ConfigError(f"suite member {name!r}: transfer source {spec.source_experiment!r} "
                         "must be a member listed before it in order.")
  for table_id in config.tables.order:
    table = config.tables[table_id]
    keys = [key for key, _ in table.columns]
    for row in table.rows:
      label = row["label"]
      if sorted(row["cells"]) != sorted(keys) or set(row["paper"]) - set(keys):
        raise ConfigError(f"{table_id}, row {label!r}: columns {keys}, but cells for "
                         f"{sorted(row['cells'])} and paper numbers for {sorted(row['paper'])}.")
      for cell in row["cells"].values():
        _check_cell(cell, members, f"{table_id}, row {label!r}")
  for fig_id in (config.figures.order if "figures" in config else ()):
    fig = config.figures[fig_id]
    for label, cells in fig.get("series") or ():
      if len(cells) != len(fig.x_values):
        raise ConfigError(f"figures.{fig_id}, series {label!r}: {len(cells)} cells for "
                         f"{len(fig.x_values)} x values.")
      for cell in cells:
        _check_cell(cell, members, f"figures.{fig_id}")
  suite_findings.check(config.get("findings", ()), members, f"suite {config.suite_name}")


def _check_member(member: ml_collections.ConfigDict, datasets: Optional[tuple]) -> list:
  """What training and evaluating the member will check first, checked now: its config's
  numbers, its defense, its attacks, detector and sizes."""
  check_config(member)
  num_classes = datasets[0].num_classes if datasets else 10  # The papers' datasets have 10.
  defense = defenses.create_defense(member.defense.name, num_classes=num_classes,
                                    **member.defense.options)
  if datasets:
    num_test = len(datasets[1].take(member.dataset.num_test_examples))
  else:
    num_test = data.split_size(member.dataset.name, member.dataset.test_split,
                               member.dataset.num_test_examples)
  return check_evaluation(member, defense, num_test)


def _check_cell(cell: str, members, where: str) -> None:
  """A cell names a member and a result that member will produce (cells.py)."""
  try:
    ref = cells.parse(cell)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None
  cells.check(ref, members, where)


def run_suite(config: ml_collections.ConfigDict, workdir: str, mode: str = "train",
              datasets: Optional[tuple] = None, command: Optional[str] = None) -> dict:
  """mode: 'train' (train, evaluate, report), 'eval' (evaluate trained members, report) or
  'report' (tables from existing results). Each run is recorded, with the wall time of every
  stage it ran, in the suite's provenance.json (provenance.py; `command`: what to record as
  the command, default sys.argv)."""
  if mode not in MODES:
    raise ValueError(f"unknown suite mode {mode!r}; choose one of {MODES}.")
  validate(config, datasets)
  out_dir = os.path.join(os.path.abspath(workdir), config.suite_name)
  with provenance.recording(out_dir, mode, command) as run:
    members = [config.members[name] for name in config.order]
    if mode == "train":
      for i, member in enumerate(members):
        announce(f"[{i + 1}/{len(members)}] training {member.experiment_name}")
        with run.stage(f"train {member.experiment_name}"):
          if member.distill.teacher:
            distill.distill_proxy(member, workdir, datasets)
          else:
            train.train_and_evaluate(member, workdir, datasets)
    if mode in ("train", "eval"):
      for i, member in enumerate(members):
        if evaluation_is_current(member, workdir):
          announce(f"[{i + 1}/{len(members)}] {member.experiment_name}: evaluation up to date")
          continue
        announce(f"[{i + 1}/{len(members)}] evaluating {member.experiment_name}")
        with run.stage(f"evaluate {member.experiment_name}"):
          evaluation.evaluate(member, workdir, datasets)
    with run.stage("tables and figures"):
      written = _write_tables(config, workdir, out_dir, datasets, compute=mode != "report")
  return written


def _write_tables(config, workdir: str, out_dir: str, datasets, compute: bool) -> dict:
  """tables.md and tables.json (with the findings) from the members' results, and the figures
  (computed where `compute`, else drawn from their cached data)."""
  evaluated = {name: results.read_eval(experiment_dir(workdir, name)) for name in config.order}
  training = {name: results.read_train(experiment_dir(workdir, name)) for name in config.order}
  tables = paper_tables.fill_tables(config.tables, evaluated, training)
  figures = {}
  if "figures" in config:
    figures = suite_figures.make_figures(config, workdir, out_dir, datasets, compute=compute)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    markdown = paper_tables.markdown(config.description, tables, evaluated)
    markdown += "".join(f"\n![{name}]({os.path.basename(path)})\n" for name, path in
                        figures.items())
    write_text(os.path.join(out_dir, "tables.md"), markdown)
    write_json(os.path.join(out_dir, "tables.json"), {
        "suite": config.suite_name, "tables": tables,
        "findings": suite_findings.compute(config.get("findings", ()), evaluated)})
    print(markdown)
  return {"suite": config.suite_name, "tables": os.path.join(out_dir, "tables.md")}


def evaluation_is_current(member: ml_collections.ConfigDict, workdir: str) -> bool:
  """eval.json exists for the member's latest checkpoint and was made with this eval config."""
  previous = results.read_eval(experiment_dir(workdir, member.experiment_name))
  if previous is None:
    return False
  as_json = lambda value: json.loads(json.dumps(value))
  # Made by an earlier version: the eval keys added since held their defaults (results made
  # before eval.worst_case_groups existed are current for a member that names no group).
  same_config = bool(previous.eval_config) and (
      as_json(upgrade({"eval": previous.eval_config})["eval"]) == as_json(member.eval.to_dict()))
  same_config &= previous.compute_dtype == member.model.compute_dtype
  return same_config and previous.step == latest_checkpoint_step(workdir,
                                                                 member.experiment_name)
