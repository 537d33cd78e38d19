"""Orbax checkpoints of the whole train state, with what the run depends on.

A checkpoint ``WORKDIR/checkpoints/<step>/`` holds the train state in
``state/`` (step, parameters, BatchNorm statistics, optimizer state with
LCAM's momentum and loss statistics, the run's PRNG key) and, in ``meta/``,
the config, the facts the optimizer depends on (steps per epoch, number of
training examples) and what the loop saves (the epoch's running sums and
time so far). Orbax saves the device arrays as they are: the training thread
waits only for their copy to host memory, the files are written in the
background. Each checkpoint is written into a temporary directory and
renamed when complete, so a run killed while saving leaves the previous
checkpoint usable.

Each checkpoint also holds the size and SHA-256 of every file of its items
(`train.checksums`), which restoring verifies first. A checkpoint that fails,
or that cannot be read, is moved into ``checkpoints/corrupt/`` and the next
older one is tried; a checkpoint without checksums (written before they
existed) is used with a warning.
"""

import errno
import os
import re
import shutil
from typing import Any

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from train import checksums
from train import config as config_lib
from train import record

CORRUPT_DIRNAME = "corrupt"
# What Orbax adds to a checkpoint being written, until it commits it.
_TMP_SUFFIX = ocp.step.TMP_DIR_SUFFIX


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint of a run with another config or data."""


class DamagedCheckpointError(RuntimeError):
  """A checkpoint fails its checksums or cannot be read."""


def verify_checksums(step_dir: str) -> bool:
  """`checksums.verify` of a checkpoint, whose errors are a
  `DamagedCheckpointError` or (a newer format) `IncompatibleCheckpointError`."""
  try:
    return checksums.verify(step_dir)
  except checksums.NewerFormatError as e:
    raise IncompatibleCheckpointError(str(e)) from e
  except checksums.ChecksumError as e:
    raise DamagedCheckpointError(str(e)) from e


def set_aside(step_dir: str) -> str:
  """Moves a damaged checkpoint into ``corrupt/`` beside it, under a name
  that Orbax does not take for a step; returns where it went."""
  corrupt = os.path.join(os.path.dirname(step_dir), CORRUPT_DIRNAME)
  os.makedirs(corrupt, exist_ok=True)
  name, number = os.path.basename(step_dir), 0
  target = os.path.join(corrupt, name)
  while os.path.exists(target):
    number += 1
    target = os.path.join(corrupt, f"{name}-{number}")
  os.replace(step_dir, target)
  return target


def check_compatible(saved: dict[str, Any], current: dict[str, Any],
                     directory: str) -> None:
  """Raises `IncompatibleCheckpointError` unless ``current`` resumes ``saved``.

  Args:
    saved: A checkpoint's meta data: ``config`` and the run's facts.
    current: The same for this run.
    directory: The checkpoints' directory, for the message.
  """
  saved, current = (traverse_util.flatten_dict(meta, sep=".")
                    for meta in (saved, current))
  # A field or fact an older checkpoint does not record cannot have changed.
  invariants = [f"config.{field}"
                for field in config_lib.RESUME_INVARIANT_FIELDS]
  facts = [name for name in current if not name.startswith("config.")]
  fields = [name for name in invariants + facts if name in saved]
  differences = [f"{field.removeprefix('config.')}: checkpoint "
                 f"{saved.get(field)!r}, this run {current.get(field)!r}"
                 for field in fields if saved.get(field) != current.get(field)]
  if differences:
    raise IncompatibleCheckpointError(
        f"The checkpoints in {directory} come from another run ("
        + "; ".join(differences) + "). Use a new --workdir for a new run, or "
        "the original config and data to resume this one.")


def _global_array(x: Any) -> Any:
  """A pmap output as a global array, which Orbax can save from several
  processes: the same buffers (a copy on each of this process's devices)."""
  if jax.process_count() == 1 or not getattr(x, "is_fully_addressable", False):
    return x
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",)),
      jax.sharding.PartitionSpec())
  return jax.make_array_from_single_device_arrays(
      x.shape, sharding, [shard.data for shard in x.addressable_shards])


