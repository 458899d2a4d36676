"""Artefacts an evaluation computes once and reuses: a fitted detector, a universal
perturbation, saved adversarial examples, a Classmap, a figure's data.

Reusing one that is not what a fresh computation would give silently changes the reported
numbers (a zeroed detector state turned a 0.90 detection AUC into 0.01 with no sign of it), so
a cached file is reused only when all of these hold:
1. it reads back whole and its content matches the SHA-256 digest stored with it;
2. the identity stored with it (the settings, the checkpoint step and the model's fingerprint,
   the data it was computed on, the cache format) equals the identity the caller would give
   a fresh computation;
3. its content meets the caller's contract (a perturbation within its eps and shaped like an
   image, examples that match their source images' count and labels).
Otherwise `load` returns None and warns, naming the file and the reason; the caller
recomputes and `save` replaces the file (atomically: write beside, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from typing import Callable, NamedTuple, Optional

import numpy as np

from defenses_jax import files

# Bumped when what a cache holds changes meaning; older files are then recomputed.
FORMAT = 1
_META = ("__identity__", "__info__", "__digest__")


class StaleCacheWarning(UserWarning):
  """A cached artefact was not reused (damaged, made by something else, or out of contract)."""


class Cached(NamedTuple):
  arrays: dict  # name -> np.ndarray
  info: dict  # JSON-able extras (a fit's report, ...)
  path: str


def canonical(value) -> str:
  """The JSON text identities are compared by (tuples and lists alike, keys sorted)."""
  return json.dumps(value, sort_keys=True, default=str)


def digest(arrays: dict, info: dict, identity_text: str) -> str:
  """SHA-256 over every array's name, dtype, shape and bytes, the info and the identity."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  h.update(canonical(info).encode())
  h.update(identity_text.encode())
  return h.hexdigest()


def save(path: str, arrays: dict, identity: dict, info: Optional[dict] = None) -> None:
  """Writes the artefact with its identity and digest (atomically)."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  bad = set(arrays) & set(_META)
  if bad:
    raise ValueError(f"array names {sorted(bad)} are reserved by the cache format.")
  info = dict(info or {})
  identity_text = canonical({**identity, "__format": FORMAT})
  files.save_npz(path, **arrays, __identity__=np.array(identity_text),
                 __info__=np.array(canonical(info)),
                 __digest__=np.array(digest(arrays, info, identity_text)))


def load(path: str, identity: dict,
         contract: Optional[Callable[[dict, dict], Optional[str]]] = None) -> Optional[Cached]:
  """The artefact at `path` if it may be reused (see the module docstring), else None with a
  StaleCacheWarning naming the file and why. `contract(arrays, info)` returns a problem
  (a sentence) or None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as saved:
      stored = {k: saved[k] for k in saved.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    return _reject(path, f"it cannot be read ({type(e).__name__}: {e})")
  if any(k not in stored for k in _META):
    return _reject(path, "it was written before cached files carried their identity and "
                   "checksum")
  identity_text, info_text = str(stored.pop("__identity__")), str(stored.pop("__info__"))
  recorded = str(stored.pop("__digest__"))
  try:
    info = json.loads(info_text)
  except json.JSONDecodeError:
    return _reject(path, "its info is not valid JSON")
  if digest(stored, info, identity_text) != recorded:
    return _reject(path, "its content does not match its checksum (changed after it was "
                   "written)")
  wanted = canonical({**identity, "__format": FORMAT})
  if identity_text != wanted:
    return _reject(path, "it was made by something else: " + _differences(identity_text, wanted))
  problem = contract(stored, info) if contract is not None else None
  if problem:
    return _reject(path, problem)
  return Cached(stored, info, path)


def save_json(path: str, data, identity: dict) -> None:
  """A JSON artefact (readable beside what it draws: a figure's data) with its identity and
  digest, written atomically."""
  identity_text = canonical({**identity, "__format": FORMAT})
  files.write_json(path, {"identity": json.loads(identity_text), "data": data,
                          "digest": digest({}, data, identity_text)}, all_processes=True)


def load_json(path: str, identity: dict) -> Optional[Cached]:
  """The JSON artefact at `path` if it may be reused (as `load`; its data in `info`)."""
  if not os.path.exists(path):
    return None
  try:
    saved = files.read_json(path)
  except files.DamagedFileError as e:
    return _reject(path, f"it cannot be read ({e.reason})")
  if not isinstance(saved, dict) or any(k not in saved for k in ("identity", "data", "digest")):
    return _reject(path, "it was written before cached files carried their identity and "
                   "checksum")
  identity_text = canonical(saved["identity"])
  if digest({}, saved["data"], identity_text) != saved["digest"]:
    return _reject(path, "its content does not match its checksum (changed after it was "
                   "written)")
  wanted = canonical({**identity, "__format": FORMAT})
  if identity_text != wanted:
    return _reject(path, "it was made by something else: " + _differences(identity_text, wanted))
  return Cached({}, saved["data"], path)


def _differences(saved_text: str, wanted_text: str) -> str:
  saved, wanted = json.loads(saved_text), json.loads(wanted_text)
  keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
  return "; ".join(f"{k}: {_short(saved.get(k))} there, {_short(wanted.get(k))} now"
                   for k in keys)


def _short(value, limit: int = 80) -> str:
  text = canonical(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _reject(path: str, reason: str) -> None:
  warnings.warn(f"not reusing the cached {path}: {reason}. Recomputing it.", StaleCacheWarning,
                stacklevel=3)
  return None


def within_norm_ball(delta: np.ndarray, eps: float, norm: str) -> Optional[str]:
  """None if every row of `delta` (one perturbation per row) is within eps in `norm`, allowing
  float32 rounding; else a sentence naming the largest norm found."""
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  if norm == "linf":
    sizes = np.abs(flat).max(axis=1)
  elif norm == "l2":
    sizes = np.sqrt(np.sum(flat * flat, axis=1))
  else:
    return None  # L0 budgets are counts, checked by the attack itself.
  allowed = eps * (1 + 1e-4) + 1e-6
  worst = float(sizes.max()) if sizes.size else 0.0
  return None if worst <= allowed else (f"a perturbation of {norm} norm {worst:.4g} exceeds "
                                        f"its eps {eps:g}")


def in_box(x: np.ndarray) -> Optional[str]:
  """None if x is finite and within [0, 1], else a sentence saying what is wrong."""
  x = np.asarray(x)
  if not np.all(np.isfinite(x)):
    return "it holds non-finite values"
  lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
  return None if lo >= 0.0 and hi <= 1.0 else f"its values span [{lo:g}, {hi:g}], outside [0, 1]"


def row_digests(images: np.ndarray) -> np.ndarray:
  """(N,) uint64: an 8-byte BLAKE2b digest of each image, so that a saved set can be matched
  against the images it was made from, row by row (a prefix included)."""
  rows = np.ascontiguousarray(images).reshape(len(images), -1)
  return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
                   for r in rows], dtype=np.uint64)
