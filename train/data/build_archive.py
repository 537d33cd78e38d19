"""Builds a lossless image-folder archive from the official CIFAR-10 download.

The official CIFAR-10 "python version", `cifar-10-python.tar.gz`, holds the
pickled batches `data_batch_1` to `data_batch_5` (training, 50,000 images),
`test_batch` (10,000) and `batches.meta` (the class names), under the folder
`cifar-10-batches-py/`. Each batch is a dict with `b"data"`, an `(N, 3072)`
uint8 array (the red, then green, then blue 32x32 plane of each image, rows
first), and `b"labels"`, N integers.

This module writes every image as a PNG (lossless) into a `.tar.gz`, `.tgz` or
`.tar` archive laid out as the `folder:` source reads it:

    train/<class>/NNNNN.png    the 50,000 training images
    test/<class>/NNNNN.png     the 10,000 test images

`NNNNN` is the image's index in its split of the official download (training
batches 1 to 5 in order), so the original order can be recovered. The archive
is reproducible: members in a fixed order, no timestamps or owners.

    python -m train.data.build_archive cifar-10-python.tar.gz \\
        -o cifar10_png.tar.gz
    python -m train --config train/configs/quick.py --workdir runs/png \\
        --config.data.source=folder:cifar10_png.tar.gz

The pickles are read with an unpickler that builds nothing but numpy arrays,
lists, dicts, strings and numbers, so a damaged or forged download cannot run
code. Needs only the standard library, numpy and pillow.
"""

import argparse
from collections.abc import Iterator, Sequence
import gzip
import io
import os
from pathlib import Path
import pickle
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image

from train.data.split import DataError
from train.data.split import DataNotFoundError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SIZE = 32
CHANNELS = 3
# The only globals the CIFAR pickles refer to: how numpy rebuilds an array,
# and how a protocol-2 pickle written by Python 3 stores bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_ARCHIVE_SUFFIXES = {".tar.gz": "gz", ".tgz": "gz", ".tar": ""}


class _ArrayUnpickler(pickle.Unpickler):
  """An unpickler that refuses every global but numpy's array rebuilding."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"unexpected object {module}.{name} in a CIFAR-10 batch")


def load_batch(data: bytes, name: str) -> dict:
  """Unpickles one batch of the CIFAR-10 python download.

  Args:
    data: the file's bytes.
    name: the file's name, for error messages.

  Returns:
    The batch's dict, with bytes keys (`b"data"`, `b"labels"`, ...).
  """
  try:
    batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as err:  # pickle raises many types for a damaged file.
    raise DataError(f"Cannot read the CIFAR-10 batch {name}: {err}") from err
  if not isinstance(batch, dict):
    raise DataError(f"The CIFAR-10 batch {name} is not a dict.")
  return batch


def batch_images(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of one unpickled batch.

  Args:
    batch: as returned by `load_batch`.
    name: the file's name, for error messages.

  Returns:
    `(images, labels)`: uint8 `(N, 32, 32, 3)` and int64 `(N,)`.
  """
  if b"data" not in batch or b"labels" not in batch:
    raise DataError(f"The CIFAR-10 batch {name} lacks b'data' or b'labels'.")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"], np.int64)
  size = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
  if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size
      or labels.shape != (data.shape[0],)):
    raise DataError(
        f"The CIFAR-10 batch {name} has data {data.dtype} {data.shape} and "
        f"{labels.shape[0]} labels; expected uint8 (N, {size}) and N labels.")
  images = data.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
  return images.transpose(0, 2, 3, 1), labels


def read_download(path: str | os.PathLike
                  ) -> tuple[tuple[str, ...], dict[str, tuple]]:
  """Reads the images, labels and class names of `cifar-10-python.tar.gz`.

  Args:
    path: the official download (or a tar archive with the same files).

  Returns:
    `(class_names, splits)`: the class names in label order, and for `train`
    and `test` the uint8 images `(N, 32, 32, 3)` and the labels `(N,)`.
  """
  path = Path(path)
  if not path.is_file():
    raise DataNotFoundError(f"{path} does not exist. Download the CIFAR-10 "
                            "python version, cifar-10-python.tar.gz.")
  wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
  found = {}
  try:
    with tarfile.open(path, "r:*") as archive:
      for info in archive:
        name = Path(info.name).name
        if info.isfile() and name in wanted and name not in found:
          found[name] = load_batch(archive.extractfile(info).read(), name)
  except (OSError, EOFError, tarfile.TarError) as err:
    raise DataError(f"Cannot read {path}: {err}. Is the download complete?"
                    ) from err
  missing = sorted(wanted - found.keys())
  if missing:
    raise DataError(f"{path} lacks {', '.join(missing)}: is it the CIFAR-10 "
                    "python version (cifar-10-python.tar.gz)?")
  class_names = tuple(
      name.decode() if isinstance(name, bytes) else str(name)
      for name in found[META].get(b"label_names", ()))
  if not class_names:
    raise DataError(f"{path}: {META} has no b'label_names'.")
  if list(class_names) != sorted(class_names):
    # folder: sources number the classes in the sorted order of their names.
    raise DataError(f"{path}: the class names {class_names} are not in sorted "
                    "order, so a folder: source would number them otherwise.")
  train = [batch_images(found[name], name) for name in TRAIN_BATCHES]
  splits = {
      "train": (np.concatenate([images for images, _ in train]),
                np.concatenate([labels for _, labels in train])),
      "test": batch_images(found[TEST_BATCH], TEST_BATCH),
  }
  for split, (_, labels) in splits.items():
    if labels.size and not 0 <= labels.min() <= labels.max() < len(
        class_names):
      raise DataError(f"{path}: a {split} label is outside [0, "
                      f"{len(class_names)}).")
  return class_names, splits


