"""The config layout every experiment shares; experiment files fill in their own values.

Command-line overrides address these keys (`--config.train.epochs=3`); the config is locked,
so a misspelt key is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import os
import sys

# The layout and the attack entry live in the package, so that Colab users (who pip-install
# only defenses_jax) build configs the same way; re-exported here for the experiment files.
from defenses_jax import data
from defenses_jax.config import attack, base_config  # noqa: F401
from defenses_jax.errors import ConfigError

SCALES = ("cpu", "full")
# The full MNIST (60,000 / 10,000) with budgets that fit a suite in about 3 hours on 2 CPU cores
# (papers 000-003 and the main job; each config's docstring gives its arithmetic).
MNIST60K = "mnist60k"


def autoattack_entry(eps: float, eps_label: str, scale: str) -> dict:
  """The AutoAttack-style worst case every suite runs beside the paper's attacks (white-box):
  APGD-CE then APGD-T, 100 steps each, then Square on the points still robust; 9 targets and
  5,000 Square queries at full scale (AutoAttack's standard version), 3 targets and 1,000
  queries at the cpu and mnist60k scales (to keep a suite in CPU hours; the label says so)."""
  targets, queries = (9, 5000) if scale == "full" else (3, 1000)
  return attack("autoattack", f"AutoAttack-style (APGD-CE + APGD-T, {targets} targets, 100 "
                f"steps; Square, {queries:,} queries; eps={eps_label})", eps=eps, steps=100,
                num_target_classes=targets, square_queries=queries)


def parse_dataset_scale(arg, datasets: tuple[str, ...], default_dataset: str,
                        mnist60k: bool = False) -> tuple[str, str]:
  """'cpu' | 'full' | '<dataset>_cpu' | '<dataset>_full' -> (dataset, scale); also 'mnist60k'
  (or 'mnist_mnist60k') -> ('mnist', 'mnist60k') where the config has that scale."""
  arg = arg or "cpu"
  dataset, _, scale = arg.rpartition("_")
  dataset = dataset or default_dataset
  known = scale in SCALES or (mnist60k and scale == MNIST60K and dataset == "mnist")
  if dataset not in datasets or not known:
    choices = [f"{d}_{s}" for d in datasets for s in SCALES] + ([MNIST60K] if mnist60k else [])
    caller = os.path.relpath(sys._getframe(1).f_code.co_filename)  # The config file itself.
    raise ConfigError(f"unknown config argument {arg!r} (dataset and scale); use 'cpu', 'full' "
                      f"or one of {choices}, e.g. --config={caller}:{choices[0]}")
  return dataset, scale


def scale_notes(tables: dict, notes: dict) -> dict:
  """`tables` (a paper's tables) with each of `notes` ({table id: text}) appended to that
  table's note: what a scale departs from the paper in, in the table's own header."""
  for table_id, text in notes.items():
    tables[table_id]["note"] = " ".join(filter(None, (tables[table_id]["note"], text)))
  return tables


def steps_per_epoch(c) -> int:
  """An experiment config's training steps per epoch (the last partial batch dropped), known
  before its data is loaded."""
  size = data.split_size(c.dataset.name, c.dataset.train_split, c.dataset.num_train_examples)
  return data.steps_per_epoch(size, c.train.batch_size)


def set_cpu_dataset(c, dataset: str) -> None:
  """A cpu-scale member's data: the embedded MNIST subset (offline), or for another dataset a
  subset of tfds' of the same size (4,000 training / 1,000 test images; download once)."""
  c.dataset.name = "mnist_embedded" if dataset == "mnist" else dataset
  if dataset != "mnist":
    c.dataset.num_train_examples, c.dataset.num_test_examples = 4000, 1000


def table(title: str, columns, rows, note: str = "", row_header: str = "Attack",
          formats: dict = None) -> dict:
  """One table of a paper suite. columns: ((key, title), ...) in display order; rows from
  `table_row`; formats: {column key: 'pct' (default) | 'seconds' | 'ratio' | 'number'}."""
  return {"title": title, "note": note, "row_header": row_header,
          "columns": tuple((key, heading) for key, heading in columns), "rows": tuple(rows),
          "formats": dict(formats or {})}


def table_row(label: str, paper: dict, **cells: str) -> dict:
  """One row: a cell per column key ('<member>:<result key>', '' for no entry, 'not run') and
  the paper's numbers by column key (a column absent: the paper has no number there)."""
  return {"label": label, "cells": dict(cells), "paper": dict(paper)}


def detector_finding(defense: str, member: str, claim: float, claim_source: str,
                     protocol_attack: str, adaptive_attacks) -> dict:
  """A finding (defenses_jax/suites/findings.py) for a detector-guarded defense: the share of
  adversarial examples the deployed system stops, under the paper's attack and under the
  detector-aware attacks and the per-example worst case over every bounded attack."""
  stopped = lambda key: f"{member}:{key}:misclassified_and_accepted"
  return {"defense": defense, "member": member, "quantity": "adversarial examples stopped",
          "claim": claim, "claim_source": claim_source, "protocol": stopped(protocol_attack),
          "strongest": tuple(stopped(key) for key in adaptive_attacks)
          + (f"{member}:worst_case_bounded_misclassified_and_accepted",)}
