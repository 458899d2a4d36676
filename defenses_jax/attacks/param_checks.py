"""What an attack's parameters may be: declared once per attack in the registry (registry.py)
and checked before any compute.

A negative eps is not an error to JAX: FGSM and PGD at eps -0.3 ran and reported 93.8% "robust
accuracy" for a model at 0-3% under +0.3. So every parameter of every registered attack has a
declared check (a test makes sure none is missing), and a config's attack entries are checked
against them when they are parsed, before training or evaluation starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Range:
  """A number in [low, high] (either end open or absent); `integer`: a whole number;
  `optional`: None is allowed too (the attack's "no limit" / "not given")."""
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  optional: bool = False
  nonzero: bool = False

  def problem(self, value: Any) -> Optional[str]:
    if value is None:
      return None if self.optional else "must be given"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return f"must be a number; got {value!r}"
    if not math.isfinite(value):
      return f"must be finite; got {value!r}"
    if self.integer and value != int(value):
      return f"must be a whole number; got {value!r}"
    too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
    too_high = self.high is not None and (value >= self.high if self.high_open
                                          else value > self.high)
    too_high |= self.nonzero and value == 0
    return f"must be {self.describe()}; got {value!r}" if too_low or too_high else None

  def describe(self) -> str:
    parts = []
    if self.low is not None:
      parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
    if self.high is not None:
      parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
    if self.nonzero:
      parts.append("not 0")
    kind = "a whole number" if self.integer else "a number"
    return f"{kind} " + " and ".join(parts) + (" (or None)" if self.optional else "")


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of a fixed set of values (a norm, a loss, a target mode)."""
  choices: tuple

  def problem(self, value: Any) -> Optional[str]:
    return None if value in self.choices else f"must be one of {self.choices}; got {value!r}"


@dataclasses.dataclass(frozen=True)
class Given:
  """Anything the attack itself checks when it is traced (arrays of targets, masks, starts,
  schedules): declared so that the declaration is complete."""

  def problem(self, value: Any) -> Optional[str]:
    return None


POSITIVE = Range(low=0, low_open=True)  # eps, step sizes, learning rates, constants.
NON_NEGATIVE = Range(low=0)  # Confidence margins, overshoot.
COUNT = Range(low=1, integer=True)  # Steps, iterations, restarts, queries, samples.
OPTIONAL_COUNT = Range(low=1, integer=True, optional=True)
FRACTION = Range(low=0, high=1, low_open=True)  # A share in (0, 1].
PROBABILITY = Range(low=0, high=1)
BOOL = OneOf((True, False))
NORM = OneOf(("linf", "l2"))
GIVEN = Given()
# Gradient attacks' target modes (objectives.resolve_targets) and those of query attacks,
# which cannot compute the least likely class without spending queries.
TARGETS = OneOf(("none", "given", "least_likely", "random"))
QUERY_TARGETS = OneOf(("none", "given"))


def problems(attack: str, declared: dict, params: dict) -> list[str]:
  """Sentences naming every parameter of `params` that is unknown to the attack or outside
  its declared range."""
  found = []
  for name, value in params.items():
    if name not in declared:
      found.append(f"{attack!r} does not take {name!r}; it takes {sorted(declared)}")
      continue
    problem = declared[name].problem(value)
    if problem:
      found.append(f"{attack} {name} {problem}")
  return found
