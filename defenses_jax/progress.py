"""Progress bar, JSON-lines metrics log and step timing for long runs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Optional

import jax
from tqdm.auto import tqdm


def progress_bar(total: int, initial: int = 0, enabled: bool = True, description: str = "",
                 unit: str = "step"):
  """A tqdm bar on the first host only (other hosts would print duplicates)."""
  interactive = sys.stderr.isatty()
  # In log files (batch jobs, CI) a line every 30 s is plenty; a terminal redraws in place.
  return tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True,
              mininterval=0.1 if interactive else 30.0,
              disable=not enabled or jax.process_index() != 0, file=sys.stderr)


class MetricsLog:
  """Appends one JSON object per line to <experiment_dir>/metrics.jsonl (first host only)."""

  def __init__(self, path: str):
    self.path = path
    self._enabled = jax.process_index() == 0
    if self._enabled:
      os.makedirs(os.path.dirname(path), exist_ok=True)

  def write(self, **record) -> None:
    if not self._enabled:
      return
    record["time"] = time.time()
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")

  def write_train(self, step: int, epoch: int, sums: dict, bar=None):
    """Logs the mean loss and accuracy of the steps since the last call; returns None so the
    caller starts a fresh accumulation."""
    count = max(float(sums["count"]), 1.0)
    loss, accuracy = float(sums["loss"]) / count, float(sums["correct"]) / count
    self.write(step=step, epoch=epoch, train_loss=loss, train_accuracy=accuracy)
    if bar is not None:
      bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", refresh=False)
    return None


class StepTimer:
  """Seconds per training step, excluding the first step of a run (compilation) and any time
  spent in `paused()` blocks (evaluation)."""

  def __init__(self):
    self._start: Optional[float] = None
    self._first_step = self._last_step = 0
    self._paused = 0.0

  def after_step(self, step: int, state) -> None:
    if self._start is None:
      jax.block_until_ready(state)
      self._start, self._first_step = time.perf_counter(), step
    self._last_step = step

  @contextlib.contextmanager
  def paused(self, state):
    jax.block_until_ready(state)
    began = time.perf_counter()
    yield
    self._paused += time.perf_counter() - began

  def seconds_per_step(self, state) -> Optional[float]:
    """None when this run took fewer than two steps."""
    steps = self._last_step - self._first_step
    if self._start is None or steps <= 0:
      return None
    jax.block_until_ready(state)
    return (time.perf_counter() - self._start - self._paused) / steps


def write_json(path: str, payload: dict) -> None:
  """A results file (indented, sorted keys), written by process 0 only."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
