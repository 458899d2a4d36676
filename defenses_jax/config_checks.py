"""Checks of a config's numbers and names before any compute: a zero batch size or a misspelt
attack key must fail in the first second, not after an hour of training or attacks. What each
key may be is declared once, in config.SCHEMA; this is the walk over it."""

from __future__ import annotations

import ml_collections

from defenses_jax import config_schema
from defenses_jax.config import SCHEMA
from defenses_jax.errors import ConfigError


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every key whose value cannot work (a size, interval, rate,
  seed, name of another key), and every key missing or unknown."""
  problems = config_schema.problems(SCHEMA, config)
  if problems:
    raise ConfigError("bad config: " + "; ".join(problems) + ".")
