"""Files the library writes and reads back: written atomically, read with errors that name them.

A file is written to a temporary file beside its target, which then replaces the target
(`os.replace` is atomic on POSIX file systems). A run killed mid-write therefore leaves the
previous version or nothing, never a file cut off half-way that makes every later run fail.
Reading a file that is there but damaged raises DamagedFileError naming it; callers that can
recompute what the file held use `read_json_or_none` and recompute.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from defenses_jax.errors import UserError


class DamagedFileError(UserError, ValueError):
  """A file exists but cannot be read as what it should be (cut off, overwritten, ...)."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path} is damaged ({reason}).")
    self.path, self.reason = path, reason


class UnwritableDirectoryError(UserError, OSError):
  """A directory results or caches must go to cannot be written."""


def check_writable(directory: str) -> None:
  """Raises UnwritableDirectoryError, naming `directory`, unless a file can be created in it
  (checked by creating one: permission bits say nothing to root, or of a read-only mount)."""
  probe = os.path.join(directory, f".write-test-{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UnwritableDirectoryError(
        f"cannot write to {directory} ({e.strerror or e}); results and cached fits go there. "
        "Make it writable, or copy the experiment to a writable workdir.") from e


class DamagedFileWarning(UserWarning):
  """A damaged file was set aside and what it held is being recomputed."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension, so that writers that infer the
  format from it work); on success it replaces `path`, on failure it is removed."""
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  stem, ext = os.path.splitext(name)
  temporary = os.path.join(directory, f".{stem}.tmp-{os.getpid()}{ext}")
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_with(path: str, write: Callable, mode: str = "w") -> None:
  """Atomically writes `path` with `write(file object)`."""
  with atomic_path(path) as temporary:
    with open(temporary, mode) as f:
      write(f)


def write_text(path: str, text: str) -> None:
  write_with(path, lambda f: f.write(text))


def write_json(path: str, payload, all_processes: bool = False) -> None:
  """A JSON file (indented, sorted keys), written atomically; by process 0 only unless
  `all_processes` (results files: every host holds the same numbers)."""
  if not all_processes and jax.process_index() != 0:
    return
  write_with(path, lambda f: json.dump(payload, f, indent=2, sort_keys=True))


def save_npz(path: str, compressed: bool = False, **arrays) -> None:
  """numpy arrays as an .npz file, written atomically."""
  save = np.savez_compressed if compressed else np.savez
  write_with(path, lambda f: save(f, **arrays), mode="wb")


def save_figure(fig, path: str, **savefig_kwargs) -> None:
  """A matplotlib figure as an image file, written atomically."""
  with atomic_path(path) as temporary:
    fig.savefig(temporary, **savefig_kwargs)


def read_json(path: str):
  """The JSON value in `path`; DamagedFileError (naming it) if it does not parse."""
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFileError(path, f"not valid JSON: {e}") from e


def read_json_or_none(path: str, recompute: str) -> Optional[dict]:
  """The JSON object in `path`, or None when it is missing, or damaged (then with a warning
  naming the file and `recompute`, what happens instead)."""
  if not os.path.exists(path):
    return None
  try:
    value = read_json(path)
  except DamagedFileError as e:
    warn(f"{e} Ignoring it: {recompute}.")
    return None
  if not isinstance(value, dict):
    warn(f"{path} holds a JSON {type(value).__name__}, not an object. Ignoring it: "
         f"{recompute}.")
    return None
  return value


def warn(message: str) -> None:
  """A warning about a file, shown once per message (the file name makes it unique)."""
  warnings.warn(message, DamagedFileWarning, stacklevel=3)
