"""Checks of a config's numbers and names before any compute: a zero batch size or a misspelt
attack key must fail in the first second, not after an hour of training or attacks."""

from __future__ import annotations

import ml_collections

from defenses_jax.errors import ConfigError
from defenses_jax.models.precision import check_compute_dtype


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every size, interval or rate that cannot work."""
  train, ev = config.train, config.eval
  problems = []
  for name, value in (("train.epochs", train.epochs), ("train.batch_size", train.batch_size),
                      ("train.replays", train.replays),
                      ("train.checkpoint_every_steps", train.checkpoint_every_steps),
                      ("train.log_every_steps", train.log_every_steps),
                      ("eval.batch_size", ev.batch_size), ("eval.every_epochs", ev.every_epochs)):
    if not isinstance(value, int) or value < 1:
      problems.append(f"{name} must be a positive integer; got {value!r}")
  if not isinstance(config.seed, int) or config.seed < 0:
    problems.append(f"seed must be a non-negative integer; got {config.seed!r}")
  if not train.learning_rate > 0:
    problems.append(f"train.learning_rate must be positive; got {train.learning_rate!r}")
  factor = train.get("divergence_factor", 0.0)
  if not (isinstance(factor, (int, float)) and (factor == 0 or factor > 1)):
    problems.append(f"train.divergence_factor must be 0 (no check) or above 1; got {factor!r}")
  profile = tuple(train.get("profile_steps", ()))
  if profile and not (len(profile) == 2 and 0 <= profile[0] < profile[1]):
    problems.append(f"train.profile_steps must be (first, last) with 0 <= first < last; got "
                    f"{profile}")
  for name in ("sanity.num_examples", "sanity.unbounded_steps", "sanity.more_steps_factor",
               "monitor.num_examples", "eps_sweep.num_examples"):
    section, key = name.split(".")
    value = ev[section][key]
    if not isinstance(value, int) or value < 1:
      problems.append(f"eval.{name} must be a positive integer; got {value!r}")
  if any(not isinstance(e, (int, float)) or not e >= 0 for e in ev.eps_sweep.eps_values):
    problems.append(f"eval.eps_sweep.eps_values must all be >= 0 (0: clean); got "
                    f"{tuple(ev.eps_sweep.eps_values)}")
  for name in ("num_train_examples", "num_test_examples"):
    value = config.dataset[name]
    if value == 0 or value < -1:
      problems.append(f"dataset.{name} must be positive or -1 (all); got {value!r}")
  if ev.num_attack_examples == 0 or ev.num_attack_examples < -1:
    problems.append(f"eval.num_attack_examples must be positive or -1 (all); got "
                    f"{ev.num_attack_examples!r}")
  keys = set(ev.attacks.keys())
  if ev.eps_sweep.attack and ev.eps_sweep.attack not in keys:
    problems.append(f"eval.eps_sweep.attack {ev.eps_sweep.attack!r} is not one of eval.attacks "
                    f"({sorted(keys)})")
  if ev.monitor.attack and ev.monitor.attack not in keys:
    problems.append(f"eval.monitor.attack {ev.monitor.attack!r} is not one of eval.attacks "
                    f"({sorted(keys)})")
  for group, members in dict(ev.get("worst_case_groups") or {}).items():
    if not members or set(members) - keys:
      problems.append(f"eval.worst_case_groups.{group} must name attacks of eval.attacks "
                      f"({sorted(keys)}); got {list(members)}")
  try:  # Absent from configs saved before the switch existed: they ran in float32.
    check_compute_dtype(config.model.get("compute_dtype", "float32"))
  except ValueError as e:
    problems.append(str(e).rstrip("."))
  if problems:
    raise ConfigError("bad config: " + "; ".join(problems) + ".")
