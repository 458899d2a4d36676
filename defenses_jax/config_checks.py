"""Checks of a config's numbers and names before any compute: a zero batch size or a misspelt
attack key must fail in the first second, not after an hour of training or attacks."""

from __future__ import annotations

import ml_collections

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
    raise ValueError("bad config: " + "; ".join(problems) + ".")
