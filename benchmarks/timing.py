"""Timing shared by the benchmark scripts."""

import time


def median_seconds(fn, repeats: int) -> float:
  """The median wall time of `repeats` calls of fn(), after one call that compiles / warms up
  (fn must block until its result is ready)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]
