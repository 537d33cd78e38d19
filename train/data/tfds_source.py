"""`tfds:NAME`: an image classification dataset of tensorflow-datasets.

The prepared dataset is read with `tfds.data_source` (array_record files; no
TensorFlow needed) from `data_dir` (None: TFDS's own default,
`$TFDS_DATA_DIR` or `~/tensorflow_datasets`). NAME may carry a config and a
version as TFDS spells them (`cifar10:3.0.2`). The dataset needs an `image`
feature of fixed size with 1 or 3 channels and a `label` ClassLabel feature.

A dataset that is not prepared is downloaded and prepared when that can work
(network access and TensorFlow, `pip install -e '.[prepare]'`); otherwise the
error says how to prepare it on another machine and copy it here.

The decoded arrays are cached like image folders (keyed by the prepared
files' names, sizes and modification times), so only the first load decodes.
"""

import difflib
import importlib.util
import logging
import os
from pathlib import Path
import re
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from train.data import cache
from train.data.split import DataError
from train.data.split import DataNotFoundError
from train.data.split import Split

TFDS_CATALOG_URL = "https://www.tensorflow.org/datasets/catalog/overview"
# How long to wait for the download host before declaring there is no network.
PROBE_TIMEOUT_S = 5.0
# Probed when the dataset does not list its download URLs.
_FALLBACK_PROBE_URL = "https://storage.googleapis.com"
_DECODER_VERSION = "1"
_READ_CHUNK_SIZE = 1024


