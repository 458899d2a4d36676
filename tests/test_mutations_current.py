"""Every planted mutation (tests/mutations.py) still finds its text exactly once: a change to
the code it mutates must update the mutation, or the mutation check silently loses it."""

import os

import pytest

from mutation_check import select
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


def test_shards_cover_every_selected_mutation_once():
  names = lambda ms: [m.name for m in ms]
  parts = [names(select(MUTATIONS, shard=f"{k}/3")) for k in (1, 2, 3)]
  assert sorted(sum(parts, [])) == sorted(names(MUTATIONS))
  assert parts[0][:2] == [MUTATIONS[0].name, MUTATIONS[3].name]
  only = names(select(MUTATIONS, only="dropout"))
  assert only and all("dropout" in n for n in only)
  assert names(select(MUTATIONS, only="dropout", shard="2/2")) == only[1::2]
  for bad in ("0/3", "4/3", "1", "a/b"):
    with pytest.raises(SystemExit, match="--shard"):
      select(MUTATIONS, shard=bad)
