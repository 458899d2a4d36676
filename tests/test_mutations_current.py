"""Every planted mutation (tests/mutations.py) still finds its text exactly once: a change to
the code it mutates must update the mutation, or the mutation check silently loses it."""

import os

from mutations import MUTATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_mutation_text_occurs_exactly_once():
  stale = []
  for m in MUTATIONS:
    with open(os.path.join(ROOT, m.path)) as f:
      count = f.read().count(m.old)
    if count != 1:
      stale.append(f"{m.name}: {count} times in {m.path}")
  assert not stale, stale
  assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
