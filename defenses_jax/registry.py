"""One registry type for everything a config names: models, defenses, attacks, detectors.

A Registry is a dict (tests and users can add entries with ordinary item assignment) whose
`get` fails with the list of known names, before any compute is spent.
"""

from __future__ import annotations

from typing import Any


class Registry(dict):

  def __init__(self, kind: str, entries: dict | None = None):
    super().__init__(entries or {})
    self.kind = kind

  def register(self, name: str, entry: Any) -> Any:
    if name in self:
      raise ValueError(f"{self.kind} {name!r} is already registered.")
    self[name] = entry
    return entry

  def lookup(self, name: str) -> Any:
    if name not in self:
      raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self))}.")
    return self[name]
