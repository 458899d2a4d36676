"""What `evaluate` returns: a typed report, with JSON and markdown writers.

Robust accuracy is over all the evaluated images: an image counts as robust when neither it nor
any attack's example of it gets through: is misclassified and, for a detector-guarded system,
accepted by the detector. A guarded system must also accept the clean image (Tramer 2022: a
refused clean input is an error too), so its robust accuracy is at most its clean accuracy on
accepted images; `misclassified_and_accepted` is the attacker's side alone, the share of images
for which some input (clean or adversarial) got through.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from defenses_jax.evaluation.results import SanityCheck


@dataclasses.dataclass
class RowResult:
  """One attack of the battery."""
  name: str
  description: str
  access: str
  detector_aware: Optional[bool]
  cascade: bool  # False: a reference row, run on every image the clean input left unbroken.
  attacked: int  # Images it attacked.
  broken: int  # Of those, how many it broke.
  robust_accuracy_after: float  # Over all images, after this row and every row before it.
  robust_accuracy_alone: Optional[float]  # This row's own, where it attacked every image.
  seconds: float
  mean_queries: Optional[float] = None  # Score queries per attacked image (query attacks).
  # Examples not counted because they left the box or the ball or were not finite.
  invalid: int = 0


@dataclasses.dataclass
class Report:
  model: str  # "plain", "randomised", "detector-guarded" or both.
  preset: str
  eps: float
  norm: str
  num_examples: int
  clean_accuracy: float  # Guarded: correctly classified, whether flagged or not.
  robust_accuracy: float  # The worst case over the battery (see the module docstring).
  rows: list  # RowResult, in the order they ran.
  sanity: list  # SanityCheck records.
  seconds: float
  settings: dict
  # Per image: robust, the row that broke it ("clean" when the clean input already is; None
  # while robust), its worst-case example's L-inf and L2 distance from the image.
  per_example: dict
  clean_flagged_rate: Optional[float] = None  # Guarded: clean images the detector refuses.
  misclassified_and_accepted: Optional[float] = None  # Guarded (see the module docstring).
  detector_weight: Optional[float] = None
  adversarial: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

  @property
  def sanity_passed(self) -> bool:
    return all(check.passed for check in self.sanity)

  @property
  def warnings(self) -> list[str]:
    return [check.detail for check in self.sanity if not check.passed]

  def row(self, name: str) -> RowResult:
    for row in self.rows:
      if row.name == name:
        return row
    raise KeyError(f"no attack row {name!r}; rows: {[r.name for r in self.rows]}")

  def to_json(self) -> dict:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ("rows", "sanity", "adversarial")}
    out["rows"] = [dataclasses.asdict(r) for r in self.rows]
    out["sanity"] = [c.to_json() for c in self.sanity]
    out["sanity_passed"] = self.sanity_passed
    return out

  def to_markdown(self) -> str:
    guarded = self.clean_flagged_rate is not None
    through = (f"; misclassified and accepted {self.misclassified_and_accepted:.2%}"
               if guarded else "")
    lines = [f"# Robustness of a {self.model} model: {self.norm} eps {self.eps:g}, preset "
             f"`{self.preset}`", "",
             f"{self.num_examples} images; clean accuracy {self.clean_accuracy:.2%}"
             + (f", clean images flagged {self.clean_flagged_rate:.2%}" if guarded else "")
             + f"; **worst-case robust accuracy {self.robust_accuracy:.2%}**{through}; "
             f"{self.seconds:.0f} s.", "",
             "| Attack | Settings | Attacked | Broken | Robust after | Alone | Queries | s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in self.rows:
      alone = "" if r.robust_accuracy_alone is None else f"{r.robust_accuracy_alone:.2%}"
      queries = "" if r.mean_queries is None else f"{r.mean_queries:.0f}"
      lines.append(f"| {r.name} | {r.description} | {r.attacked} | {r.broken} | "
                   f"{r.robust_accuracy_after:.2%} | {alone} | {queries} | {r.seconds:.1f} |")
    lines += ["", "Rows run in order, each on the images no earlier row got through (Broken: "
              "misclassified" + (" and accepted" if guarded else "") + "); a row with an "
              "'Alone' value attacked every image.", "", "## Sanity checks "
              "(Carlini et al. 2019)", ""]
    for check in self.sanity:
      lines.append(f"- **{check.status}** `{check.check}`: {check.detail}")
    verdict = ("All checks pass." if self.sanity_passed else
               "Some checks warn: the evaluation, not the model, is in doubt until they pass.")
    return "\n".join(lines + ["", verdict, ""])

  def write(self, directory: str) -> None:
    """report.json, report.md and, when the battery broke any image, adversarial.npz (each
    broken image's worst-case example and its index)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "report.json"), "w") as f:
      json.dump(self.to_json(), f, indent=1, default=_plain)
    with open(os.path.join(directory, "report.md"), "w") as f:
      f.write(self.to_markdown())
    broken = ~np.asarray(self.per_example["robust"])
    if self.adversarial is not None and broken.any():
      np.savez_compressed(os.path.join(directory, "adversarial.npz"),
                          index=np.flatnonzero(broken), images=self.adversarial[broken])


def _plain(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.generic,)):
    return value.item()
  raise TypeError(f"cannot write {type(value).__name__} as JSON")
