"""Writing a benchmark's results JSON as it goes: the benchmarks rewrite their file after each
row, so that a run cut short by a time limit (a lent GPU's minutes) keeps the rows it measured.
`complete` says whether every row was reached. The file is replaced whole (written beside it,
then renamed), so a kill in the middle of a write leaves the previous version, not a torn one."""

from __future__ import annotations

import json
import os


def write_results(path: str, results: dict, complete: bool) -> None:
  """Writes `results` plus `complete` to `path` (nothing when path is empty)."""
  if not path:
    return
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + ".partial"
  with open(partial, "w") as f:
    json.dump(dict(results, complete=complete), f, indent=1)
  os.replace(partial, path)
