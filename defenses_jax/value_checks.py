"""What a value may be, declared: the vocabulary shared by the attacks' parameters
(attacks/param_checks.py, one declaration per parameter in the registry) and the config schema
(config.py, one declaration per config key).

Each check says what is wrong with a value in words that follow the value's name ("must be a
number > 0; got -0.3"), and describes what it allows for the reference docs (docs/config.md).
It sits at the bottom of the package (no JAX, no imports from it), so that a config can be
checked while the command line is parsed, before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Optional


class Check:
  """What a value may be. `problem`: None if it may be that, else the words after its name."""

  def problem(self, value: Any) -> Optional[str]:
    raise NotImplementedError

  def problem_in(self, value: Any, config) -> Optional[str]:
    """The problem of `value` as part of `config` (the whole config it belongs to): checks
    that refer to other keys (a key of eval.attacks) override this."""
    return self.problem(value)

  def describe(self) -> str:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Range(Check):
  """A number in [low, high] (either end open or absent); `integer`: a whole number;
  `optional`: None is allowed too (the attack's "no limit" / "not given"); `also`: values
  allowed outside the range with a meaning of their own (-1: all); `text`: how the allowed
  values are described ("a positive integer"), if not in the words the bounds give."""
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  optional: bool = False
  nonzero: bool = False
  also: tuple = ()
  text: str = ""

  def problem(self, value: Any) -> Optional[str]:
    if value is None:
      return None if self.optional else "must be given"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return f"must be {self.describe() if self.text else 'a number'}; got {value!r}"
    if not math.isfinite(value):
      return f"must be finite; got {value!r}"
    if value in self.also:
      return None
    if self.integer and value != int(value):
      return f"must be {self.describe() if self.text else 'a whole number'}; got {value!r}"
    too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
    too_high = self.high is not None and (value >= self.high if self.high_open
                                          else value > self.high)
    too_high |= self.nonzero and value == 0
    return f"must be {self.describe()}; got {value!r}" if too_low or too_high else None

  def describe(self) -> str:
    if self.text:
      return self.text
    parts = []
    if self.low is not None:
      parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
    if self.high is not None:
      parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
    if self.nonzero:
      parts.append("not 0")
    kind = "a whole number" if self.integer else "a number"
    also = "".join(f" (or {v!r})" for v in self.also)
    return f"{kind} " + " and ".join(parts) + also + (" (or None)" if self.optional else "")


@dataclasses.dataclass(frozen=True)
class OneOf(Check):
  """One of a fixed set of values (a norm, a loss, a target mode)."""
  choices: tuple

  def problem(self, value: Any) -> Optional[str]:
    return None if value in self.choices else f"must be {self.describe()}; got {value!r}"

  def describe(self) -> str:
    return f"one of {list(self.choices)}"


@dataclasses.dataclass(frozen=True)
class Given(Check):
  """Anything the attack itself checks when it is traced (arrays of targets, masks, starts,
  schedules): declared so that the declaration is complete."""

  def problem(self, value: Any) -> Optional[str]:
    return None

  def describe(self) -> str:
    return "anything (checked where it is used)"


@dataclasses.dataclass(frozen=True)
class Items(Check):
  """A tuple (a list, read back from JSON) whose every item passes `item`; `lengths`: the
  lengths allowed (empty: any); `increasing`: each item above the one before."""
  item: Check
  text: str
  lengths: tuple = ()
  increasing: bool = False

  def problem(self, value: Any) -> Optional[str]:
    bad = (not isinstance(value, (tuple, list)) or bool(self.lengths)
           and len(value) not in self.lengths or any(self.item.problem(v) for v in value))
    bad = bad or self.increasing and any(a >= b for a, b in zip(value, value[1:]))
    return f"must be {self.text}; got {value!r}" if bad else None

  def describe(self) -> str:
    return self.text


POSITIVE = Range(low=0, low_open=True)  # eps, step sizes, learning rates, constants.
NON_NEGATIVE = Range(low=0)  # Confidence margins, overshoot.
COUNT = Range(low=1, integer=True)  # Steps, iterations, restarts, queries, samples.
OPTIONAL_COUNT = Range(low=1, integer=True, optional=True)
FRACTION = Range(low=0, high=1, low_open=True)  # A share in (0, 1].
PROBABILITY = Range(low=0, high=1)
BOOL = OneOf((True, False))
GIVEN = Given()
