"""Input pipeline throughput: host batching, device augmentation, archive load.

  .venv/bin/python bench/input_pipeline.py [--batch_size 128] [--archive PATH]

Measures, on CIFAR-sized data (synthetic 50,000 x 32x32x3):
  * host: images per second that `train_batches` (permute, gather, pad) plus
    `shard_for_devices` deliver over one epoch;
  * device: images per second of the jitted `augment` (and `augment` followed
    by `normalize`, as in the train step), timed with block_until_ready;
  * the real CIFAR-10 archive's load time, first with an empty (temporary)
    cache, then from that cache.
A WRN-16-4 train step on a 2-core CPU consumes roughly 10-30 images/s; the
input side should deliver more than 50 times that.
"""

import argparse
import os
from pathlib import Path
import sys
import tempfile
import time

# The harness (models/, train/) is imported from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from train import data

# The kit's copy in the checkout (.data/, see docs/benchmarks.md) or the
# shared one.
_REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = next(
    (path for path in (_REPO / ".data/cifar10_jpeg.tar.gz",
                       _REPO.parent / "shared/data/cifar10_jpeg.tar.gz")
     if path.exists()), _REPO.parent / "shared/data/cifar10_jpeg.tar.gz")
WRN_16_4_IMAGES_PER_S = 30.0  # The upper end of a CPU train step's appetite.


def host_images_per_second(split: data.Split, batch_size: int,
                           num_devices: int) -> tuple[float, int]:
  """Times one epoch of host-side batching; returns (images/s, steps)."""
  start = time.perf_counter()
  steps = 0
  for batch in data.train_batches(split, batch_size, seed=0, epoch=0):
    data.shard_for_devices(batch, num_devices)
    steps += 1
  elapsed = time.perf_counter() - start
  return steps * batch_size / elapsed, steps


def device_images_per_second(function, batch, repeats: int) -> float:
  """Times a jitted function of (rng, images, positions) on device arrays."""
  images = jax.device_put(batch["image"])
  positions = jax.device_put(batch["position"])
  rng = jax.random.key(0)
  for step in range(3):  # Compile, and warm up the thread pools.
    result = function(jax.random.fold_in(rng, step), images, positions)
    result.block_until_ready()
  start = time.perf_counter()
  for step in range(repeats):
    result = function(jax.random.fold_in(rng, step), images, positions)
  result.block_until_ready()
  return repeats * images.shape[0] / (time.perf_counter() - start)


def archive_load_seconds(archive: Path) -> tuple[float, float]:
  """Loads both splits of the archive with an empty cache, then cached."""
  with tempfile.TemporaryDirectory() as cache_dir:
    times = []
    for _ in range(2):
      start = time.perf_counter()
      for split in ("train", "test"):
        data.load_split(f"folder:{archive}", split, cache_dir=cache_dir)
      times.append(time.perf_counter() - start)
  return times[0], times[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--augment_repeats", type=int, default=200)
  parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
  args = parser.parse_args()

  print(f"jax {jax.__version__}, devices: {jax.devices()}")
  start = time.perf_counter()
  split = data.load_split("synthetic:cifar10", "train")
  print(f"synthetic:cifar10 train {split.images.shape} generated in "
        f"{time.perf_counter() - start:.2f} s")

  num_devices = jax.local_device_count()
  host_rate, steps = host_images_per_second(split, args.batch_size, num_devices)
  print(f"host   train_batches + shard_for_devices: {host_rate:12,.0f} "
        f"images/s ({steps} steps of {args.batch_size}, {num_devices} "
        "device(s))")

  batch = next(data.train_batches(split, args.batch_size, seed=0, epoch=0))
  augment = jax.jit(data.augment)
  augment_rate = device_images_per_second(augment, batch, args.augment_repeats)
  print(f"device augment:                           {augment_rate:12,.0f} "
        "images/s")
  augment_and_normalize = jax.jit(lambda rng, images, positions: data.normalize(
      data.augment(rng, images, positions), data.IMAGENET_MEAN,
      data.IMAGENET_STD, jnp.float32))
  both_rate = device_images_per_second(augment_and_normalize, batch,
                                       args.augment_repeats)
  print(f"device augment + normalize:               {both_rate:12,.0f} "
        "images/s")
  slowest = min(host_rate, augment_rate, both_rate)
  print(f"slowest input stage / WRN-16-4 CPU step ({WRN_16_4_IMAGES_PER_S:.0f} "
        f"images/s): {slowest / WRN_16_4_IMAGES_PER_S:,.0f}x (target > 50x)")

  if args.archive.exists():
    cold, cached = archive_load_seconds(args.archive)
    print(f"archive {args.archive.name}, train + test: first load (empty "
          f"cache) {cold:.1f} s, cached {cached:.2f} s")
  else:
    print(f"archive {args.archive} not found: load times skipped")


if __name__ == "__main__":
  main()
