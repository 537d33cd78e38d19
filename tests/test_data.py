"""Tests of train.data: sources, cache, batching, augmentation, errors."""

import importlib.util
import io
import os
from pathlib import Path
import tarfile
import time
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from train import data
from train.data import cache
from train.data import folder_source
from train.data import tfds_source

REAL_ARCHIVE = Path(__file__).parents[2] / "shared/data/cifar10_jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
# Two splits, three classes in unsorted insertion order, unequal counts.
TREE = {"train": {"dog": 2, "cat": 3, "ant": 1},
        "test": {"cat": 1, "dog": 1, "ant": 2}}
TREE_CLASSES = ("ant", "cat", "dog")
IMAGE_SIZE = (6, 8)  # height, width: not square, to catch a swap.


# ----------------------------------------------------------------- helpers


def _image(index: int, image_format: str) -> np.ndarray:
  """A test image: noise for PNG (lossless), one flat colour for JPEG."""
  rng = np.random.default_rng(index)
  if image_format == "png":
    return rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
  colour = rng.integers(0, 256, (3,), dtype=np.uint8)
  return np.broadcast_to(colour, (*IMAGE_SIZE, 3)).copy()


def _encode(image: np.ndarray, image_format: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG" if image_format == "png"
                              else "JPEG", quality=95)
  return buffer.getvalue()


def _write_tree(root: Path, image_format: str = "png", tree=None):
  """Writes an image folder; returns the expected (images, labels) by split."""
  tree = TREE if tree is None else tree
  suffix = ".png" if image_format == "png" else ".jpg"
  expected, index = {}, 0
  for split, classes in tree.items():
    images, labels = [], []
    for label, class_name in enumerate(sorted(classes)):
      for k in range(classes[class_name]):
        (root / split / class_name).mkdir(parents=True, exist_ok=True)
        image = _image(index, image_format)
        index += 1
        (root / split / class_name / f"{k:03d}{suffix}").write_bytes(
            _encode(image, image_format))
        images.append(image)
        labels.append(label)
    expected[split] = (np.stack(images), np.array(labels, np.int32))
  return expected


def _archive(folder: Path, archive_path: Path, prefix: str = "") -> Path:
  """Packs a folder into a .tar, .tar.gz, .tgz or .zip archive."""
  paths = sorted(folder.rglob("*"))
  if archive_path.suffix == ".zip":
    with zipfile.ZipFile(archive_path, "w") as archive:
      for path in paths:
        name = prefix + path.relative_to(folder).as_posix()
        if path.is_dir():
          archive.writestr(name + "/", b"")
        else:
          archive.write(path, name)
  else:
    mode = "w" if archive_path.suffix == ".tar" else "w:gz"
    with tarfile.open(archive_path, mode) as archive:
      for path in paths:
        archive.add(path, prefix + path.relative_to(folder).as_posix(),
                    recursive=False)
  return archive_path


def _check_split(split, expected, image_format="png"):
  images, labels = expected
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  assert split.images.shape == images.shape
  np.testing.assert_array_equal(split.labels, labels)
  if image_format == "png":
    np.testing.assert_array_equal(split.images, images)
  else:  # JPEG is lossy, but flat colours survive almost exactly.
    assert np.abs(split.images.astype(int) - images).max() <= 3
  assert split.class_names == TREE_CLASSES and split.num_classes == 3


def _index_split(num_examples: int, shape=(4, 4, 3)) -> data.Split:
  """A split whose labels are the example indices, to follow examples."""
  images = (np.arange(num_examples)[:, None, None, None] %
            256 * np.ones(shape)).astype(np.uint8)
  labels = np.arange(num_examples, dtype=np.int32)
  return data.Split(images=images, labels=labels,
                    num_classes=num_examples,
                    class_names=tuple(map(str, range(num_examples))),
                    source="test", split="train")


# ----------------------------------------------------------------- sources


