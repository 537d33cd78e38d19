"""On-device augmentation (random crop and flip) and normalisation.

The augmentation runs inside the jitted or pmapped train step. Each example's
randomness comes from `jax.random.fold_in(rng, position)`, its slot in the
global batch, so the result does not depend on how the batch is split over
processes and devices.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from train.data.split import DataError
from train.data.split import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "dataset")


def crop_and_flip_parameters(rng: jax.Array, positions: jax.Array, *,
                             padding: int = 4) -> tuple[jax.Array, jax.Array]:
  """Draws each example's crop offset and flip from its position.

  Args:
    rng: a PRNG key (new-style or raw uint32), the same for the whole step.
    positions: int `(B,)`, each example's slot in the global batch.
    padding: the zero padding on each side before cropping.

  Returns:
    `(offsets, flips)`: int32 `(B, 2)` row and column of the crop's top-left
    corner in the padded image, each uniform in `[0, 2 * padding]`, and bool
    `(B,)` whether the crop is mirrored left-right (probability 1/2).
  """

  def draw(position):
    offset_key, flip_key = jax.random.split(jax.random.fold_in(rng, position))
    offset = jax.random.randint(offset_key, (2,), 0, 2 * padding + 1,
                                dtype=jnp.int32)
    return offset, jax.random.bernoulli(flip_key)

  return jax.vmap(draw)(positions)


def crop_and_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, *,
                  padding: int = 4) -> jax.Array:
  """Pads images with zeros, crops them back to size, mirrors some.

  Args:
    images: `(B, H, W, C)`, any dtype.
    offsets: int `(B, 2)`, the crop's top-left corner in the padded image.
    flips: bool `(B,)`, which crops to mirror left-right.
    padding: the zero padding on each side.

  Returns:
    `(B, H, W, C)` images of the input dtype.
  """
  height, width, channels = images.shape[1:]

  def one(image, offset, flip):
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crop = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0),
                                 (height, width, channels))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(images, offsets, flips)


def augment(rng: jax.Array, images: jax.Array, positions: jax.Array, *,
            padding: int = 4) -> jax.Array:
  """Random crop (zero padding of 4, crop back to size) and horizontal flip.

  The reference CIFAR augmentation, per example, jit- and pmap-compatible.

  Args:
    rng: a PRNG key, the same for the whole global batch of a step (e.g.
      `jax.random.fold_in(data_key, step)`).
    images: uint8 `(B, H, W, C)`, any B (a whole batch or one device's part).
    positions: int `(B,)`, each example's slot in the global batch (the
      batch's `position`); the example's key is `fold_in(rng, position)`.
    padding: the zero padding on each side before cropping.

  Returns:
    The augmented images, same shape and dtype.
  """
  offsets, flips = crop_and_flip_parameters(rng, positions, padding=padding)
  return crop_and_flip(images, offsets, flips, padding=padding)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """Maps uint8 images to `(x / 255 - mean) / std` per channel.

  Args:
    images: uint8 `(..., C)`.
    mean: C per-channel means, on the [0, 1] scale.
    std: C per-channel standard deviations, on the [0, 1] scale.
    dtype: the result's dtype (computed in float32, then cast).

  Returns:
    The normalised images in `dtype`.
  """
  channels = jnp.shape(images)[-1]
  if len(mean) not in (1, channels) or len(std) not in (1, channels):
    raise DataError(f"normalize: images have {channels} channel(s) but mean "
                    f"{tuple(mean)} and std {tuple(std)}; give {channels} "
                    "value(s) each, or one for all channels.")
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  scaled = jnp.asarray(images).astype(jnp.float32) / 255.0
  return ((scaled - mean) / std).astype(dtype)


def channel_statistics(split: Split, chunk_size: int = 4096
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The per-channel mean and standard deviation of a split's pixels.

  Exact: computed from each channel's histogram of the 256 pixel values.

  Args:
    split: the split, normally the training split.
    chunk_size: images counted at a time (bounds the temporary memory).

  Returns:
    `(mean, std)`, one value per channel, on the [0, 1] scale (population
    standard deviation over all pixels of all images).
  """
  channels = split.images.shape[-1]
  counts = np.zeros((channels, 256), np.int64)
  for start in range(0, split.num_examples, chunk_size):
    chunk = split.images[start:start + chunk_size]
    for channel in range(channels):
      counts[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
  values = np.arange(256) / 255.0
  total = counts.sum(axis=1)
  mean = counts @ values / total
  variance = counts @ values**2 / total - mean**2
  std = np.sqrt(np.maximum(variance, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalization_stats(name: str, split: Split | None = None
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The `(mean, std)` a normalisation name stands for.

  Args:
    name: `imagenet` (the reference's constants) or `dataset` (the split's own
      statistics, see `channel_statistics`).
    split: the training split; needed for `dataset`.

  Returns:
    `(mean, std)` per channel on the [0, 1] scale.
  """
  if name == "imagenet":
    return IMAGENET_MEAN, IMAGENET_STD
  if name == "dataset":
    if split is None:
      raise DataError("normalization 'dataset' needs the training split.")
    return channel_statistics(split)
  raise DataError(f"Unknown normalization {name!r}; use one of "
                  f"{', '.join(NORMALIZATIONS)}.")
