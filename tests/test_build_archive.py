"""train.data.build_archive: the official CIFAR-10 download to a PNG archive.

A tiny fake `cifar-10-python.tar.gz` in the official format (pickled dicts
with `b"data"`, N x 3072 uint8 channel-major, and `b"labels"`) goes in; the
archive that comes out is read back with the harness's `folder:` source, and
its images and labels must equal the batches' exactly.
"""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from train import data
from train.data import build_archive

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")
PER_TRAIN_BATCH = 7
NUM_TEST = 12


def _batch(rng, count):
  # Every class at least once per batch of 10 or more, in a random order.
  labels = [int(label) for label in rng.permutation(np.arange(count) % 10)]
  flat = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
  return {b"batch_label": b"fake", b"labels": labels, b"data": flat,
          b"filenames": [b"x.png"] * count}


def _fake_download(path, rng, class_names=CLASSES):
  """Writes a fake cifar-10-python.tar.gz; returns its batches by name."""
  batches = {f"data_batch_{i}": _batch(rng, PER_TRAIN_BATCH)
             for i in range(1, 6)}
  batches["test_batch"] = _batch(rng, NUM_TEST)
  meta = {b"num_cases_per_batch": PER_TRAIN_BATCH, b"num_vis": 3072,
          b"label_names": [name.encode() for name in class_names]}
  with tarfile.open(path, "w:gz") as archive:
    for name, content in [*batches.items(), ("batches.meta", meta)]:
      payload = pickle.dumps(content, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      archive.addfile(info, io.BytesIO(payload))
  return batches


def _expected(batches, names):
  """The images `(N, 32, 32, 3)` and labels of the batches, in order."""
  flat = np.concatenate([batches[name][b"data"] for name in names])
  images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  labels = np.concatenate([batches[name][b"labels"] for name in names])
  return images, labels


def _by_class_in_original_order(images, labels):
  """What the folder source returns: classes in order, then file names."""
  order = np.argsort(labels, kind="stable")
  return images[order], labels[order]


def test_archive_round_trips_through_the_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  batches = _fake_download(tmp_path / "cifar-10-python.tar.gz", rng)
  output = tmp_path / "out" / "cifar10_png.tar.gz"
  assert build_archive.main([str(tmp_path / "cifar-10-python.tar.gz"),
                             "-o", str(output)]) == 0
  names = {"train": list(build_archive.TRAIN_BATCHES), "test": ["test_batch"]}
  for split, batch_names in names.items():
    loaded = data.load_split(f"folder:{output}", split,
                             cache_dir=tmp_path / "cache")
    images, labels = _by_class_in_original_order(
        *_expected(batches, batch_names))
    assert loaded.class_names == CLASSES
    assert loaded.num_examples == len(labels)
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_array_equal(loaded.images, images)


def test_file_names_are_the_indices_in_the_official_splits(tmp_path):
  rng = np.random.default_rng(1)
  batches = _fake_download(tmp_path / "download.tar.gz", rng)
  output = build_archive.build_archive(tmp_path / "download.tar.gz",
                                       tmp_path / "png.tar")
  _, test_labels = _expected(batches, ["test_batch"])
  with tarfile.open(output) as archive:
    files = [info.name for info in archive if info.isfile()]
  assert len(files) == 5 * PER_TRAIN_BATCH + NUM_TEST
  for index, label in enumerate(test_labels):
    assert f"test/{CLASSES[label]}/{index:05d}.png" in files


def test_archive_is_reproducible(tmp_path):
  _fake_download(tmp_path / "download.tar.gz", np.random.default_rng(2))
  digests = []
  for name in ("a.tar.gz", "b.tar.gz"):
    output = build_archive.build_archive(tmp_path / "download.tar.gz",
                                         tmp_path / name)
    digests.append(hashlib.sha256(output.read_bytes()).hexdigest())
  assert digests[0] == digests[1]


def test_rejects_what_is_not_the_cifar10_download(tmp_path):
  with pytest.raises(data.DataNotFoundError, match="does not exist"):
    build_archive.read_download(tmp_path / "missing.tar.gz")
  with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
    pass
  with pytest.raises(data.DataError, match=r"lacks batches\.meta"):
    build_archive.read_download(tmp_path / "empty.tar.gz")
  _fake_download(tmp_path / "unsorted.tar.gz", np.random.default_rng(3),
                 class_names=CLASSES[::-1])
  with pytest.raises(data.DataError, match="not in sorted order"):
    build_archive.read_download(tmp_path / "unsorted.tar.gz")
  with pytest.raises(data.DataError, match="must end in"):
    build_archive.build_archive(tmp_path / "unsorted.tar.gz",
                                tmp_path / "out.zip")


def test_refuses_pickles_that_would_run_code(tmp_path):
  payload = pickle.dumps({b"data": print}, protocol=2)  # a global: builtins
  with pytest.raises(data.DataError, match="unexpected object"):
    build_archive.load_batch(payload, "data_batch_1")
