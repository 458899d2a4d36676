"""What an attack's parameters may be: declared once per attack in the registry (registry.py)
and checked before any compute.

A negative eps is not an error to JAX: FGSM and PGD at eps -0.3 ran and reported 93.8% "robust
accuracy" for a model at 0-3% under +0.3. So every parameter of every registered attack has a
declared check (a test makes sure none is missing), and a config's attack entries are checked
against them when they are parsed, before training or evaluation starts. The vocabulary (Range,
OneOf, ...) is the config schema's too: value_checks.py.
"""

from __future__ import annotations

from defenses_jax.value_checks import (  # noqa: F401  (the registry's vocabulary)
    BOOL, COUNT, FRACTION, GIVEN, NON_NEGATIVE, OPTIONAL_COUNT, POSITIVE, PROBABILITY, Given,
    OneOf, Range)

NORM = OneOf(("linf", "l2"))
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
