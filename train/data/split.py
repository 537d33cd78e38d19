"""The in-memory split every data source produces, and the data errors."""

import dataclasses
import hashlib

import numpy as np


class DataError(ValueError):
  """A data source, a file or a batching argument that cannot be used."""


class DataNotFoundError(DataError, FileNotFoundError):
  """A path, a split or a prepared dataset that does not exist."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of an image classification dataset, held in host memory.

  The arrays are made read-only: batches are gathered from them, never
  written into them.

  Attributes:
    images: uint8 images, shape `(num_examples, height, width, channels)`.
    labels: int32 labels in `[0, num_classes)`, shape `(num_examples,)`.
    num_classes: the number of classes of the dataset (not only of this split).
    class_names: the name of each label, `len(class_names) == num_classes`.
    source: the source string the split was loaded from, e.g. `tfds:cifar10`.
    split: the split's name, e.g. `train` or `test`.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  source: str
  split: str

  def __post_init__(self):
    _check_split_arrays(self.images, self.labels, self.num_classes,
                        self.class_names, f"{self.source} ({self.split})")
    self.images.setflags(write=False)
    self.labels.setflags(write=False)

  @property
  def num_examples(self) -> int:
    """The number of examples in the split."""
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The shape `(height, width, channels)` of one image."""
    return tuple(self.images.shape[1:])

  def __repr__(self) -> str:
    return (f"Split(source={self.source!r}, split={self.split!r}, "
            f"num_examples={self.num_examples}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})")


def _check_split_arrays(images, labels, num_classes, class_names, where):
  """Raises a DataError unless the arrays and metadata form a valid split."""
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
    raise DataError(f"{where}: images must be a uint8 numpy array, got "
                    f"{getattr(images, 'dtype', type(images))}.")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"{where}: images must have shape (N, H, W, 1 or 3), got "
                    f"{images.shape}.")
  if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
    raise DataError(f"{where}: labels must be an int32 numpy array, got "
                    f"{getattr(labels, 'dtype', type(labels))}.")
  if labels.shape != images.shape[:1]:
    raise DataError(f"{where}: {images.shape[0]} images but labels of shape "
                    f"{labels.shape}.")
  if len(class_names) != num_classes:
    raise DataError(f"{where}: {num_classes} classes but {len(class_names)} "
                    "class names.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{where}: labels must lie in [0, {num_classes}), found "
                    f"[{labels.min()}, {labels.max()}].")


# The permutation that chooses held-out examples: fixed, so that every run,
# whatever its seed or optimizer, holds out the same examples.
HOLD_OUT_SEED = 20230905


def hold_out(split: Split, num_examples: int) -> tuple[Split, Split]:
  """Splits ``num_examples`` examples off ``split`` for validation.

  The held-out examples are the first ``num_examples`` of a fixed permutation
  of the split (`HOLD_OUT_SEED`), a function of the split's size alone; both
  parts keep the split's order.

  Args:
    split: the split to divide, normally `train`.
    num_examples: how many examples to hold out, 1 .. num_examples - 1.

  Returns:
    ``(rest, held_out)``; ``held_out.split`` is ``"validation"``.

  Raises:
    DataError: ``num_examples`` leaves no example on one side.

  Example:
    >>> import numpy as np
    >>> full = Split(np.zeros((10, 2, 2, 1), np.uint8),
    ...              np.arange(10, dtype=np.int32) % 2, 2, ("a", "b"),
    ...              "synthetic:x", "train")
    >>> rest, held_out = hold_out(full, 3)
    >>> rest.num_examples, held_out.num_examples, held_out.split
    (7, 3, 'validation')
  """
  total = split.num_examples
  if int(num_examples) != num_examples or not 0 < num_examples < total:
    raise DataError(
        f"Cannot hold out {num_examples!r} of the {total} examples of "
        f"{split.source} ({split.split}): use a whole number from 1 to "
        f"{total - 1}.")
  permutation = np.random.default_rng(HOLD_OUT_SEED).permutation(total)
  chosen = np.zeros(total, bool)
  chosen[permutation[:num_examples]] = True

  def part(mask, name):
    return dataclasses.replace(split, images=split.images[mask],
                               labels=split.labels[mask], split=name)

  return part(~chosen, split.split), part(chosen, "validation")


def fingerprint(split) -> str:
  """The sha256 of a split's arrays (images and labels, or a text's
  characters) and class names.

  The same data gives the same fingerprint whatever source or cache it came
  from, so runs can show that they saw the same examples.
  """
  sha = hashlib.sha256()
  arrays = [getattr(split, field.name) for field in dataclasses.fields(split)]
  for array in (a for a in arrays if isinstance(a, np.ndarray)):
    sha.update(str((array.dtype.str, array.shape)).encode())
    sha.update(np.ascontiguousarray(array).data)
  sha.update("\0".join(split.class_names).encode())
  return sha.hexdigest()