def test_load_split_rejects_an_unknown_source_prefix():
  with pytest.raises(data.DataError, match="Unknown data source 'cifar10'"):
    data.load_split("cifar10", "train")
  with pytest.raises(data.DataError, match="tfds:NAME"):
    data.load_split("hf:cifar10", "train")


def test_synthetic_source_is_deterministic_and_learnable():
  spec = "synthetic:num_train=64,num_test=32,image_size=8,num_classes=4,seed=3"
  train = data.load_split(spec, "train")
  assert train.images.shape == (64, 8, 8, 3) and train.images.dtype == np.uint8
  assert train.labels.dtype == np.int32 and train.num_classes == 4
  assert len(train.class_names) == 4 and train.source == spec
  np.testing.assert_array_equal(np.bincount(train.labels), [16] * 4)
  again = data.load_split(spec, "train")
  np.testing.assert_array_equal(train.images, again.images)
  test = data.load_split(spec, "test")
  assert test.num_examples == 32
  other_seed = data.load_split(spec.replace("seed=3", "seed=4"), "train")
  assert not np.array_equal(train.images, other_seed.images)
  # Learnable: images of a class are closer to their class mean than others.
  means = np.stack([train.images[train.labels == c].mean(0) for c in range(4)])
  distances = ((train.images[:, None] - means) ** 2).sum((2, 3, 4))
  assert (distances.argmin(1) == train.labels).mean() > 0.9


def test_synthetic_presets_and_errors():
  spec = data.synthetic_source.parse_synthetic_spec("cifar100,num_train=10")
  assert (spec.num_classes, spec.num_train, spec.num_test) == (100, 10, 10_000)
  assert data.synthetic_source.parse_synthetic_spec("").num_train == 50_000
  with pytest.raises(data.DataError, match=r"unknown key 'size'.*num_train"):
    data.load_split("synthetic:size=3", "train")
  with pytest.raises(data.DataError, match="Unknown synthetic preset"):
    data.load_split("synthetic:imagenet", "train")
  with pytest.raises(data.DataError, match="must be an integer"):
    data.load_split("synthetic:num_train=many", "train")
  with pytest.raises(data.DataError, match="channels must be 1 or 3"):
    data.load_split("synthetic:channels=2", "train")
  with pytest.raises(data.DataNotFoundError, match="no split 'validation'"):
    data.load_split("synthetic:num_train=8", "validation")


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_folder_source_reads_a_folder(tmp_path, image_format):
  expected = _write_tree(tmp_path / "images", image_format)
  for split in ("train", "test"):
    loaded = data.load_split(f"folder:{tmp_path / 'images'}", split,
                             cache_dir=tmp_path / "cache")
    _check_split(loaded, expected[split], image_format)
    assert loaded.split == split


@pytest.mark.parametrize("archive_name,prefix", [
    ("images.tar", ""), ("images.tar.gz", "cifar/"), ("images.tgz", ""),
    ("images.zip", ""), ("images.zip", "cifar/")])
def test_folder_source_reads_archives(tmp_path, archive_name, prefix):
  expected = _write_tree(tmp_path / "images")
  archive = _archive(tmp_path / "images", tmp_path / archive_name, prefix)
  for split in ("train", "test"):
    loaded = data.load_split(f"folder:{archive}", split,
                             cache_dir=tmp_path / "cache")
    _check_split(loaded, expected[split])


def test_folder_source_ignores_hidden_and_non_image_files(tmp_path):
  expected = _write_tree(tmp_path / "images")
  (tmp_path / "images/README.txt").write_text("not an image")
  (tmp_path / "images/train/cat/.DS_Store").write_bytes(b"\0")
  (tmp_path / "images/.hidden").mkdir()
  (tmp_path / "images/.hidden/x.png").write_bytes(b"junk")
  loaded = data.load_split(f"folder:{tmp_path / 'images'}", "train",
                           cache_dir=tmp_path / "cache")
  _check_split(loaded, expected["train"])


