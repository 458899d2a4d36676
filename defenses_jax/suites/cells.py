"""A table cell of a paper suite: the text a suite config writes ('<member>:<attack key>', ...),
parsed once into a typed reference, checked against the members before any training, and looked
up in the members' results when the tables are filled.

The grammar:
  ''                                   no entry in the paper
  'not run'                            the paper reports an attack this library lacks
  '<member>:clean'                     clean accuracy
  '<member>:time'                      training seconds (train.json)
  '<member>:time_ratio:<other>'        training seconds / the other member's
  '<member>:<attack key>'              robust accuracy under one of the member's eval.attacks
  '<member>:<attack key>:<metric>'     another number of that attack (ATTACK_METRICS)
  '<member>:<detection key>'           a number of the member's detector (DETECTION_KEYS)
  '<member>:defense:<name>'            the defense's own number (Defense.evaluation_metrics)
  '<member>:worst_case:<group>'        the worst case over eval.worst_case_groups.<group>
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from defenses_jax.errors import ConfigError
from defenses_jax.evaluation.results import AttackResult, EvalSummary, TrainSummary

NOT_RUN = "not run"
# An attack's numbers besides robust accuracy: metric -> (section of AttackResult, field).
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
# Detection metrics measured over the attack's successful adversarial examples only: their cells
# carry how many there were, so a number resting on a handful says so (tables.FEW_SUCCESSFUL).
OVER_SUCCESSFUL = ("auc", "detection_rate", "precision", "recall")
# The detector's numbers of a member (fields of results.DetectionSummary).
DETECTION_KEYS = ("worst_case_misclassified_and_accepted", "held_out_false_positive_rate",
                  "worst_case_bounded_misclassified_and_accepted", "davies_bouldin_index")
# Named numbers of a member: section -> the EvalSummary field holding them.
MEMBER_SECTIONS = {"defense": "defense_metrics", "worst_case": "worst_case_groups"}
# A cell's status besides 'ok', 'warn' (a sanity check failed), 'missing' and the two kinds.
OTHER_SETTINGS = "(other settings)"  # Attack params overridden: not comparable with the paper.


@dataclasses.dataclass(frozen=True)
class CellRef:
  """A parsed cell: its kind ('none', 'not_run', 'clean', 'time', 'time_ratio', 'attack',
  'detection', 'defense', 'worst_case'), member, and key (the attack key, detection key,
  section name or other member) and metric (an attack's, '' for robust accuracy)."""
  kind: str
  member: str = ""
  key: str = ""
  metric: str = ""
  text: str = ""

  @property
  def wall_clock(self) -> bool:
    return self.kind in ("time", "time_ratio")


def parse(text: str) -> CellRef:
  """The reference a cell's text names; ConfigError if the text cannot be one."""
  if text == "":
    return CellRef("none", text=text)
  if text == NOT_RUN:
    return CellRef("not_run", text=text)
  member, _, key = text.partition(":")
  if not member or not key:
    raise ConfigError(f"cell {text!r}: write '<member>:<result>' ('' or {NOT_RUN!r} for none).")
  head, _, rest = key.partition(":")
  if key in ("clean", "time"):
    return CellRef(key, member, text=text)
  if head == "time_ratio":
    return CellRef("time_ratio", member, rest, text=text)
  if key in DETECTION_KEYS:
    return CellRef("detection", member, key, text=text)
  if head in MEMBER_SECTIONS:
    return CellRef(head, member, rest, text=text)
  if rest and rest not in ATTACK_METRICS:
    raise ConfigError(f"cell {text!r}: unknown metric {rest!r}; choose one of "
                      f"{sorted(ATTACK_METRICS)}.")
  return CellRef("attack", member, head, rest, text=text)


def check(ref: CellRef, members, where: str) -> None:
  """Raises ConfigError unless the members will produce what `ref` names (before training)."""
  if ref.kind in ("none", "not_run"):
    return
  if ref.member not in members:
    raise ConfigError(f"{where}: unknown member {ref.member!r}.")
  member = members[ref.member]
  if ref.kind == "time_ratio" and ref.key not in members:
    raise ConfigError(f"{where}: unknown member in {ref.text!r}.")
  needs_detector = ref.kind == "detection" or (
      ref.kind == "attack" and ATTACK_METRICS.get(ref.metric, (None,))[0] == "detection")
  if needs_detector and not member.eval.detection.detector:
    raise ConfigError(f"{where}: {ref.text!r} needs a detector in member {ref.member!r}'s "
                      "eval.detection.")
  if ref.kind == "worst_case" and ref.key not in member.eval.worst_case_groups:
    raise ConfigError(f"{where}: member {ref.member!r} has no eval.worst_case_groups.{ref.key}.")
  if ref.kind == "attack" and ref.key not in member.eval.attacks:
    raise ConfigError(f"{where}: member {ref.member!r} has no attack {ref.key!r} in its "
                      f"eval.attacks ({sorted(member.eval.attacks.keys())}).")


def value(ref: CellRef, paper: Optional[float], results: dict, training: dict) -> dict:
  """The filled cell: {source, ours, paper, status, ...}; `results` and `training` map members
  to their EvalSummary and TrainSummary (None where missing)."""
  cell = {"source": ref.text, "ours": None, "paper": paper, "status": "missing"}
  if ref.kind in ("none", "not_run"):
    return {**cell, "status": ref.text or "no entry"}
  if ref.wall_clock:
    seconds = _training_seconds(ref, training)
    return {**cell, "ours": seconds, "status": "missing" if seconds is None else "ok"}
  summary: Optional[EvalSummary] = results.get(ref.member)
  if summary is None:
    return cell
  if ref.kind == "clean":
    return {**cell, "ours": summary.clean_accuracy, "status": "ok"}
  if ref.kind in MEMBER_SECTIONS:
    values = getattr(summary, MEMBER_SECTIONS[ref.kind]) or {}
    return {**cell, "ours": values.get(ref.key), "status": "ok" if ref.key in values
            else "missing"}
  if ref.kind == "detection":  # None (shown "-"): no correctly classified attacked image.
    if summary.detection is None:
      return cell
    return {**cell, "ours": getattr(summary.detection, ref.key), "status": "ok"}
  result: Optional[AttackResult] = summary.attacks.get(ref.key)
  if result is None:
    return cell
  ours = result.robust_accuracy
  if ref.metric:
    section, name = ATTACK_METRICS[ref.metric]
    holder = result if section is None else getattr(result, section)
    ours = None if holder is None else getattr(holder, name)
  if result.overridden_params:  # Not the settings the paper's number was measured with.
    return {**cell, "ours": ours, "status": OTHER_SETTINGS,
            "overridden_params": result.overridden_params}
  if ref.metric in OVER_SUCCESSFUL and result.detection is not None:
    cell["num_successful"] = result.detection.num_successful
  warnings = summary.warnings_for(result.label)
  return {**cell, "ours": ours, "status": "warn" if warnings else "ok", "warnings": warnings,
          "attack_success_rate": result.attack_success_rate, "median_l2": result.median_l2,
          "median_linf": result.median_linf}


def _training_seconds(ref: CellRef, training: dict) -> Optional[float]:
  seconds = lambda name: getattr(training.get(name) or TrainSummary("", 0), "training_seconds")
  if ref.kind == "time":
    return seconds(ref.member)
  if seconds(ref.member) is None or not seconds(ref.key):
    return None
  return seconds(ref.member) / seconds(ref.key)
