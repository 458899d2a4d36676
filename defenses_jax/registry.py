"""One registry type for everything a config names: models, defenses, attacks, detectors.

A Registry is a dict (tests and users can add entries with ordinary item assignment) whose
`get` fails with the list of known names, before any compute is spent.
"""

from __future__ import annotations

from typing import Any

from defenses_jax.errors import ConfigError


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
      raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self))}.")
    return self[name]

  def create(self, name: str, options: dict, **fixed) -> Any:
    """The entry `name` called with the config's `options` and the `fixed` arguments the
    library supplies (e.g. num_classes); options it does not take are a ValueError."""
    factory = self.lookup(name)
    try:
      return factory(**fixed, **options)
    except TypeError as e:
      raise ConfigError(f"{self.kind} {name!r} does not take options {sorted(options)}: {e}") from e
