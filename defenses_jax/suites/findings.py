"""A suite's findings: per defense, the paper's claim beside our number under the paper's own
protocol and under the strongest attack we ran, with a verdict that follows from those numbers
by one stated rule (never written by hand, so it cannot outlive the numbers it summarises).

A suite config may hold `findings`, a tuple of
  {"defense": "Target Training", "member": <member>,
   "quantity": "robust accuracy" | "adversarial examples stopped",
   "claim": <the paper's number, a fraction>, "claim_source": "Table 2, CW-L2 (k=40), MNIST",
   "protocol": <cell of our number under the paper's protocol>,
   "strongest": (<cells of our other attacks on the same defense>, ...),
   "note": <optional context, shown after the verdict>}
where a cell is a table cell (cells.py). "adversarial examples stopped" is 1 - (misclassified and
accepted) for a detector-guarded defense: the fraction of attacked images the deployed system
classifies correctly or rejects.
"""

from __future__ import annotations

from typing import Optional

from defenses_jax.errors import ConfigError
from defenses_jax.evaluation import report
from defenses_jax.suites import cells

QUANTITIES = ("robust accuracy", "adversarial examples stopped")
TOLERANCE = 0.05  # As the tables' "(differs)": five points.
FIELDS = ("defense", "member", "quantity", "claim", "claim_source", "protocol", "strongest")


def check(findings, members, where: str) -> None:
  """ConfigError unless every finding is complete and its cells name results the members will
  produce (before any training)."""
  for i, finding in enumerate(findings):
    at = f"{where}: findings[{i}]"
    missing = [name for name in FIELDS if name not in finding]
    if missing:
      raise ConfigError(f"{at} lacks {missing}.")
    if finding["quantity"] not in QUANTITIES:
      raise ConfigError(f"{at}: quantity must be one of {QUANTITIES}; got "
                        f"{finding['quantity']!r}.")
    if not 0 <= finding["claim"] <= 1:
      raise ConfigError(f"{at}: claim must be a fraction in [0, 1]; got {finding['claim']!r}.")
    if not finding["strongest"]:
      raise ConfigError(f"{at}: strongest names no attack.")
    for text in (finding["protocol"], *finding["strongest"]):
      ref = cells.parse(text)
      if ref.kind not in ("attack", "worst_case", "detection"):
        raise ConfigError(f"{at}: {text!r} is not an attack's number.")
      cells.check(ref, members, at)


def _ours(text: str, quantity: str, results: dict) -> dict:
  """Our number in `quantity`'s unit for one cell, with its sanity status."""
  cell = cells.value(cells.parse(text), None, results, {})
  value = cell["ours"]
  if value is not None and quantity == "adversarial examples stopped":
    value = 1.0 - value
  return {"source": text, "value": value, "status": cell["status"],
          "label": _label(text, results)}


# The detector's per-example worst cases, named as the README's findings table shows them.
DETECTION_LABELS = {
    "worst_case_bounded_misclassified_and_accepted":
        "the per-example worst case over every bounded attack",
    "worst_case_misclassified_and_accepted": "the per-example worst case over every attack"}


def _label(text: str, results: dict) -> str:
  """The attack's own label (as in eval.md), or the cell text where there is none."""
  ref = cells.parse(text)
  summary = results.get(ref.member)
  if ref.kind == "attack" and summary is not None and ref.key in summary.attacks:
    return summary.attacks[ref.key].label
  if ref.kind == "worst_case":
    return f"worst case of {ref.key}"
  return DETECTION_LABELS.get(ref.key, text) if ref.kind == "detection" else text


def verdict(claim: float, protocol: Optional[float], strongest: Optional[float],
            strongest_label: str) -> str:
  """The rule, with TOLERANCE (five points) either way: our strongest attack's number agrees
  with the claim, falls below it (broken, when the paper's protocol still gives the claim; else
  not reproduced), or stays above it (the defense is more robust than the paper says)."""
  if protocol is None or strongest is None:
    return "not measured"
  within = TOLERANCE + 1e-9  # Exactly five points counts as within (0.92 - 0.05 = 0.8700..01).
  if strongest > claim + within:
    return "more robust than the paper reports"
  if strongest >= claim - within:
    return "agrees with the paper"
  if protocol >= claim - within:
    return f"broken by {strongest_label}; the paper's protocol gives its claim"
  return f"below the claim, under the paper's protocol too ({strongest_label}: lowest)"


def compute(findings, results: dict) -> list[dict]:
  """The findings of a suite from its members' EvalSummary records ({member: summary})."""
  out = []
  for finding in findings:
    quantity = finding["quantity"]
    protocol = _ours(finding["protocol"], quantity, results)
    measured = [_ours(text, quantity, results) for text in finding["strongest"]]
    measured.append(protocol)
    # A missing result leaves the finding unmeasured; a number that is None where the result
    # exists (no correctly classified attacked image) has nothing to compare and is skipped.
    known = [m for m in measured if m["value"] is not None]
    complete = all(m["status"] != "missing" for m in measured)
    strongest = min(known, key=lambda m: m["value"]) if complete and known else None
    out.append({
        "defense": finding["defense"], "member": finding["member"], "quantity": quantity,
        "claim": finding["claim"], "claim_source": finding["claim_source"],
        "protocol": protocol, "strongest": strongest,
        "verdict": verdict(finding["claim"], protocol["value"],
                           strongest and strongest["value"], strongest and strongest["label"]),
        "note": finding.get("note", "")})
  return out


def markdown_rows(suite: str, scale: str, link: str, findings: list[dict]) -> list[str]:
  """The README findings table's rows of one published suite."""
  rows = []
  for f in findings:
    strongest = f["strongest"] or {"value": None, "label": "-", "status": "missing"}
    doubt = lambda m: f" {report.UNTRUSTED}" if m["status"] == "warn" else ""
    note = f" {f['note']}" if f["note"] else ""
    rows.append(
        f"| {f['defense']} | {report.pct(f['claim'])} {f['quantity']} ({f['claim_source']}) "
        f"| {_pct(f['protocol']['value'])}{doubt(f['protocol'])} "
        f"| {_pct(strongest['value'])}{doubt(strongest)} ({strongest['label']}) "
        f"| {scale} | [{f['verdict']}]({link}){note} |")
  return rows


def _pct(value: Optional[float]) -> str:
  return "-" if value is None else report.pct(value)


HEADER = ["| Defense | Paper's claim | Ours, paper's protocol | Ours, strongest attack | Scale "
          "| Verdict |", "|---|---|---|---|---|---|"]