class Checkpointer:
  """Saves the train state in ``directory`` and restores the latest one.

  Every process must call `save` and `restore_latest` (Orbax synchronises
  them); only the primary process writes the files of replicated arrays.

  Args:
    directory: Where the checkpoints go (a workdir's ``checkpoints``).
    config: The run's config, saved with every checkpoint and compared with
      that of the checkpoint resumed.
    keep: How many of the latest checkpoints to keep; 0 keeps all.
    facts: What else the run depends on (e.g. ``steps_per_epoch``), saved
      and compared likewise.
    moved_to_meta: Entries of the state that older checkpoints hold and
      this run keeps in the meta data instead: such a checkpoint's entries
      are read into its meta data, as numpy arrays.
  """

  def __init__(self, directory: str, config: ml_collections.ConfigDict, *,
               keep: int = 3, facts: dict[str, Any] | None = None,
               moved_to_meta: tuple[str, ...] = (), read_only: bool = False):
    self._directory = os.path.abspath(directory)
    self._read_only = read_only
    self._meta = {"config": config.to_dict(), **(facts or {})}
    self._moved_to_meta = moved_to_meta
    self._step_in_flight = None
    # One process writes every array whole: splitting replicated arrays
    # into slices for several processes to write costs a slice per device.
    arrays = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=jax.process_count() > 1)
    self._manager = ocp.CheckpointManager(
        self._directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=not read_only,
            read_only=read_only,
            async_options=ocp.AsyncOptions(
                post_finalization_callback=self._write_checksums)),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(
                type_handler_registry=ocp.type_handlers
                .create_type_handler_registry((jax.Array, arrays))),
            "meta": ocp.JsonCheckpointHandler()})

  def _step_dir(self, step: int) -> str:
    return os.path.join(self._directory, str(step))

  def _write_checksums(self) -> None:
    """Orbax's background thread calls this (on the primary process) once
    the files of the save in flight are written, before it commits them."""
    step_dir = self._step_dir(self._step_in_flight)
    uncommitted = step_dir + _TMP_SUFFIX
    checksums.write(uncommitted if os.path.isdir(uncommitted) else step_dir)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, state: Any) -> tuple[Any, dict[str, Any]]:
    """The latest intact checkpoint's state and meta data, or ``(state, {})``.

    Checkpoints that fail their checksums or cannot be read are moved into
    ``corrupt/`` once an older intact one is found (one warning line names
    them and the one restored); when none is intact, none is moved. A
    ``read_only`` checkpointer moves nothing: it only skips them.

    Args:
      state: A state of the right structure (a fresh one). Its arrays'
        shapes, dtypes and shardings are those restored.

    Raises:
      IncompatibleCheckpointError: the checkpoint's config differs in a field
        of `train.config.RESUME_INVARIANT_FIELDS`, its facts differ, or its
        arrays do not fit ``state``.
      DamagedCheckpointError: no checkpoint is intact.
    """
    # Shapes, dtypes and shardings to restore into.
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored, meta, verified = self._restore(step, target)
      except DamagedCheckpointError as e:
        damaged.append((step, e))
        continue
      unverified = "" if verified else (
          f"the checkpoint of step {step} in {self._directory} has no "
          "checksums (it was written before they existed): resuming from "
          "it unverified")
      if damaged and self._read_only:
        logging.warning("Damaged checkpoint%s in %s, left in place: %s; "
                        "reading step %d%s.", "s" if len(damaged) > 1 else "",
                        self._directory, "; ".join(
                            f"step {s} ({e})" for s, e in damaged), step,
                        f" ({unverified})" if unverified else "")
      elif damaged:
        logging.warning("%s; resuming from step %d%s.",
                        self._set_aside(damaged), step,
                        f" ({unverified})" if unverified else "")
      elif unverified:
        logging.warning("The %s.", unverified.removeprefix("the "))
      return restored, meta
    if damaged:
      raise DamagedCheckpointError(
          f"No intact checkpoint in {self._directory}: " + "; ".join(
              f"step {step}: {e}" for step, e in damaged) + ". Move the "
          "checkpoints away to start the run again from step 0.")
    return state, {}

  def _restore(self, step: int, target: Any) -> tuple[Any, dict, bool]:
    """One checkpoint's state and meta data, and whether it was verified.

    Raises:
      DamagedCheckpointError, IncompatibleCheckpointError.
    """
    verified = verify_checksums(self._step_dir(step))
    try:
      meta = self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"its meta data is unreadable ({_summary(e)})") from e
    check_compatible(meta, self._meta, self._directory)
    try:
      moved = self._moved_entries(step)
      restored = self._read_state(step, target, partial=bool(moved))
      if moved:
        meta.update(jax.device_get(self._read_state(step, moved,
                                                    partial=True)))
    except (ValueError, KeyError, TypeError) as e:
      if _is_damage(e):
        raise DamagedCheckpointError(
            f"its state is unreadable ({_summary(e)})") from e
      raise IncompatibleCheckpointError(
          f"The checkpoint of step {step} in {self._directory} does not "
          f"fit this run's state ({e}). Use a new --workdir for a new "
          "run.") from e
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"its state is unreadable ({_summary(e)})") from e
    return restored, meta, verified

  def _read_state(self, step: int, target: Any, partial: bool) -> Any:
    """The arrays of ``target`` (all of the state, unless ``partial``)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            target, partial_restore=partial,
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                target))))["state"]

  def _moved_entries(self, step: int) -> dict[str, Any]:
    """The entries of ``moved_to_meta`` that the checkpoint's state holds
    (it is older), as arrays on this process's first device to read them
    into."""
    if not self._moved_to_meta:
      return {}
    saved = self._manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return {name: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        saved[name]) for name in self._moved_to_meta if name in saved}

  def _set_aside(self, damaged: list) -> str:
    """Moves damaged checkpoints into ``corrupt/``; says what it did."""
    if jax.process_count() > 1:  # Every process is done reading them.
      multihost_utils.sync_global_devices("checkpoints: before set aside")
    moved = []
    for step, error in damaged:
      where = (set_aside(self._step_dir(step)) if jax.process_index() == 0
               else os.path.join(self._directory, CORRUPT_DIRNAME))
      moved.append(f"step {step} ({error}) moved to {where}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints: after set aside")
    self._manager.reload()
    return (f"Damaged checkpoint{'s' if len(moved) > 1 else ''} in "
            f"{self._directory}: " + "; ".join(moved))

  def save(self, step: int, state: Any, **meta: Any) -> None:
    """Starts saving ``state`` as the checkpoint of ``step`` (once per step).

    The call returns once the arrays are copied to host memory; the files
    are written, and their checksums computed, in the background. ``meta``
    (JSON values) is saved beside.
    """
    if self._manager.latest_step() == step:
      return
    # Orbax would wait here too: one save at a time.
    self._manager.wait_until_finished()
    self._step_in_flight = step
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(jax.tree.map(_global_array, state)),
        meta=ocp.args.JsonSave({"step": step, **self._meta, **meta})))

  def close(self) -> None:
    """Waits for the saves in flight and closes the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _is_damage(error: Exception) -> bool:
  """Whether a ValueError of Orbax's reading says the bytes are bad (for
  checkpoints without checksums), rather than that the state differs."""
  return isinstance(error, UnicodeDecodeError) or "DATA_LOSS" in str(error)


