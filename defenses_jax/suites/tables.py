"""A suite's tables (see runner.py): each cell looked up in its member's results, our number beside
the paper's, cells whose evaluation failed a sanity check marked."""

from __future__ import annotations

from typing import Optional

from defenses_jax.evaluation import report
from defenses_jax.suites import cells

UNTRUSTED = report.UNTRUSTED  # A sanity check failed for this cell's evaluation.
# A detection metric over fewer successful adversarial examples than this (e.g. an AUC over the
# 2 images a weak attack fooled) is shown with its count and not compared with the paper.
FEW_SUCCESSFUL = 20


def fill_tables(tables_config, results: dict, training: Optional[dict] = None) -> list[dict]:
  """The configured tables with every cell (cells.py) looked up in `results` ({member:
  EvalSummary}) and `training` ({member: TrainSummary}, for training-time cells). Columns are
  named; a row's cells and paper numbers are looked up by column key."""
  filled = []
  for table_id in tables_config.order:
    t = tables_config[table_id]
    keys = [key for key, _ in t.columns]
    formats = dict(t.get("formats") or {})
    rows = [{"label": row["label"],
             "cells": [cells.value(cells.parse(row["cells"][key]), row["paper"].get(key),
                                   results, training or {}) for key in keys]}
            for row in t.rows]
    filled.append({"id": table_id, "title": t.title, "note": t.get("note", ""),
                   "row_header": t.get("row_header", "Attack"),
                   "formats": [formats.get(key, "pct") for key in keys],
                   "columns": [heading for _, heading in t.columns], "rows": rows})
  return filled


def _format(value, kind: str) -> str:
  if value is None:
    return "-"
  return {"pct": report.pct, "seconds": lambda v: f"{v:.1f} s",
          "ratio": lambda v: f"{v:.2f}x", "number": lambda v: f"{v:.3f}"}[kind](value)


def _ours(cell: dict, kind: str = "pct") -> str:
  if cell["status"] == cells.NOT_RUN:
    return cells.NOT_RUN
  if cell["status"] == "missing":
    return "missing"
  mark = f" {UNTRUSTED}" if cell["status"] == "warn" else ""
  few = cell.get("num_successful")
  if few is not None and few < FEW_SUCCESSFUL:  # n=0: no successful example, no number.
    return _format(cell["ours"], kind) + f" (n={few})" + mark
  if cell["ours"] is None:
    return "-"
  if cell["status"] == cells.OTHER_SETTINGS:
    return _format(cell["ours"], kind) + f" {cells.OTHER_SETTINGS}"
  differs = ""
  if kind == "pct":
    differs = report.differs_marker(cell["ours"], cell["paper"])
  elif kind == "number" and cell["paper"]:  # AUCs, distortions, indices: 5% relative.
    differs = report.differs_marker(cell["ours"], cell["paper"], 0.05 * abs(cell["paper"]))
  return _format(cell["ours"], kind) + differs + mark


def markdown(description: str, tables: list[dict], results: dict) -> str:
  lines = [f"# {description}", ""]
  lines += ["| Member | Step | Clean accuracy | Attacked images | Sanity checks |",
            "|---|---|---|---|---|"]
  for name, s in results.items():
    if s is None:
      lines.append(f"| {name} | - | - | - | not evaluated |")
      continue
    warned = sum(not c.passed for c in s.sanity)
    verdict = (f"{warned} of {len(s.sanity)} warn" if warned else f"all {len(s.sanity)} pass"
               ) if s.sanity else "not run"
    lines.append(f"| {name} | {s.step} | {report.pct(s.clean_accuracy)} | "
                 f"{s.num_attack_examples} | {verdict} |")
  lines += ["", "Each cell: ours, then the paper's. \"(differs)\": more than 5 points apart "
            "(numbers that are not percentages: more than 5% apart). "
            f"\"{UNTRUSTED}\": a sanity check (Carlini et al. 2019) failed for this evaluation; "
            "see the member's results/eval.md. \"(n=K)\": a detection number over only the K "
            f"(fewer than {FEW_SUCCESSFUL}) adversarial examples that fooled the classifier, too "
            "few to compare with the paper.", ""]
  for t in tables:
    lines += [f"## {t['title']}", ""]
    if t["note"]:
      lines += [t["note"], ""]
    header = [t["row_header"]] + [f"{c} ({who})" for c in t["columns"] for who in ("ours", "paper")]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in t["rows"]:
      cells = [x for c, kind in zip(row["cells"], t["formats"])
               for x in (_ours(c, kind), _format(c["paper"], kind))]
      lines.append("| " + " | ".join([row["label"]] + cells) + " |")
    lines.append("")
  return "\n".join(lines)
