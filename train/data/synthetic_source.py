"""`synthetic:...`: random, deterministic, learnable images of any size.

Spec syntax: comma-separated items after `synthetic:`, an optional preset name
first, then `key=value` overrides (all values integers):

  synthetic:cifar10     50,000 train / 10,000 test 32x32x3 images, 10 classes
  synthetic:cifar100    the same with 100 classes
  synthetic:num_train=512,num_test=256,image_size=32,num_classes=10,seed=0
  synthetic:cifar100,num_train=1000

Keys: num_train, num_test, image_size (height = width), channels (1 or 3),
num_classes, seed. Unspecified keys take the `cifar10` values and seed 0.

Each class has its own random template image; an example is half its class's
template and half independent noise, so a model can learn the labels (useful
for end-to-end tests) and the labels are balanced (class = index mod
num_classes, then shuffled).
"""

import dataclasses

import numpy as np

from train.data.split import DataError
from train.data.split import DataNotFoundError
from train.data.split import Split


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """The parameters of a synthetic dataset."""

  num_train: int = 50_000
  num_test: int = 10_000
  image_size: int = 32
  channels: int = 3
  num_classes: int = 10
  seed: int = 0


PRESETS = {
    "cifar10": SyntheticSpec(),
    "cifar100": SyntheticSpec(num_classes=100),
}
_SPLIT_INDEX = {"train": 0, "test": 1}


def parse_synthetic_spec(spec: str) -> SyntheticSpec:
  """Parses the part of a `synthetic:` source after the colon.

  Args:
    spec: e.g. `cifar10`, `num_train=512,num_classes=10` or
      `cifar100,num_train=1000`; empty means `cifar10`.

  Returns:
    The parsed parameters.
  """
  items = [item.strip() for item in spec.split(",") if item.strip()]
  params = SyntheticSpec()
  if items and "=" not in items[0]:
    preset = items.pop(0)
    if preset not in PRESETS:
      raise DataError(f"Unknown synthetic preset {preset!r} in "
                      f"'synthetic:{spec}'; presets: {', '.join(PRESETS)}.")
    params = PRESETS[preset]
  overrides = dict(_parse_key_value(item, spec) for item in items)
  params = dataclasses.replace(params, **overrides)
  _check_spec(params, spec)
  return params


def _parse_key_value(item: str, spec: str) -> tuple[str, int]:
  """Parses one `key=value` item of a synthetic spec."""
  keys = [field.name for field in dataclasses.fields(SyntheticSpec)]
  key, sep, value = (part.strip() for part in item.partition("="))
  if not sep:
    raise DataError(f"'synthetic:{spec}': expected key=value, got {item!r} "
                    "(a preset name may only come first).")
  if key not in keys:
    raise DataError(f"'synthetic:{spec}': unknown key {key!r}; known keys: "
                    f"{', '.join(keys)}.")
  try:
    return key, int(value)
  except ValueError:
    raise DataError(f"'synthetic:{spec}': {key} must be an integer, got "
                    f"{value!r}.") from None


def _check_spec(params: SyntheticSpec, spec: str) -> None:
  """Raises a DataError for sizes that make no dataset."""
  for key in ("num_train", "num_test", "image_size", "num_classes"):
    if getattr(params, key) < 1:
      raise DataError(f"'synthetic:{spec}': {key} must be at least 1, got "
                      f"{getattr(params, key)}.")
  if params.channels not in (1, 3):
    raise DataError(f"'synthetic:{spec}': channels must be 1 or 3, got "
                    f"{params.channels}.")
  if params.seed < 0:
    raise DataError(f"'synthetic:{spec}': seed must be >= 0, got "
                    f"{params.seed}.")


def load_synthetic_split(spec: str, split: str) -> Split:
  """Generates one split of a synthetic dataset.

  Args:
    spec: the part of the source after `synthetic:`.
    split: `train` or `test`.

  Returns:
    The split; the same spec and split always give the same arrays.
  """
  params = parse_synthetic_spec(spec)
  if split not in _SPLIT_INDEX:
    raise DataNotFoundError(f"'synthetic:{spec}' has no split {split!r}; "
                            f"splits: {', '.join(_SPLIT_INDEX)}.")
  num_examples = params.num_train if split == "train" else params.num_test
  shape = (params.image_size, params.image_size, params.channels)
  templates = np.random.default_rng([params.seed, 2]).integers(
      0, 256, (params.num_classes, *shape), dtype=np.uint8)
  rng = np.random.default_rng([params.seed, _SPLIT_INDEX[split]])
  labels = rng.permutation(np.arange(num_examples) % params.num_classes)
  labels = labels.astype(np.int32)
  noise = rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8)
  images = templates[labels]
  images >>= 1
  noise >>= 1
  images += noise
  return Split(
      images=images,
      labels=labels,
      num_classes=params.num_classes,
      class_names=tuple(f"class_{i}" for i in range(params.num_classes)),
      source=f"synthetic:{spec}",
      split=split,
  )
