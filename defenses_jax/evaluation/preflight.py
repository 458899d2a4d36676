"""Everything an experiment's evaluation will need, checked before any training or compute:
its attacks (names, threat models, parameter ranges), its detector (name, options, rate) and
the sizes of what it attacks and holds out. Training runs it first, so does evaluation, and a
paper suite runs it for every member before the first one trains: an unknown detector or a
`false_positive_rate` of 1.5 must fail in the first second, not after hours of training.
"""

from __future__ import annotations

import math
from typing import Optional

import ml_collections

from defenses_jax import config_schema
from defenses_jax.config import SCHEMA
from defenses_jax.detectors import create_detector
from defenses_jax.errors import ConfigError
from defenses_jax.evaluation.threat_models import AttackSpec, parse_attack_specs


def check_evaluation(config: ml_collections.ConfigDict, defense,
                     num_test_examples: Optional[int]) -> list[AttackSpec]:
  """The parsed attack specs; raises ValueError naming every problem found. `num_test_examples`
  is the size of the test set the experiment uses (None if unknown before loading it)."""
  ev = config.eval
  specs = parse_attack_specs(ev.attacks, defense, has_detector=bool(ev.detection.detector))
  problems = []
  detector = None
  if ev.detection.detector:
    try:
      detector = create_detector(ev.detection.detector, defense.num_classes,
                                 **ev.detection.options.to_dict())
    except ValueError as e:
      problems.append(f"eval.detection: {e}".rstrip("."))
    # Declared in config.SCHEMA, checked here: only with a detector, and the rate only for a
    # detector whose threshold is not fixed by its own rule.
    checked = ["num_threshold_examples"]
    if detector is None or detector.fixed_threshold is None:
      checked.insert(0, "false_positive_rate")
    for name in checked:
      problem = config_schema.lookup(SCHEMA, f"eval.detection.{name}").problem_in(
          ev.detection[name])
      if problem:
        problems.append(f"eval.detection.{name} {problem}")
  if num_test_examples is not None:
    problems += _size_problems(ev, detector, num_test_examples)
  if problems:
    raise ConfigError("; ".join(problems) + ".")
  return specs


def _size_problems(ev, detector, num_test: int) -> list[str]:
  """Without a detector, asking to attack more images than there are attacks them all."""
  problems = []
  attacked = num_test if ev.num_attack_examples < 0 else ev.num_attack_examples
  fpr = ev.detection.false_positive_rate
  if detector is not None and detector.fixed_threshold is None and 0 < fpr < 1:
    held_out, needed = num_test - min(attacked, num_test), math.ceil(1.0 / fpr)
    if held_out < needed:
      problems.append(
          f"eval.detection needs clean held-out test images to fix its threshold at a "
          f"false-positive rate of {fpr}: at least {needed}, but only {held_out} of the "
          f"{num_test} test images are not attacked; lower eval.num_attack_examples")
  return problems