def load_tfds_split(name: str, split: str, *,
                    data_dir: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Split:
  """Loads one split of a TFDS image classification dataset into memory.

  Args:
    name: the TFDS name, e.g. `cifar10` or `cifar100`.
    split: the TFDS split, e.g. `train`, `test` or `train[:90%]`.
    data_dir: where prepared TFDS datasets live (None: TFDS's default).
    cache_dir: where decoded arrays are cached (None: the default cache).

  Returns:
    The split; labels as the dataset's ClassLabel numbers them.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _builder(tfds, name, data_dir)
  # Checked before any download: the features come with the dataset's code.
  image_shape, class_names = _image_classification_features(builder, name)
  data_source = _data_source(builder, name, split)
  source = f"tfds:{name}"
  cache_path = _cache_path(builder, name, split, cache_dir)
  if cache_path is not None:
    cached = cache.load_arrays(cache_path, ["images", "labels"])
    if cached is not None:
      return Split(images=cached["images"], labels=cached["labels"],
                   num_classes=len(class_names), class_names=class_names,
                   source=source, split=split)
  logging.info("Decoding the %d examples of tfds:%s (%s) from %s.",
               len(data_source), name, split, builder.data_dir)
  images, labels = read_all_examples(data_source, image_shape)
  if cache_path is not None:
    cache.save_arrays(cache_path, {"images": images, "labels": labels})
  return Split(images=images, labels=labels, num_classes=len(class_names),
               class_names=class_names, source=source, split=split)


def load_tfds_text(name: str, split: str, *,
                   data_dir: str | os.PathLike | None = None) -> str:
  """The text of one split of a prepared TFDS text dataset.

  Made for `tiny_shakespeare`, whose splits each hold one example: the
  split's text (feature ``text``). Several examples are joined in order.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _builder(tfds, name, data_dir)
  if "text" not in getattr(builder.info.features, "keys", lambda: ())():
    raise DataError(f"tfds:{name} has no 'text' feature; its features: "
                    f"{builder.info.features}")
  data_source = _data_source(builder, name, split)
  texts = [example["text"] for example in _read_examples(
      data_source, range(len(data_source)))]
  return "".join(t.decode("utf-8") if isinstance(t, bytes) else str(t)
                 for t in texts)


def _builder(tfds, name: str, data_dir):
  """`tfds.builder(name)`, with a short error for an unknown name."""
  if not name:
    raise DataError("tfds source without a name: use tfds:NAME, e.g. "
                    "tfds:cifar10.")
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as err:
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split(":")[0], known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DataNotFoundError(
        f"Unknown TFDS dataset {name!r}.{hint} The catalog: "
        f"{TFDS_CATALOG_URL}") from err


def _image_classification_features(builder, name: str):
  """The image shape and class names, checking the features fit."""
  features = builder.info.features
  names = set(features.keys()) if hasattr(features, "keys") else set()
  image = features["image"] if "image" in names else None
  label = features["label"] if "label" in names else None
  shape = tuple(getattr(image, "shape", ()) or ())
  if (label is None or not hasattr(label, "names") or len(shape) != 3 or
      None in shape or shape[-1] not in (1, 3) or
      np.dtype(getattr(image, "np_dtype", np.float32)) != np.uint8):
    raise DataError(
        f"tfds:{name} is not an image classification dataset this loader can "
        "hold in memory: it needs an 'image' feature of fixed size (H, W, 1 or "
        f"3), uint8, and a 'label' ClassLabel feature. Its features: "
        f"{features}")
  return shape, tuple(label.names)


def _check_split_name(builder, name: str, split: str) -> None:
  """Raises a DataNotFoundError for a split the dataset does not have."""
  known = list(builder.info.splits)
  base_name = re.split(r"[\[+]", split, maxsplit=1)[0]
  if known and base_name not in known:
    raise DataNotFoundError(f"tfds:{name} has no split {split!r}; splits: "
                            f"{', '.join(sorted(known))}.")


def _data_source(builder, name: str, split: str):
  """The split's random-access data source; prepares the dataset if needed."""
  if not builder.is_prepared():
    _download_and_prepare(builder, name)
  _check_split_name(builder, name, split)
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError as err:
    raise DataError(
        f"tfds:{name} in {builder.data_dir} was prepared without array_record "
        "files, which reading without TensorFlow needs. Prepare it again with "
        "file_format='array_record' into another data_dir (see "
        "`tfds build --help`).") from err


def read_all_examples(data_source, image_shape):
  """Reads and decodes every example of a data source into two arrays.

  Args:
    data_source: a sequence of examples `{'image': ..., 'label': ...}`, read
      in chunks with its batched `__getitems__` when it has one.
    image_shape: the shape `(H, W, C)` of every image.

  Returns:
    `(images, labels)`: uint8 `(N, H, W, C)` and int32 `(N,)`.
  """
  num_examples = len(data_source)
  images = np.empty((num_examples, *image_shape), np.uint8)
  labels = np.empty((num_examples,), np.int32)
  for start in range(0, num_examples, _READ_CHUNK_SIZE):
    indices = list(range(start, min(num_examples, start + _READ_CHUNK_SIZE)))
    for index, example in zip(indices, _read_examples(data_source, indices)):
      images[index] = example["image"]
      labels[index] = example["label"]
  return images, labels


def _read_examples(data_source, indices):
  """The examples at `indices`, read as one batch when the source can."""
  read_batch = getattr(data_source, "__getitems__", None)
  if read_batch is not None:
    return read_batch(indices)
  return [data_source[index] for index in indices]


def _cache_path(builder, name: str, split: str, cache_dir) -> Path | None:
  """The cache file of a split, or None when no prepared files back it."""
  data_path = Path(os.fspath(builder.data_dir))
  if not data_path.is_dir():
    return None
  files = sorted(p for p in data_path.iterdir() if p.is_file())
  if not any(".array_record" in p.name for p in files):
    return None
  key = [_DECODER_VERSION, name, split, str(data_path.resolve())]
  key += [f"{p.name}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}"
          for p in files]
  file_name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{split}")[:80]
  return (cache.resolve_cache_dir(cache_dir) / "tfds" /
          f"{file_name}-{cache.digest_of_strings(key)[:32]}.npz")


def _download_and_prepare(builder, name: str) -> None:
  """Downloads and prepares a dataset, or explains how to do it elsewhere.

  Fails within about `PROBE_TIMEOUT_S` seconds when the download host cannot
  be reached, instead of after TFDS's minutes of retries.

  Args:
    builder: the dataset's TFDS builder, not prepared.
    name: the dataset's name, for messages.
  """
  problems = []
  url = _download_url(builder)
  if not is_reachable(url, PROBE_TIMEOUT_S):
    host = urllib.parse.urlsplit(url).hostname
    problems.append(f"the download host {host} cannot be reached (no network "
                    "access?), so the data could not be downloaded")
  if importlib.util.find_spec("tensorflow") is None:
    problems.append("TensorFlow is not installed, and TFDS needs it to prepare "
                    "a dataset: pip install -e '.[prepare]'")
  if problems:
    raise DataNotFoundError(_not_prepared_message(builder, name, problems))
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as err:  # Download and generation raise many types.
    raise DataError(_not_prepared_message(
        builder, name, [f"preparing it failed: {err!r}"])) from err


def _download_url(builder) -> str:
  """The first URL a dataset downloads from, or a stand-in for the network."""
  try:
    url_infos = type(builder).url_infos or {}
  except Exception:  # pylint: disable=broad-except  # Unreadable checksums.
    url_infos = {}
  return next(iter(url_infos), _FALLBACK_PROBE_URL)


def is_reachable(url: str, timeout_s: float) -> bool:
  """Whether an HTTP server answers at `url` within about `timeout_s` seconds.

  The request runs in a daemon thread so that a hanging name lookup cannot
  hold the caller longer than the timeout. Proxy settings of the environment
  are honoured.

  Args:
    url: an http(s) URL.
    timeout_s: the time to wait for an answer.

  Returns:
    True when any HTTP answer (even an error status) arrived in time.
  """
  answers = []

  def probe():
    try:
      request = urllib.request.Request(url, method="HEAD")
      urllib.request.urlopen(request, timeout=timeout_s).close()
      answers.append(True)
    except urllib.error.HTTPError:  # The server answered.
      answers.append(True)
    except (OSError, ValueError):
      answers.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s + 1.0)
  return bool(answers) and answers[0]


def _not_prepared_message(builder, name: str, problems) -> str:
  """What went wrong, and the recipe for preparing a dataset offline."""
  data_dir_root = os.fspath(builder.data_dir_root)
  reasons = "".join(f"\n  - {problem}" for problem in problems)
  return (
      f"tfds:{name} is not prepared in {data_dir_root}, and it cannot be "
      f"downloaded and prepared here:{reasons}\n"
      "Prepare it on a machine with internet access "
      "(pip install tensorflow tensorflow-datasets), in the array_record "
      "format:\n"
      f"    tfds build {name} --data_dir=/tmp/tfds --file_format=array_record\n"
      "  or\n"
      '    python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{name}', data_dir='/tmp/tfds')"
      ".download_and_prepare(file_format='array_record')\"\n"
      f"then copy the folder /tmp/tfds/{name.split(':')[0].split('/')[0]} "
      f"into {data_dir_root} on this machine, or into any folder DIR and pass "
      "data_dir=DIR (--config.data.data_dir=DIR). An image folder or archive "
      "works too: folder:PATH.")
