"""The results of an evaluation and of a training run, as typed records: what evaluate() and
train() return, what results/eval.json and results/train.json hold (their JSON is these records'
serialisation, written and read here only), and what the reports, suite tables and figures read.

Files written before a field existed read back with that field's default; a damaged file reads
as None, with a warning naming it (files.read_json_or_none).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from defenses_jax import files

PASS, WARN = "pass", "warn"


def _known(cls, data: dict) -> dict:
  """The entries of `data` that are fields of the dataclass `cls` (others are ignored: a file
  may come from a later version)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in data.items() if k in names}


def _without_none(record) -> dict:
  """A record as JSON-able dict, optional fields left out while they are None."""
  return {k: v for k, v in dataclasses.asdict(record).items() if v is not None}


@dataclasses.dataclass
class SanityCheck:
  """One check of Carlini et al. 2019 (sanity.py): 'pass', or 'warn' when the evaluation (not the
  defense) is in doubt. `attack` names the row it concerns (None: the whole evaluation);
  `white_box_attack` the row a transfer attack is compared with; `numbers` what it measured."""
  check: str
  status: str
  detail: str
  attack: Optional[str] = None
  white_box_attack: Optional[str] = None
  numbers: dict = dataclasses.field(default_factory=dict)

  @property
  def passed(self) -> bool:
    return self.status == PASS

  def concerns(self, label: str) -> bool:
    """Whether this check is about the attack row `label` (or about the whole evaluation)."""
    return self.attack is None or label in (self.attack, self.white_box_attack)

  def to_json(self) -> dict:
    out = {"check": self.check, "status": self.status, "detail": self.detail, **self.numbers}
    out.update({k: v for k, v in (("attack", self.attack),
                                  ("white_box_attack", self.white_box_attack)) if v is not None})
    return out

  @classmethod
  def from_json(cls, data: dict) -> "SanityCheck":
    fixed = ("check", "status", "detail", "attack", "white_box_attack")
    return cls(**{k: data.get(k) for k in fixed},
               numbers={k: v for k, v in data.items() if k not in fixed})


@dataclasses.dataclass
class QueryCounts:
  """A query attack's Oracle use per image: its budget, the mean over the attacked images and
  the median over those it fooled (None where there are none)."""
  budget: int
  mean: Optional[float]
  median_successful: Optional[float]


@dataclasses.dataclass
class AttackDetection:
  """One attack's adversarial examples against the detector at the deployed threshold
  (detection.DetectionEvaluator.attack_metrics)."""
  num_successful: int
  flagged_rate: float
  flagged_precision: Optional[float]
  misclassified_and_accepted: float
  mean_l2_per_pixel_evading: Optional[float] = None
  # Over the successful examples (absent when there are none): metrics.detection.
  threshold: Optional[float] = None
  auc: Optional[float] = None
  detection_rate: Optional[float] = None
  false_positive_rate: Optional[float] = None
  precision: Optional[float] = None
  recall: Optional[float] = None
  accuracy_on_accepted: Optional[float] = None


@dataclasses.dataclass
class AttackResult:
  """One attack over the attacked images (evaluator.evaluate)."""
  label: str
  attack: str
  threat_model: str
  params: dict
  robust_accuracy: float
  attack_success_rate: float
  num_examples: int
  mean_l2: float
  median_l2: float
  mean_linf: float
  median_linf: float
  access: str = "gradient"
  source_experiment: str = ""
  detector_aware: bool = False
  overridden_params: dict = dataclasses.field(default_factory=dict)
  reused_examples: Optional[str] = None
  median_l0: Optional[float] = None
  mean_l2_per_pixel: Optional[float] = None
  queries: Optional[QueryCounts] = None
  universal: Optional[dict] = None
  detection: Optional[AttackDetection] = None

  @property
  def system_robust_accuracy(self) -> float:
    """Robust accuracy of the deployed system: against a detector-aware attack the share of
    examples not both misclassified and accepted (its classifier-only accuracy would count a
    flagged example as lost)."""
    if self.detector_aware and self.detection is not None:
      return 1.0 - self.detection.misclassified_and_accepted
    return self.robust_accuracy

  @classmethod
  def from_json(cls, data: dict) -> "AttackResult":
    data = _known(cls, data)
    if data.get("queries") is not None:
      data["queries"] = QueryCounts(**_known(QueryCounts, data["queries"]))
    if data.get("detection") is not None:
      data["detection"] = AttackDetection(**_known(AttackDetection, data["detection"]))
    return cls(**data)