def test_folder_cache_is_used_and_renewed_when_the_archive_changes(
    tmp_path, monkeypatch):
  _write_tree(tmp_path / "images")
  archive = _archive(tmp_path / "images", tmp_path / "images.tar")
  cache_dir = tmp_path / "c"
  first = data.load_split(f"folder:{archive}", "train", cache_dir=cache_dir)
  cache_files = list((tmp_path / "c/folder").iterdir())
  assert len(cache_files) == 1 and cache_files[0].suffix == ".npz"

  def fail(*args, **kwargs):
    raise AssertionError("decoded again although cached")

  with monkeypatch.context() as patch:
    patch.setattr(folder_source, "decode_layout", fail)
    cached = data.load_split(f"folder:{archive}", "test", cache_dir=cache_dir)
    assert cached.num_examples == 4
    cached = data.load_split(f"folder:{archive}", "train", cache_dir=cache_dir)
    np.testing.assert_array_equal(cached.images, first.images)
  # A changed image changes the archive's digest: decoded again.
  new_image = np.zeros((*IMAGE_SIZE, 3), np.uint8)
  (tmp_path / "images/train/ant/000.png").write_bytes(_encode(new_image, "png"))
  archive = _archive(tmp_path / "images", tmp_path / "images.tar")
  changed = data.load_split(f"folder:{archive}", "train", cache_dir=cache_dir)
  np.testing.assert_array_equal(changed.images[0], new_image)
  assert len(list((tmp_path / "c/folder").iterdir())) == 2


def test_folder_cache_follows_changes_in_a_folder(tmp_path):
  _write_tree(tmp_path / "images")
  source = f"folder:{tmp_path / 'images'}"
  data.load_split(source, "train", cache_dir=tmp_path / "c")
  new_image = np.full((*IMAGE_SIZE, 3), 7, np.uint8)
  path = tmp_path / "images/train/ant/000.png"
  path.write_bytes(_encode(new_image, "png"))
  os.utime(path, ns=(1, 1))  # A distinct mtime, whatever the clock.
  changed = data.load_split(source, "train", cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(changed.images[0], new_image)


def test_a_corrupt_cache_file_is_decoded_again(tmp_path):
  expected = _write_tree(tmp_path / "images")
  source = f"folder:{tmp_path / 'images'}"
  data.load_split(source, "train", cache_dir=tmp_path / "c")
  (cache_file,) = (tmp_path / "c/folder").iterdir()
  cache_file.write_bytes(cache_file.read_bytes()[:100])  # Truncated.
  _check_split(data.load_split(source, "train", cache_dir=tmp_path / "c"),
               expected["train"])
  assert not list((tmp_path / "c/folder").glob("*.tmp"))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("OPTAX_LCAM_CACHE", str(tmp_path / "a"))
  assert data.default_cache_dir() == tmp_path / "a"
  monkeypatch.delenv("OPTAX_LCAM_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert data.default_cache_dir() == tmp_path / "xdg/optax_lcam"
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert data.default_cache_dir() == Path.home() / ".cache/optax_lcam"


@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason=f"{REAL_ARCHIVE} absent")
def test_real_cifar10_archive():
  # The default cache, which tests/conftest.py puts in the checkout's .cache/:
  # the archive is decoded once (20-60 s), then loads in well under a second
  # (bench/input_pipeline.py prints both times).
  source = f"folder:{REAL_ARCHIVE}"
  train = data.load_split(source, "train")
  test = data.load_split(source, "test")
  assert train.images.shape == (50_000, 32, 32, 3)
  assert test.images.shape == (10_000, 32, 32, 3)
  assert train.class_names == CIFAR10_CLASSES == test.class_names
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
  mean, std = data.channel_statistics(train)
  np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.01)
  np.testing.assert_allclose(std, (0.2470, 0.2435, 0.2616), atol=0.01)


# ------------------------------------------------------ folder: bad input


def test_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.tar.gz does not exist"):
    data.load_split(f"folder:{tmp_path / 'nowhere.tar.gz'}", "train")