def png_bytes(image: np.ndarray) -> bytes:
  """Encodes a uint8 RGB image `(H, W, 3)` as a PNG file."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
  return buffer.getvalue()


def archive_members(class_names: Sequence[str], splits: dict[str, tuple]
                    ) -> Iterator[tuple[str, bytes | None]]:
  """The archive's folders (`None`) and PNG files, in their stored order.

  Args:
    class_names: the class names in label order.
    splits: for each split, `(images, labels)` as `read_download` returns.

  Yields:
    `(name, data)`: `data` is None for a folder.
  """
  for split in sorted(splits):
    images, labels = splits[split]
    width = max(5, len(str(len(labels) - 1)))
    yield f"{split}/", None
    for label, class_name in enumerate(class_names):
      indices = np.flatnonzero(labels == label)
      if not indices.size:  # folder: sources refuse an empty class folder.
        continue
      yield f"{split}/{class_name}/", None
      for index in indices:
        yield (f"{split}/{class_name}/{index:0{width}d}.png",
               png_bytes(images[index]))


def _archive_mode(output: Path) -> str:
  for suffix, compression in _ARCHIVE_SUFFIXES.items():
    if output.name.endswith(suffix):
      return compression
  raise DataError(f"{output}: the archive's name must end in "
                  f"{', '.join(_ARCHIVE_SUFFIXES)}.")


def write_archive(output: str | os.PathLike, class_names: Sequence[str],
                  splits: dict[str, tuple]) -> Path:
  """Writes the image-folder archive, reproducibly and atomically.

  Args:
    output: the archive to write, `.tar.gz`, `.tgz` or `.tar`.
    class_names: the class names in label order.
    splits: for each split, `(images, labels)` as `read_download` returns.

  Returns:
    The archive's path.
  """
  output = Path(output)
  compression = _archive_mode(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  fd, temporary = tempfile.mkstemp(prefix=f".{output.name}.",
                                   dir=output.parent)
  try:
    with os.fdopen(fd, "wb") as raw:
      # gzip's header would otherwise hold the time and the file's name.
      stream = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
                if compression else raw)
      with stream, tarfile.open(fileobj=stream, mode="w",
                                format=tarfile.PAX_FORMAT) as archive:
        for name, data in archive_members(class_names, splits):
          info = tarfile.TarInfo(name.rstrip("/"))
          info.mtime, info.uid, info.gid, info.uname, info.gname = (
              0, 0, 0, "", "")
          if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
          else:
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    os.replace(temporary, output)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise
  return output


def build_archive(download: str | os.PathLike, output: str | os.PathLike
                  ) -> Path:
  """Converts `cifar-10-python.tar.gz` into a PNG image-folder archive.

  Args:
    download: the official CIFAR-10 python download.
    output: the archive to write, `.tar.gz`, `.tgz` or `.tar`.

  Returns:
    The archive's path; read it with the source `folder:OUTPUT`.
  """
  _archive_mode(Path(output))  # A bad name fails before the slow part.
  class_names, splits = read_download(download)
  return write_archive(output, class_names, splits)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m train.data.build_archive",
      description="Converts the official CIFAR-10 python download "
      "(cifar-10-python.tar.gz) into a lossless PNG image-folder archive "
      "(train/<class>/NNNNN.png, test/<class>/NNNNN.png) for the folder: "
      "source.")
  parser.add_argument("download", help="cifar-10-python.tar.gz")
  parser.add_argument("-o", "--output", default="cifar10_png.tar.gz",
                      help="the archive to write, .tar.gz, .tgz or .tar "
                      "(default: %(default)s)")
  args = parser.parse_args(argv)
  try:
    output = build_archive(args.download, args.output)
  except DataError as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  print(f"wrote {output}; train with --config.data.source=folder:{output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