@dataclasses.dataclass
class DetectionSummary:
  """The detector of a detected system: its threshold on held-out clean images, and per example
  over the attacks, the worst case of "misclassified and accepted"."""
  detector: str
  options: dict
  target_false_positive_rate: Optional[float]
  fixed_threshold: bool
  threshold: float
  held_out_examples: int
  held_out_false_positive_rate: float
  attacked_clean_false_positive_rate: float
  worst_case_misclassified_and_accepted: Optional[float]
  worst_case_bounded_misclassified_and_accepted: Optional[float]
  davies_bouldin_index: float


@dataclasses.dataclass
class EvalSummary:
  """An evaluation of one checkpoint (results/eval.json)."""
  experiment_name: str
  step: int
  dataset: str
  num_test_examples: int
  num_attack_examples: int
  clean_accuracy: float
  clean_accuracy_attacked_subset: float
  attacks: dict  # attack key -> AttackResult, in the config's order.
  total_steps: Optional[int] = None
  worst_case_robust_accuracy: Optional[float] = None
  defense_metrics: dict = dataclasses.field(default_factory=dict)
  worst_case_groups: dict = dataclasses.field(default_factory=dict)
  detection: Optional[DetectionSummary] = None
  sanity: list = dataclasses.field(default_factory=list)  # SanityCheck records.
  eps_sweep: Optional[dict] = None
  paper: dict = dataclasses.field(default_factory=dict)
  # The eval config and precision it was made with: a suite re-evaluates when either changes.
  eval_config: dict = dataclasses.field(default_factory=dict)
  compute_dtype: str = "float32"
  stale_since_step: Optional[int] = None

  @property
  def sanity_passed(self) -> Optional[bool]:
    return all(c.passed for c in self.sanity) if self.sanity else None

  def warnings_for(self, label: str) -> list[str]:
    """The details of the failed checks that concern the attack row `label`."""
    return [c.detail for c in self.sanity if not c.passed and c.concerns(label)]

  def to_json(self) -> dict:
    out = _without_none(self)
    out["attacks"] = {k: _without_none(r) for k, r in self.attacks.items()}
    out["sanity"] = [c.to_json() for c in self.sanity]
    out["sanity_passed"] = self.sanity_passed
    return out

  @classmethod
  def from_json(cls, data: dict) -> "EvalSummary":
    data = _known(cls, data)
    data["attacks"] = {k: AttackResult.from_json(r) for k, r in data["attacks"].items()}
    data["sanity"] = [SanityCheck.from_json(c) for c in data.get("sanity") or []]
    if data.get("detection") is not None:
      data["detection"] = DetectionSummary(**_known(DetectionSummary, data["detection"]))
    return cls(**data)


@dataclasses.dataclass
class TrainSummary:
  """A training run (results/train.json); `diverged` says why it stopped, when it did."""
  experiment_name: str
  resumed_from_step: int
  final_step: Optional[int] = None
  test_accuracy: Optional[float] = None
  num_devices: Optional[int] = None
  num_train_examples: Optional[int] = None
  num_test_examples: Optional[int] = None
  seconds_per_step: Optional[float] = None
  training_seconds: Optional[float] = None  # Steady state, compilation and evaluation excluded.
  diverged: Optional[str] = None
  interrupted_at_step: Optional[int] = None  # Stopped there on request (tests), unfinished.
  teacher: Optional[str] = None  # A distilled proxy's teacher and its labels' accuracy.
  teacher_train_accuracy: Optional[float] = None

  def to_json(self) -> dict:
    return _without_none(self)

  @classmethod
  def from_json(cls, data: dict) -> "TrainSummary":
    return cls(**_known(cls, data))


def eval_path(exp_dir: str) -> str:
  return f"{exp_dir}/results/eval.json"


def train_path(exp_dir: str) -> str:
  return f"{exp_dir}/results/train.json"


def write(path: str, record: Any) -> None:
  """A record as its JSON file (atomically, by process 0)."""
  files.write_json(path, record.to_json())


def read_eval(exp_dir: str, recompute: str = "the next run evaluates again"
              ) -> Optional[EvalSummary]:
  return _read(eval_path(exp_dir), EvalSummary, recompute)


def read_train(exp_dir: str, recompute: str = "the next run rewrites it"
               ) -> Optional[TrainSummary]:
  return _read(train_path(exp_dir), TrainSummary, recompute)


def _read(path: str, record, recompute: str):
  """The record in `path`; None if missing, damaged or lacking what the record needs (named in
  a warning)."""
  data = files.read_json_or_none(path, recompute)
  if data is None:
    return None
  try:
    return record.from_json(data)
  except (KeyError, TypeError, AttributeError) as e:
    files.warn(f"{path} does not hold a {record.__name__} ({type(e).__name__}: {e}). Ignoring "
               f"it: {recompute}.")
    return None
