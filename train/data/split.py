"""The in-memory split every data source produces, and the data errors."""

import dataclasses

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