def _summary(error: Exception, length: int = 100) -> str:
  """The start of an error's first line (TensorStore's run long)."""
  lines = str(error).strip().splitlines()
  text = (lines[0] if lines else type(error).__name__).split(" See full")[0]
  return text if len(text) <= length else text[:length - 3] + "..."


def committed_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in ``directory``, ascending."""
  return sorted(ocp.utils.checkpoint_steps(directory))


def _chain(error: BaseException | None):
  """``error`` and the errors it was raised from or while handling."""
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def disk_full_message(workdir: str, error: BaseException) -> str | None:
  """What a full disk stopped, in one line; None if ``error`` is another.

  Orbax raises a full disk as TensorStore's ``RESOURCE_EXHAUSTED``
  ValueError, Python as an OSError of errno ENOSPC; either may be the cause
  or context of what the run raised.

  Args:
    workdir: The run's directory.
    error: What the run raised.
  """
  if not any((isinstance(e, OSError) and e.errno == errno.ENOSPC)
             or "No space left on device" in str(e) for e in _chain(error)):
    return None
  in_flight = re.search(r"checkpoints/(\d+)" + re.escape(_TMP_SUFFIX),
                        str(error) + str(getattr(error, "filename", "")))
  filename = next((e.filename for e in _chain(error)
                   if getattr(e, "filename", None)), None)
  if in_flight:
    what = f"the checkpoint of step {in_flight.group(1)}"
  else:
    what = filename or workdir
  steps = committed_steps(os.path.join(workdir, record.CHECKPOINTS_DIRNAME))
  previous = (f"the checkpoint of step {steps[-1]} is intact" if steps else
              "no checkpoint was saved before")
  existing = workdir
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  free = (f"{free / 2**20:.1f} MiB" if free >= 2**20 else
          f"{free / 2**10:.0f} KiB")
  return (f"No space left on the device of {workdir} ({free} free) while "
          f"writing {what}; {previous}. Free some space and run the same "
          "command to resume.")


def load_state(workdir: str, step: int | None = None) -> dict[str, Any]:
  """A checkpoint's whole train state as nested dicts of numpy arrays.

  Needs neither the config nor the devices of the run that saved it.

  Args:
    workdir: A training workdir.
    step: The checkpoint's step; the latest when None.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint.
    DamagedCheckpointError: the checkpoint fails its checksums or cannot be
      read (it is left where it is).
  """
  directory = os.path.abspath(
      os.path.join(workdir, record.CHECKPOINTS_DIRNAME))
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    step_dir = os.path.join(directory, str(step))
    try:
      if not verify_checksums(step_dir):
        logging.warning("The checkpoint %s has no checksums (it was written "
                        "before they existed): read unverified.", step_dir)
      metadata = manager.item_metadata(step)["state"]
      as_numpy = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), metadata)
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(as_numpy)))["state"]
    except DamagedCheckpointError as e:
      raise DamagedCheckpointError(
          f"The checkpoint {step_dir} is damaged: {e}.") from e
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"The checkpoint {step_dir} is unreadable: {_summary(e)}.") from e


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
  """The model variables of a workdir's checkpoint, for ``model.apply``.

  Example (in a notebook)::

    variables = checkpoints.load_variables("runs/c10")
    model = models.create_model("wrn-28-10", num_classes=10)
    logits = model.apply(variables, images, train=False)

  Returns:
    ``{"params": ..., "batch_stats": ...}`` of numpy arrays.
  """
  state = load_state(workdir, step)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}