def test_file_that_is_not_an_archive(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(data.DataError, match=r"notes.txt is neither a folder"):
    data.load_split(f"folder:{tmp_path / 'notes.txt'}", "train")


def test_truncated_archive(tmp_path):
  _write_tree(tmp_path / "images")
  archive = _archive(tmp_path / "images", tmp_path / "images.tar.gz")
  archive.write_bytes(archive.read_bytes()[:-200])
  with pytest.raises(data.DataError, match=r"images.tar.gz.*complete"):
    data.load_split(f"folder:{archive}", "train", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("archive_name", [None, "images.tar.gz"])
def test_missing_split_lists_the_splits_found(tmp_path, archive_name):
  _write_tree(tmp_path / "images")
  path = tmp_path / "images"
  if archive_name:
    path = _archive(path, tmp_path / archive_name)
  with pytest.raises(FileNotFoundError,
                     match="no split 'validation'; splits found: test, train"):
    data.load_split(f"folder:{path}", "validation", cache_dir=tmp_path / "c")
  data.load_split(f"folder:{path}", "train", cache_dir=tmp_path / "c")
  with pytest.raises(FileNotFoundError, match="splits found: test, train"):
    data.load_split(f"folder:{path}", "validation", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("archive_name", [None, "images.tar", "images.zip"])
def test_empty_class_folder(tmp_path, archive_name):
  _write_tree(tmp_path / "images")
  (tmp_path / "images/train/zebra").mkdir()
  path = tmp_path / "images"
  if archive_name:
    path = _archive(path, tmp_path / archive_name)
  with pytest.raises(data.DataError, match="class folder train/zebra contains "
                     "no PNG or JPEG"):
    data.load_split(f"folder:{path}", "train", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("archive_name", [None, "images.zip"])
def test_corrupt_image_is_named(tmp_path, archive_name):
  _write_tree(tmp_path / "images")
  (tmp_path / "images/test/dog/000.png").write_bytes(b"\x89PNG broken")
  path = tmp_path / "images"
  if archive_name:
    path = _archive(path, tmp_path / archive_name)
  with pytest.raises(data.DataError,
                     match=r"Cannot decode the image .*test/dog/000.png"):
    data.load_split(f"folder:{path}", "train", cache_dir=tmp_path / "c")


def test_images_of_different_sizes(tmp_path):
  _write_tree(tmp_path / "images")
  odd = np.zeros((5, 8, 3), np.uint8)
  (tmp_path / "images/train/dog/001.png").write_bytes(_encode(odd, "png"))
  with pytest.raises(data.DataError, match=r"train/dog/001.png is 8x5 .* but "
                     r"test/ant/000.png is 8x6"):
    data.load_split(f"folder:{tmp_path / 'images'}", "train",
                    cache_dir=tmp_path / "c")


def test_images_outside_the_layout(tmp_path):
  _write_tree(tmp_path / "images")
  with pytest.raises(data.DataError, match="not at <split>/<class>/<image>"):
    data.load_split(f"folder:{tmp_path / 'images/train'}", "train",
                    cache_dir=tmp_path / "c")
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DataError, match="contains no PNG or JPEG images"):
    data.load_split(f"folder:{tmp_path / 'empty'}", "train",
                    cache_dir=tmp_path / "c")


def test_split_rejects_inconsistent_arrays():
  images = np.zeros((3, 4, 4, 3), np.uint8)
  with pytest.raises(data.DataError, match="labels must lie in"):
    data.Split(images, np.array([0, 1, 5], np.int32), 2, ("a", "b"), "s", "t")
  with pytest.raises(data.DataError, match="int32"):
    data.Split(images, np.array([0, 1, 1]), 2, ("a", "b"), "s", "t")
  split = data.Split(images, np.zeros(3, np.int32), 2, ("a", "b"), "s", "t")
  with pytest.raises(ValueError):  # Read-only: batches never write into it.
    split.images[0, 0, 0, 0] = 1


# -------------------------------------------------------------------- TFDS


class OptaxLcamTestImages(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
  """A tiny prepared TFDS dataset, written without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  SIZES = types.MappingProxyType({"train": 10, "test": 4})

  def _info(self):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(*IMAGE_SIZE, 3)),
        "label": tfds.features.ClassLabel(names=["x", "y", "z"])})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.SIZES}

  def _generate_examples(self, split):
    offset = 0 if split == "train" else 100
    for i in range(offset, offset + self.SIZES[split]):
      yield i, {"image": _encode(_tfds_image(i), "png"), "label": i % 3}


def _tfds_image(i):
  image = _image(i, "png")
  image[0, 0, 0] = i  # So that the example can be recognised.
  return image


@pytest.fixture(scope="module")
def prepared_tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  OptaxLcamTestImages(data_dir=data_dir).download_and_prepare(
      file_format="array_record")
  return data_dir


def test_tfds_source_reads_prepared_array_record_files(prepared_tfds_dir,
                                                        tmp_path, monkeypatch):
  source = "tfds:optax_lcam_test_images"
  split = data.load_split(source, "train", data_dir=prepared_tfds_dir,
                          cache_dir=tmp_path)
  assert split.images.shape == (10, *IMAGE_SIZE, 3)
  assert split.class_names == ("x", "y", "z") and split.num_classes == 3
  indices = split.images[:, 0, 0, 0].astype(int)
  assert sorted(indices) == list(range(10))
  np.testing.assert_array_equal(split.labels, indices % 3)
  for image, i in zip(split.images, indices):
    np.testing.assert_array_equal(image, _tfds_image(i))
  # The second load comes from the cache.
  monkeypatch.setattr(tfds_source, "read_all_examples", None)
  cached = data.load_split(source, "train", data_dir=prepared_tfds_dir,
                           cache_dir=tmp_path)
  np.testing.assert_array_equal(cached.images, split.images)
  with pytest.raises(FileNotFoundError, match="no split 'validation'; splits: "
                     "test, train"):
    data.load_split(source, "validation", data_dir=prepared_tfds_dir,
                    cache_dir=tmp_path)


def _write_prepared_cifar10_metadata(data_dir: Path) -> None:
  """Metadata of a prepared cifar10 (written without TensorFlow), no data."""
  builder = tfds.builder("cifar10", data_dir=data_dir)
  split_infos = [tfds.core.SplitInfo(
      name=name, shard_lengths=[20], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}"
          "-{SHARD_X_OF_Y}", dataset_name="cifar10", split=name,
          filetype_suffix="array_record"))
                 for name in ("train", "test")]
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.set_file_format("array_record", override=True)
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


def _random_examples(builder, split, **kwargs):
  """Stands in for `builder.as_data_source`: random examples that fit."""
  del split, kwargs
  features = builder.info.features
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, features["image"].shape, np.uint8),
           "label": i % features["label"].num_classes} for i in range(20)]


def test_tfds_source_under_mock_data(tmp_path):
  # cifar10's own features and prepared metadata, examples from the test; no
  # array_record files, so nothing is cached.
  _write_prepared_cifar10_metadata(tmp_path)
  with tfds.testing.mock_data(data_dir=os.fspath(tmp_path),
                              policy=tfds.testing.MockPolicy.USE_FILES,
                              as_data_source_fn=_random_examples):
    split = data.load_split("tfds:cifar10", "test", data_dir=tmp_path,
                            cache_dir=tmp_path / "cache")
  assert split.images.shape == (20, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32 and split.num_classes == 10
  np.testing.assert_array_equal(split.labels, np.arange(20) % 10)
  assert split.source == "tfds:cifar10" and split.split == "test"
  assert not (tmp_path / "cache").exists()  # No prepared files: no cache.


def test_unknown_tfds_name():
  with pytest.raises(data.DataError, match=r"Unknown TFDS dataset 'cifar1O'. "
                     "Did you mean cifar10"):
    data.load_split("tfds:cifar1O", "train")


def test_tfds_dataset_without_images(tmp_path):
  with pytest.raises(data.DataError, match="not an image classification"):
    data.load_split("tfds:imdb_reviews", "train", data_dir=tmp_path)


def test_unprepared_tfds_dataset_offline_fails_fast_with_a_recipe(tmp_path):
  if (importlib.util.find_spec("tensorflow") is not None and
      tfds_source.is_reachable("https://www.cs.toronto.edu", 5.0)):
    pytest.skip("online with TensorFlow: this would download CIFAR-10")
  start = time.perf_counter()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_split("tfds:cifar10", "train", data_dir=tmp_path)
  assert time.perf_counter() - start < 30.0
  message = str(error.value)
  assert "not prepared in" in message and "cannot be downloaded" in message
  assert "tfds build cifar10" in message and "download_and_prepare" in message
  assert "data_dir" in message
  assert not list(tmp_path.rglob("*.array_record*"))


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("num_examples,batch,drop,steps", [
    (50_000, 128, False, 391), (50_000, 128, True, 390), (256, 64, False, 4),
    (256, 64, True, 4), (10, 3, False, 4), (10, 3, True, 3)])
def test_steps_per_epoch(num_examples, batch, drop, steps):
  assert data.steps_per_epoch(num_examples, batch, drop) == steps


def test_steps_per_epoch_errors():
  with pytest.raises(data.DataError, match="no step"):
    data.steps_per_epoch(10, 16, drop_remainder=True)
  with pytest.raises(data.DataError, match="positive"):
    data.steps_per_epoch(10, 0, drop_remainder=False)


def test_epoch_permutation_is_reproducible():
  first = data.epoch_permutation(seed=1, epoch=2, num_examples=1000)
  np.testing.assert_array_equal(first, data.epoch_permutation(1, 2, 1000))
  np.testing.assert_array_equal(np.sort(first), np.arange(1000))
  assert not np.array_equal(first, data.epoch_permutation(1, 3, 1000))
  assert not np.array_equal(first, data.epoch_permutation(2, 2, 1000))
  with pytest.raises(data.DataError, match="seed must be an integer >= 0"):
    data.epoch_permutation(-1, 0, 10)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_train_batches_cover_the_epoch_once(drop_remainder):
  split = _index_split(50)
  batches = list(data.train_batches(split, 16, seed=0, epoch=0,
                                    drop_remainder=drop_remainder))
  assert len(batches) == data.steps_per_epoch(50, 16, drop_remainder)
  for batch in batches:
    assert batch["image"].shape == (16, 4, 4, 3)
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == bool and batch["position"].dtype == np.int32
    np.testing.assert_array_equal(batch["position"], np.arange(16))
    np.testing.assert_array_equal(  # Images and labels stay together.
        batch["image"][:, 0, 0, 0], batch["label"] % 256)
  seen = np.concatenate([b["label"][b["mask"]] for b in batches])
  order = data.epoch_permutation(0, 0, 50)
  if drop_remainder:
    np.testing.assert_array_equal(seen, order[:48])
  else:
    np.testing.assert_array_equal(seen, order)
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], np.arange(16) < 2)
    assert not last["image"][2:].any() and not last["label"][2:].any()


def test_train_batches_differ_between_epochs_and_repeat_for_a_seed():
  split = _index_split(40)
  labels = lambda **kw: np.concatenate(
      [b["label"] for b in data.train_batches(split, 8, **kw)])
  np.testing.assert_array_equal(labels(seed=5, epoch=1),
                                labels(seed=5, epoch=1))
  assert not np.array_equal(labels(seed=5, epoch=1), labels(seed=5, epoch=2))


def test_train_batches_resume_mid_epoch():
  split = _index_split(50)
  full = list(data.train_batches(split, 16, seed=3, epoch=4))
  resumed = list(data.train_batches(split, 16, seed=3, epoch=4, start_step=2))
  assert len(resumed) == len(full) - 2
  for expected, batch in zip(full[2:], resumed):
    for key in expected:
      np.testing.assert_array_equal(expected[key], batch[key])
  assert not list(data.train_batches(split, 16, seed=3, epoch=4, start_step=4))
  with pytest.raises(data.DataError, match="start_step"):
    data.train_batches(split, 16, seed=3, epoch=4, start_step=5)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_process_slices_concatenate_to_the_global_batch(process_count,
                                                        drop_remainder):
  split = _index_split(50)
  kwargs = dict(seed=7, epoch=1, drop_remainder=drop_remainder)
  global_batches = list(data.train_batches(split, 16, **kwargs))
  per_process = [list(data.train_batches(split, 16, process_index=p,
                                         process_count=process_count, **kwargs))
                 for p in range(process_count)]
  for step, expected in enumerate(global_batches):
    for key in expected:
      joined = np.concatenate([batches[step][key] for batches in per_process])
      np.testing.assert_array_equal(joined, expected[key])
  assert per_process[0][0]["image"].shape[0] == 16 // process_count


def test_eval_batches_cover_every_example_once_in_order():
  split = _index_split(50)
  batches = list(data.eval_batches(split, 16))
  assert len(batches) == 4
  seen = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(50))
  assert sum(b["mask"].sum() for b in batches) == 50
  halves = [list(data.eval_batches(split, 16, process_index=p, process_count=2))
            for p in range(2)]
  for step, batch in enumerate(batches):
    np.testing.assert_array_equal(
        np.concatenate([h[step]["mask"] for h in halves]), batch["mask"])


def test_batch_size_not_divisible_by_processes_or_devices():
  split = _index_split(50)
  with pytest.raises(data.DataError, match="global batch size 10 is not "
                     "divisible by 4 process"):
    data.train_batches(split, 10, seed=0, epoch=0, process_count=4)
  with pytest.raises(data.DataError, match="process_index must be in"):
    data.eval_batches(split, 8, process_index=2, process_count=2)
  with pytest.raises(data.DataError, match=r"2 process.* x 8 device.* = 16"):
    data.check_global_batch_size(24, process_count=2, local_device_count=8)
  data.check_global_batch_size(32, process_count=2, local_device_count=8)
  batch = next(data.train_batches(split, 12, seed=0, epoch=0))
  with pytest.raises(data.DataError, match=r"batch of 12 examples .* over 8 "
                     "devices"):
    data.shard_for_devices(batch, 8)


def test_shard_for_devices():
  split = _index_split(50)
  batch = next(data.train_batches(split, 16, seed=0, epoch=0))
  sharded = data.shard_for_devices(batch, 8)
  assert sharded["image"].shape == (8, 2, 4, 4, 3)
  assert sharded["mask"].shape == sharded["position"].shape == (8, 2)
  np.testing.assert_array_equal(sharded["label"].reshape(-1), batch["label"])


# ------------------------------------------------------------ augmentation


def _numpy_crop_and_flip(images, offsets, flips, padding=4):
  height, width = images.shape[1:3]
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding),
                           (0, 0)))
  out = np.stack([padded[i, y:y + height, x:x + width]
                  for i, (y, x) in enumerate(offsets)])
  out[flips] = out[flips][:, :, ::-1]
  return out


@pytest.mark.parametrize("channels", [3, 1])
def test_augment_crops_and_flips_like_numpy(channels):
  rng = jax.random.key(42)
  images = np.random.default_rng(0).integers(
      1, 256, (32, 8, 10, channels), dtype=np.uint8)  # No zeros: see padding.
  positions = np.arange(100, 132, dtype=np.int32)
  augmented = jax.jit(data.augment)(rng, images, positions)
  assert augmented.shape == images.shape and augmented.dtype == jnp.uint8
  offsets, flips = data.crop_and_flip_parameters(rng, positions)
  expected = _numpy_crop_and_flip(images, np.asarray(offsets),
                                  np.asarray(flips))
  np.testing.assert_array_equal(np.asarray(augmented), expected)
  # Some crops shift (zeros come in), some are flipped, some are unchanged.
  assert (np.asarray(augmented) == 0).any()
  assert 0 < np.asarray(flips).sum() < 32


def test_crop_and_flip_parameters_are_uniform():
  offsets, flips = data.crop_and_flip_parameters(
      jax.random.key(0), jnp.arange(4096, dtype=jnp.int32))
  offsets, flips = np.asarray(offsets), np.asarray(flips)
  assert offsets.dtype == np.int32 and offsets.shape == (4096, 2)
  for axis in range(2):
    counts = np.bincount(offsets[:, axis], minlength=9)
    assert len(counts) == 9 and counts.min() > 4096 / 9 * 0.7
  assert abs(flips.mean() - 0.5) < 0.05
  # Rows and columns are drawn independently.
  assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.1


def test_augment_is_independent_of_the_device_split():
  rng = jax.random.key(7)
  split = data.load_split("synthetic:num_train=64,num_test=8,image_size=8",
                          "train")
  batch = next(data.train_batches(split, 64, seed=0, epoch=0))
  whole = jax.jit(data.augment)(rng, batch["image"], batch["position"])
  sharded = data.shard_for_devices(batch, 8)
  per_device = jax.pmap(data.augment, in_axes=(None, 0, 0))(
      rng, sharded["image"], sharded["position"])
  np.testing.assert_array_equal(np.asarray(per_device).reshape(whole.shape),
                                np.asarray(whole))
  # Order within the batch does not matter either: only the positions do.
  reverse = jax.jit(data.augment)(rng, batch["image"][::-1],
                                  batch["position"][::-1])
  np.testing.assert_array_equal(np.asarray(reverse)[::-1], np.asarray(whole))
  # A raw uint32 key works as well as a typed one.
  raw = jax.jit(data.augment)(jax.random.PRNGKey(7), batch["image"],
                              batch["position"])
  assert raw.shape == whole.shape


def test_normalize():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  result = data.normalize(images, data.IMAGENET_MEAN, data.IMAGENET_STD)
  expected = (np.array([0, 128, 255]) / 255 - data.IMAGENET_MEAN) / (
      data.IMAGENET_STD)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(result)[0, 0, 0], expected, rtol=1e-6)
  assert data.normalize(images, (0.5,) * 3, (0.5,) * 3,
                        dtype=jnp.bfloat16).dtype == jnp.bfloat16
  grey = np.zeros((2, 4, 4, 1), np.uint8)
  assert data.normalize(grey, (0.5,), (0.25,)).shape == grey.shape
  with pytest.raises(data.DataError, match=r"1 channel.*give 1 value"):
    data.normalize(grey, data.IMAGENET_MEAN, data.IMAGENET_STD)


def test_channel_statistics_and_normalization_stats():
  split = data.load_split("synthetic:num_train=100,num_test=8,image_size=4",
                          "train")
  mean, std = data.channel_statistics(split, chunk_size=7)
  pixels = split.images.reshape(-1, 3) / 255
  np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-10)
  np.testing.assert_allclose(std, pixels.std(0), rtol=1e-8)
  assert data.normalization_stats("imagenet", split) == (data.IMAGENET_MEAN,
                                                         data.IMAGENET_STD)
  assert data.normalization_stats("dataset", split) == (mean, std)
  with pytest.raises(data.DataError, match="Unknown normalization 'cifar'"):
    data.normalization_stats("cifar", split)


def test_digest_of_file_is_computed_once_and_follows_changes(tmp_path,
                                                            monkeypatch):
  path = tmp_path / "archive.tar.gz"
  path.write_bytes(b"first")
  first = cache.digest_of_file(path)
  opened = []
  monkeypatch.setattr(cache, "open", lambda *a: opened.append(a) or open(*a),  # noqa: SIM115
                      raising=False)
  assert cache.digest_of_file(path) == first and not opened
  path.write_bytes(b"second")
  os.utime(path, ns=(1, 1))  # A new modification time, whatever the clock.
  assert cache.digest_of_file(path) != first and opened
