"""Batches of an in-memory split: a permutation per epoch, padding, masks.

Every batch is a dict of numpy arrays with a leading axis of this process's
share of the global batch:

  image     uint8 (B_local, H, W, C)
  label     int32 (B_local,)
  mask      bool  (B_local,)   False for padding
  position  int32 (B_local,)   the example's slot in the global batch,
                               0 .. global_batch_size - 1, unique in a step

A process takes its own contiguous slice of every global batch, so all
processes agree on the permutation, and `position` names the same slot
whatever the number of processes and devices (the augmentation draws its
randomness from it). A last, partial batch is padded to full size with zero
images, label 0 and mask False, so that every step has the same shapes; the
loss, the accuracy and the BatchNorm statistics must then use masked means.
"""

from collections.abc import Iterator

import numpy as np

from train.data.split import DataError
from train.data.split import Split

Batch = dict[str, np.ndarray]


def steps_per_epoch(num_examples: int, global_batch_size: int,
                    drop_remainder: bool) -> int:
  """The number of steps (global batches) in one epoch.

  Args:
    num_examples: the examples in the split.
    global_batch_size: the examples in a step, over all processes.
    drop_remainder: whether the last, partial batch is dropped (else it is
      kept, padded; the reference keeps it: 391 steps for 50,000 examples in
      batches of 128).

  Returns:
    `num_examples // global_batch_size` when dropping the remainder, else
    `ceil(num_examples / global_batch_size)`.
  """
  _check_positive("global_batch_size", global_batch_size)
  if num_examples < 1:
    raise DataError(f"Cannot make batches of an empty split ({num_examples} "
                    "examples).")
  if drop_remainder:
    if num_examples < global_batch_size:
      raise DataError(
          f"No full batch of {global_batch_size} in {num_examples} examples: "
          "with drop_remainder=True an epoch would have no step. Use a "
          "smaller batch or keep the remainder.")
    return num_examples // global_batch_size
  return -(-num_examples // global_batch_size)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which an epoch visits the examples.

  A function of `(seed, epoch)` only: the same on every process and for any
  number of devices, so that a run resumed at any step sees the same batches.

  Args:
    seed: the run's data seed, >= 0.
    epoch: the epoch, >= 0.
    num_examples: the examples in the split.

  Returns:
    A permutation of `range(num_examples)`, int64.
  """
  for name, value in (("seed", seed), ("epoch", epoch),
                      ("num_examples", num_examples)):
    if int(value) != value or value < 0:
      raise DataError(f"{name} must be an integer >= 0, got {value!r}.")
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(int(num_examples))


def check_global_batch_size(global_batch_size: int, *, process_count: int = 1,
                            local_device_count: int = 1) -> None:
  """Raises a DataError unless the batch splits over processes and devices.

  Args:
    global_batch_size: the examples in a step, over all processes.
    process_count: the number of processes (hosts).
    local_device_count: the number of devices of each process.
  """
  _check_positive("global_batch_size", global_batch_size)
  _check_positive("process_count", process_count)
  _check_positive("local_device_count", local_device_count)
  parts = process_count * local_device_count
  if global_batch_size % parts:
    raise DataError(
        f"The global batch size {global_batch_size} is not divisible by "
        f"{process_count} process(es) x {local_device_count} device(s) = "
        f"{parts}; use a multiple of {parts}, e.g. "
        f"{max(parts, global_batch_size // parts * parts)}.")


def train_batches(split: Split, global_batch_size: int, *, seed: int,
                  epoch: int, start_step: int = 0, drop_remainder: bool = False,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[Batch]:
  """This process's share of each training batch of one epoch.

  Args:
    split: the training split.
    global_batch_size: the examples in a step, over all processes.
    seed: the data seed; with `epoch` it fixes the permutation.
    epoch: the epoch (0, 1, ...).
    start_step: the first step to yield, to resume inside an epoch.
    drop_remainder: drop the last, partial batch instead of padding it.
    process_index: this process's index, in `[0, process_count)`.
    process_count: the number of processes sharing each global batch.

  Returns:
    An iterator over the batches of steps `start_step, ...,
    steps_per_epoch - 1` (dicts described in the module docstring); arguments
    are checked when it is created.
  """
  num_steps = steps_per_epoch(split.num_examples, global_batch_size,
                              drop_remainder)
  positions = process_positions(global_batch_size, process_index,
                                 process_count)
  if int(start_step) != start_step or not 0 <= start_step <= num_steps:
    raise DataError(f"start_step must be an integer in [0, {num_steps}] (the "
                    f"steps of an epoch), got {start_step!r}.")
  order = epoch_permutation(seed, epoch, split.num_examples)
  return _batches(split, order, global_batch_size, positions,
                  range(int(start_step), num_steps))


def eval_batches(split: Split, global_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[Batch]:
  """This process's share of batches covering every example once, in order.

  Args:
    split: the split to evaluate.
    global_batch_size: the examples in a step, over all processes.
    process_index: this process's index, in `[0, process_count)`.
    process_count: the number of processes sharing each global batch.

  Returns:
    An iterator over `ceil(num_examples / global_batch_size)` batches; the
    last one is padded (mask False) to full size.
  """
  num_steps = steps_per_epoch(split.num_examples, global_batch_size,
                              drop_remainder=False)
  positions = process_positions(global_batch_size, process_index,
                                 process_count)
  order = np.arange(split.num_examples)
  return _batches(split, order, global_batch_size, positions, range(num_steps))


def shard_for_devices(batch: Batch, num_devices: int) -> Batch:
  """Splits each array's leading axis into `(num_devices, per_device)`.

  Args:
    batch: arrays with the same leading size `B_local`.
    num_devices: this process's number of devices.

  Returns:
    The arrays reshaped to `(num_devices, B_local // num_devices, ...)`, views
    of the inputs when they are numpy arrays.
  """
  _check_positive("num_devices", num_devices)
  sharded = {}
  for name, array in batch.items():
    size = array.shape[0]
    if size % num_devices:
      raise DataError(
          f"Cannot shard a batch of {size} examples ('{name}') over "
          f"{num_devices} devices: {size} is not divisible by {num_devices}. "
          "Use a global batch size divisible by process_count x "
          "local_device_count.")
    sharded[name] = array.reshape(num_devices, size // num_devices,
                                  *array.shape[1:])
  return sharded


def _check_positive(name: str, value: int) -> None:
  if int(value) != value or value < 1:
    raise DataError(f"{name} must be a positive integer, got {value!r}.")


def process_positions(global_batch_size: int, process_index: int,
                       process_count: int) -> np.ndarray:
  """The slots of the global batch that belong to this process."""
  check_global_batch_size(global_batch_size, process_count=process_count)
  if int(process_index) != process_index or not (
      0 <= process_index < process_count):
    raise DataError(f"process_index must be in [0, {process_count}), got "
                    f"{process_index!r}.")
  local_batch_size = global_batch_size // process_count
  start = int(process_index) * local_batch_size
  return np.arange(start, start + local_batch_size, dtype=np.int32)


def _batches(split: Split, order: np.ndarray, global_batch_size: int,
             positions: np.ndarray, steps: range) -> Iterator[Batch]:
  """Yields the batch of each step: `order`'s examples at `positions`."""
  for step in steps:
    batch_indices = order[step * global_batch_size:
                          (step + 1) * global_batch_size]
    yield gather_batch(split, batch_indices, positions)


def gather_batch(split: Split, batch_indices: np.ndarray,
                 positions: np.ndarray) -> Batch:
  """One process's share of a global batch, padded to `len(positions)`.

  Args:
    split: the split to read.
    batch_indices: the examples of the global batch, in slot order; fewer
      than the global batch size for a last, partial batch.
    positions: the contiguous, increasing slots of this process.

  Returns:
    The batch dict (see the module docstring).
  """
  mask = positions < len(batch_indices)
  indices = batch_indices[positions[mask]]
  if mask.all():
    images, labels = split.images[indices], split.labels[indices]
  else:  # The real examples are a prefix: the positions are contiguous.
    images = np.zeros((len(positions), *split.images.shape[1:]), np.uint8)
    labels = np.zeros((len(positions),), np.int32)
    images[:len(indices)] = split.images[indices]
    labels[:len(indices)] = split.labels[indices]
  return {"image": images, "label": labels, "mask": mask,
          "position": positions.copy()}
