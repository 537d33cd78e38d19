"""`load_split`: one entry point for every source string."""

import os

from train.data.folder_source import load_folder_split
from train.data.split import DataError
from train.data.split import Split
from train.data.synthetic_source import load_synthetic_split
from train.data.tfds_source import load_tfds_split

SOURCE_KINDS = ("tfds", "folder", "synthetic")


def load_split(source: str, split: str, *,
               data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> Split:
  """Loads one split of a dataset into host memory.

  Args:
    source: `tfds:NAME`, `folder:PATH` or `synthetic:SPEC` (see the package
      docstring of `train.data`).
    split: the split's name, normally `train` or `test`.
    data_dir: the TFDS data directory (`tfds:` only; None: TFDS's default).
    cache_dir: where decoded images are cached (`tfds:` and `folder:`; None:
      `$OPTAX_LCAM_CACHE`, `$XDG_CACHE_HOME/optax_lcam` or
      `~/.cache/optax_lcam`).

  Returns:
    The split: uint8 images `(N, H, W, C)`, int32 labels and metadata.
  """
  kind, separator, rest = str(source).partition(":")
  if not separator or kind not in SOURCE_KINDS:
    raise DataError(
        f"Unknown data source {source!r}: use tfds:NAME (e.g. tfds:cifar10), "
        "folder:PATH (an image folder or a .tar/.tar.gz/.zip archive of one) "
        "or synthetic:SPEC (e.g. synthetic:cifar10).")
  if kind == "tfds":
    return load_tfds_split(rest, split, data_dir=data_dir, cache_dir=cache_dir)
  if kind == "folder":
    return load_folder_split(rest, split, cache_dir=cache_dir)
  return load_synthetic_split(rest, split)
