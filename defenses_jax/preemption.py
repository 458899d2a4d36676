"""Preemption: TPU VMs and cluster schedulers send SIGTERM before they reclaim a machine. While
training, SIGTERM makes the loop save a checkpoint at the step it has reached and raise
`Preempted`; relaunching the same command resumes from that step and ends bit-identically to an
uninterrupted run (randomness is a function of the step).

Single host: a SIGTERM handler sets a flag that the loop reads after every step. Multi-host: the
hosts must stop at the same step, so the loop asks JAX's preemption sync point (the coordination
service that `jax.distributed.initialize` starts receives the signal and picks the step); that
path has not run here (no multi-host machine), only the single-host one is tested.
"""

from __future__ import annotations

import signal
import threading

import jax


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint at `step`."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM) at step {step}; the checkpoint of that step is "
                     "saved: relaunch the same command to resume.")
    self.step = step


class PreemptionWatch:
  """Context manager: while active, SIGTERM requests a stop instead of killing the process.
  The previous handler is restored on exit."""

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multihost = jax.process_count() > 1

  def __enter__(self) -> "PreemptionWatch":
    # Signal handlers can only be installed from the main thread; elsewhere (a notebook's worker
    # thread) SIGTERM keeps its default behaviour.
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._requested = True

  def requested(self, step: int) -> bool:
    """Should training stop after `step`? (Every host gets the same answer.)"""
    if self._multihost:
      from jax.experimental import multihost_utils
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._requested
