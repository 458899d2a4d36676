"""Progress bar, JSON-lines metrics log and step timing for long runs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Optional

import jax
from tqdm.auto import tqdm

from defenses_jax.errors import UserError
from defenses_jax.tensorboard import ScalarWriter


def announce(message: str) -> None:
  """One line of progress (a stage begun or finished) on stdout, from the first host only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def progress_bar(total: int, initial: int = 0, enabled: bool = True, description: str = "",
                 unit: str = "step"):
  """A tqdm bar on the first host only (other hosts would print duplicates)."""
  interactive = sys.stderr.isatty()
  # In log files (batch jobs, CI) a line every 30 s is plenty; a terminal redraws in place.
  return tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True,
              mininterval=0.1 if interactive else 30.0,
              disable=not enabled or jax.process_index() != 0, file=sys.stderr)



def call_each(calls, description: str, enabled: bool = True, unit: str = "check") -> list:
  """[call() for call in calls], with a progress bar over them."""
  bar = progress_bar(len(calls), enabled=enabled, unit=unit, description=description)
  results = []
  for call in calls:
    results.append(call())
    bar.update(1)
  bar.close()
  return results


class TrainingDiverged(UserError, ValueError):
  """Training diverged: the loss became NaN or infinite, stayed far above where it started, or
  the trained model is no better than chance."""


# The loss has diverged when it stays above divergence_factor x max(its initial value, 1) (the
# loss of a fresh run's first step) for DIVERGENCE_PATIENCE log intervals in a row: a loss can
# run away and stay finite (a learning rate of 1e4 took a CNN's cross-entropy from 2.3 to 8e16).
DIVERGENCE_PATIENCE = 3


def _finite_or_none(value):
  """JSON has no NaN or infinity: metrics.jsonl writes null for them."""
  return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
  """Appends one JSON object per line to <experiment_dir>/metrics.jsonl (first host only) and,
  with `tensorboard_dir`, every numeric field of a record with a step as a TensorBoard scalar."""

  def __init__(self, path: str, tensorboard_dir: Optional[str] = None,
               divergence_factor: float = 0.0):
    self.path = path
    self._enabled = jax.process_index() == 0
    self._tensorboard = None
    self._last_log: Optional[tuple[int, float]] = None  # (step, time) of the last train record.
    # Finite divergence (see DIVERGENCE_PATIENCE); 0 turns the check off.
    self._divergence_factor = divergence_factor
    self._first_loss: Optional[float] = None
    self._losses_above = 0
    if self._enabled:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      if tensorboard_dir:
        self._tensorboard = ScalarWriter(tensorboard_dir)

  def write_initial_loss(self, sums: dict) -> None:
    """Records the loss of a fresh run's first step (the initial parameters): the reference of
    the divergence check, also after a resume."""
    self._first_loss = float(sums["loss"]) / max(float(sums["count"]), 1.0)
    self.write(step=0, initial_train_loss=self._first_loss)

  @property
  def last_step(self) -> Optional[int]:
    """The step of the last training record this run wrote (None before the first)."""
    return None if self._last_log is None else self._last_log[0]

  def forget_after(self, step: int) -> None:
    """Drops the records of steps after `step`: a run resumed from the checkpoint at `step`
    logs those steps again, and each step must appear once. Also recovers the first logged
    training loss, the reference of the divergence check."""
    records = read_records(self.path) if os.path.exists(self.path) else []
    self._first_loss = next((r["initial_train_loss"] for r in records
                             if r.get("initial_train_loss") is not None and step > 0), None)
    if not self._enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    # A line cut off by a kill (or otherwise unreadable) is dropped too: it would make the file
    # invalid JSON lines.
    kept = [line for line in lines if line.endswith("\n") and
            (_parse_line(line) or {}).get("step", step + 1) <= step]
    if len(kept) != len(lines):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, **record) -> None:
    if not self._enabled:
      return
    if self._tensorboard is not None and "step" in record:
      self._tensorboard.scalars(record["step"], {
          k: v for k, v in record.items() if k not in ("step", "epoch")
          and isinstance(v, (int, float)) and not isinstance(v, bool)})
    record = {k: _finite_or_none(v) for k, v in record.items()}
    record["time"] = time.time()
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")

  def write_train(self, step: int, epoch: int, sums: dict, bar=None, **extra):
    """Logs the mean loss and accuracy of the steps since the last call (and `extra`, e.g. the
    learning rate), plus steps per second of wall time since the previous call; returns None so
    the caller starts a fresh accumulation."""
    count = max(float(sums["count"]), 1.0)
    loss, accuracy = float(sums["loss"]) / count, float(sums["correct"]) / count
    now = time.perf_counter()
    if self._last_log is not None and step > self._last_log[0]:
      extra["steps_per_second"] = (step - self._last_log[0]) / (now - self._last_log[1])
    self._last_log = (step, now)
    self.write(step=step, epoch=epoch, train_loss=loss, train_accuracy=accuracy, **extra)
    advice = (f"(learning rate {extra.get('learning_rate', 'unknown')}). Lower "
              "train.learning_rate and start again in a fresh experiment directory; "
              "checkpoints saved after the divergence hold ")
    if not math.isfinite(loss):
      raise TrainingDiverged(f"the training loss is {loss} at step {step}: training diverged "
                             + advice + "non-finite parameters.")
    reference = loss if self._first_loss is None else self._first_loss  # (A run from before.)
    limit = self._divergence_factor * max(abs(reference), 1.0)
    self._losses_above = self._losses_above + 1 if self._divergence_factor and loss > limit else 0
    if self._losses_above >= DIVERGENCE_PATIENCE:
      raise TrainingDiverged(
          f"the training loss is {loss:.4g} at step {step}, above {limit:.4g} "
          f"({self._divergence_factor:g} x max(1, its initial value {reference:.4g})) for "
          f"{DIVERGENCE_PATIENCE} log intervals in a row: training diverged " + advice +
          "useless parameters.")
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


def _parse_line(line: str) -> Optional[dict]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  return record if isinstance(record, dict) else None


def read_records(path: str) -> list[dict]:
  """The records of a metrics.jsonl file; a line that does not parse (cut off by a kill) is
  skipped."""
  with open(path) as f:
    return [r for r in (_parse_line(line) for line in f) if r is not None]
