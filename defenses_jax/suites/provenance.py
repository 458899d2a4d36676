"""Where a suite's numbers come from: every run of a suite (`run_suite`) appends a record of the
code, the command, the machine, the library versions and the wall time of each stage it ran to
<workdir>/<suite>/provenance.json, so that published tables say what produced them even when a
suite was run in parts, over several sessions or commits.

A record, one per run:
  {"command": "python launch.py ...", "mode": "train", "commit": "<sha>" or None,
   "uncommitted_changes": bool or None, "started": "<UTC ISO time>", "finished": ...,
   "machine": {"platform", "cpu_count", "devices"}, "versions": {"python", "jax", ...},
   "stages": [{"stage": "train <member>", "seconds": float[, "interrupted": true]}, ...]}
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from typing import Iterator, Optional

import jax

from defenses_jax import files

FILENAME = "provenance.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections")
# Written by launch.py --mode=publish, not code: their changes leave a run's code committed.
PUBLISHED_PATHS = ("results", "README.md")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str, repository: str = REPOSITORY) -> Optional[str]:
  """git's output in the package's repository, None where there is none (an installed wheel)."""
  try:
    out = subprocess.run(["git", "-C", repository, *args], capture_output=True, text=True,
                         timeout=30, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip()


def code_identity(repository: str = REPOSITORY) -> dict:
  """The commit the package runs from and whether its tracked files differ from it, leaving out
  what `--mode=publish` writes (results/, the README's findings): a report run after a publish
  runs the committed code, and is recorded so."""
  commit = _git("rev-parse", "HEAD", repository=repository)
  status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                *(f":(exclude){path}" for path in PUBLISHED_PATHS),
                repository=repository) if commit else None
  return {"commit": commit, "uncommitted_changes": None if status is None else bool(status)}


def versions() -> dict:
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def machine() -> dict:
  devices = jax.devices()
  return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
          "devices": f"{len(devices)} x {devices[0].device_kind}"}


class RunRecorder:
  """Times the stages of one suite run and appends the run's record (see the module docstring)
  when it ends, whether it finished or was interrupted: the stages it completed are kept."""

  def __init__(self, out_dir: str, mode: str, command: Optional[str] = None):
    self.path = os.path.join(out_dir, FILENAME)
    self.record = {"command": command or " ".join(["python", *sys.argv]), "mode": mode,
                   **code_identity(), "started": _now(), "finished": None,
                   "machine": machine(), "versions": versions(), "stages": []}

  @contextlib.contextmanager
  def stage(self, name: str) -> Iterator[None]:
    """Times the stage; one stopped by an exception (a SIGTERM'd training included) is kept
    with "interrupted": true, so that a suite run in parts accounts for all its wall time."""
    start, entry = time.perf_counter(), {"stage": name}
    try:
      yield
    except BaseException:
      entry["interrupted"] = True
      raise
    finally:
      entry["seconds"] = round(time.perf_counter() - start, 1)
      self.record["stages"].append(entry)

  def save(self, completed: bool) -> None:
    if jax.process_index() != 0:
      return
    self.record["finished"] = _now() if completed else None
    previous = read(os.path.dirname(self.path))
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    files.write_json(self.path, {"runs": previous + [self.record]})


def read(out_dir: str) -> list[dict]:
  """The recorded runs of the suite whose output folder is `out_dir` ([] before the first)."""
  saved = files.read_json_or_none(os.path.join(out_dir, FILENAME),
                                  recompute="its runs are no longer recorded")
  return [] if saved is None else list(saved.get("runs", []))


@contextlib.contextmanager
def recording(out_dir: str, mode: str, command: Optional[str] = None
              ) -> Iterator[RunRecorder]:
  recorder = RunRecorder(out_dir, mode, command)
  completed = False
  try:
    yield recorder
    completed = True
  finally:
    recorder.save(completed)
