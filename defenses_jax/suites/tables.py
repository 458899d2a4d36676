"""A suite's tables (see runner.py): each cell looked up in its member's results, our number beside
the paper's, cells whose evaluation failed a sanity check marked."""

from __future__ import annotations

from typing import Optional

from defenses_jax.evaluation import report, sanity

NOT_RUN = "not run"
# '<member>:<attack key>:<metric>': a metric of one attack other than robust accuracy.
ATTACK_METRICS = {
    "auc": ("detection", "auc"),
    "detection_rate": ("detection", "detection_rate"),
    "flagged_rate": ("detection", "flagged_rate"),
    "flagged_precision": ("detection", "flagged_precision"),
    "precision": ("detection", "precision"),
    "recall": ("detection", "recall"),
    "misclassified_and_accepted": ("detection", "misclassified_and_accepted"),
    "mean_l2_per_pixel_evading": ("detection", "mean_l2_per_pixel_evading"),
    "mean_l2_per_pixel": (None, "mean_l2_per_pixel"),
    "attack_success_rate": (None, "attack_success_rate"),
}
# '<member>:<key>': a number of the member's detector evaluation (summary['detection']).
MEMBER_DETECTION_KEYS = ("worst_case_misclassified_and_accepted", "held_out_false_positive_rate",
                         "worst_case_bounded_misclassified_and_accepted", "davies_bouldin_index")
# '<member>:<section>:<name>': the defense's own numbers (Defense.evaluation_metrics) and the
# worst case over a named group of attacks (eval.worst_case_groups).
MEMBER_SECTIONS = {"defense": "defense_metrics", "worst_case": "worst_case_groups"}
UNTRUSTED = report.UNTRUSTED  # A sanity check failed for this cell's evaluation.
OTHER_SETTINGS = "(other settings)"  # Attack params overridden: not comparable with the paper.


def training_time_cell(spec: str, training: dict) -> Optional[float]:
  """'<member>:time' (training seconds) or '<member>:time_ratio:<other member>'."""
  member, _, key = spec.partition(":")
  seconds = lambda name: (training.get(name) or {}).get("training_seconds")
  if key == "time":
    return seconds(member)
  other = key.partition(":")[2]
  if seconds(member) is None or not seconds(other):
    return None
  return seconds(member) / seconds(other)


def _cell(spec: str, paper: Optional[float], results: dict, training: dict) -> dict:
  if spec in ("", NOT_RUN):
    return {"source": spec, "ours": None, "paper": paper, "status": spec or "no entry"}
  member, _, key = spec.partition(":")
  if key == "time" or key.startswith("time_ratio:"):
    value = training_time_cell(spec, training)
    return {"source": spec, "ours": value, "paper": paper,
            "status": "missing" if value is None else "ok"}
  summary = results.get(member)
  if summary is None:
    return {"source": spec, "ours": None, "paper": paper, "status": "missing"}
  if key == "clean":
    return {"source": spec, "ours": summary["clean_accuracy"], "paper": paper, "status": "ok"}
  section, _, name = key.partition(":")
  if section in MEMBER_SECTIONS:  # '<member>:defense:<name>', '<member>:worst_case:<group>'.
    values = summary.get(MEMBER_SECTIONS[section]) or {}
    return {"source": spec, "ours": values.get(name), "paper": paper,
            "status": "ok" if name in values else "missing"}
  if key in MEMBER_DETECTION_KEYS:  # None (shown "-"): no correctly classified attacked image.
    detection = summary.get("detection") or {}
    return {"source": spec, "ours": detection.get(key), "paper": paper,
            "status": "ok" if key in detection else "missing"}
  key, _, metric = key.partition(":")
  if key not in summary["attacks"]:
    return {"source": spec, "ours": None, "paper": paper, "status": "missing"}
  result = summary["attacks"][key]
  warnings = sanity.warnings_for(summary, result["label"])
  ours = result["robust_accuracy"]
  if metric:
    section, name = ATTACK_METRICS[metric]
    ours = (result.get(section) or {} if section else result).get(name)
  if result.get("overridden_params"):  # Not the settings the paper's number was measured with.
    return {"source": spec, "ours": ours, "paper": paper,
            "status": OTHER_SETTINGS, "overridden_params": result["overridden_params"]}
  return {"source": spec, "ours": ours, "paper": paper,
          "status": "warn" if warnings else "ok", "warnings": warnings,
          "attack_success_rate": result["attack_success_rate"],
          "median_l2": result["median_l2"], "median_linf": result["median_linf"]}


def cell_value(spec: str, results: dict) -> Optional[float]:
  """Our number of one cell ('<member>:...', as in a table), None where there is none."""
  return _cell(spec, None, results, {})["ours"]


def fill_tables(tables_config, results: dict, training: Optional[dict] = None) -> list[dict]:
  """The configured tables with every cell looked up in `results` ({member: eval summary}) and
  `training` ({member: train summary}, for training-time cells). Columns are named; a row's
  cells and paper numbers are looked up by column key."""
  filled = []
  for table_id in tables_config.order:
    t = tables_config[table_id]
    keys = [key for key, _ in t.columns]
    formats = dict(t.get("formats") or {})
    rows = [{"label": row["label"],
             "cells": [_cell(row["cells"][key], row["paper"].get(key), results, training or {})
                       for key in keys]}
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
  if cell["status"] == NOT_RUN:
    return NOT_RUN
  if cell["status"] == "missing":
    return "missing"
  if cell["ours"] is None:
    return "-"
  if cell["status"] == OTHER_SETTINGS:
    return _format(cell["ours"], kind) + f" {OTHER_SETTINGS}"
  mark = f" {UNTRUSTED}" if cell["status"] == "warn" else ""
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
    checks = s.get("sanity") or []
    warned = sum(c["status"] == sanity.WARN for c in checks)
    verdict = (f"{warned} of {len(checks)} warn" if warned else f"all {len(checks)} pass"
               ) if checks else "not run"
    lines.append(f"| {name} | {s['step']} | {report.pct(s['clean_accuracy'])} | "
                 f"{s['num_attack_examples']} | {verdict} |")
  lines += ["", "Each cell: ours, then the paper's. \"(differs)\": more than 5 points apart "
            "(numbers that are not percentages: more than 5% apart). "
            f"\"{UNTRUSTED}\": a sanity check (Carlini et al. 2019) failed for this evaluation; "
            "see the member's results/eval.md.", ""]
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
