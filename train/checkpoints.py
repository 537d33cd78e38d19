"""Orbax checkpoints of the whole train state, with what the run depends on.

A checkpoint ``WORKDIR/checkpoints/<step>/`` holds the train state in
``state/`` (step, parameters, BatchNorm statistics, optimizer state with
LCAM's momentum and loss statistics, the run's PRNG key, the epoch's running
sums) and, in ``meta/``, the config and the facts the optimizer depends on
(steps per epoch, number of training examples). Orbax saves the device
arrays as they are: the training thread waits only for their copy to host
memory, the files are written in the background. Each checkpoint is written
into a temporary directory and renamed when complete, so a run killed while
saving leaves the previous checkpoint usable.
"""

import os
from typing import Any

from flax import traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Config fields a run cannot change when it resumes: they change the shapes of
# the state or which batches the remaining steps see.
RESUME_INVARIANT_FIELDS = (
    "seed", "data.source", "data.drop_remainder", "data.validation_examples",
    "batch_size", "model.name",
    "optimizer.name", "optimizer.averaging", "optimizer.loss_control",
    "optimizer.phases",
)


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint of a run with another config or data."""


def check_compatible(saved: dict[str, Any], current: dict[str, Any],
                     directory: str) -> None:
  """Raises `IncompatibleCheckpointError` unless ``current`` can resume ``saved``.

  Args:
    saved: A checkpoint's meta data: ``config`` and the run's facts.
    current: The same for this run.
    directory: The checkpoints' directory, for the message.
  """
  saved, current = (traverse_util.flatten_dict(meta, sep=".")
                    for meta in (saved, current))
  # A field or fact an older checkpoint does not record cannot have changed.
  invariants = [f"config.{field}" for field in RESUME_INVARIANT_FIELDS]
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


def abstract_state(state: Any) -> Any:
  """``state`` as shapes, dtypes and shardings, to restore into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      state)


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
  """

  def __init__(self, directory: str, config: ml_collections.ConfigDict, *,
               keep: int = 3, facts: dict[str, Any] | None = None):
    self._directory = os.path.abspath(directory)
    self._meta = {"config": config.to_dict(), **(facts or {})}
    # One process writes every array whole: splitting replicated arrays
    # into slices for several processes to write costs a slice per device.
    arrays = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=jax.process_count() > 1)
    self._manager = ocp.CheckpointManager(
        self._directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(
                type_handler_registry=ocp.type_handlers
                .create_type_handler_registry((jax.Array, arrays))),
            "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, state: Any) -> tuple[Any, dict[str, Any]]:
    """The latest checkpoint's state and meta data, or ``(state, {})``.

    Args:
      state: A state of the right structure (a fresh one). Its arrays'
        shapes, dtypes and shardings are those restored.

    Raises:
      IncompatibleCheckpointError: the checkpoint's config differs in a field
        of `RESUME_INVARIANT_FIELDS`, its facts differ, or its arrays do not
        fit ``state``.
    """
    step = self._manager.latest_step()
    if step is None:
      return state, {}
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_compatible(meta, self._meta, self._directory)
    target = abstract_state(state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(
                  target))))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise IncompatibleCheckpointError(
          f"The checkpoint of step {step} in {self._directory} does not fit "
          f"this run's state ({e}). Use a new --workdir for a new run.") from e
    return restored, meta

  def save(self, step: int, state: Any, **meta: Any) -> None:
    """Starts saving ``state`` as the checkpoint of ``step`` (once per step).

    The call returns once the arrays are copied to host memory; the files
    are written in the background. ``meta`` (JSON values) is saved beside.
    """
    if self._manager.latest_step() == step:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(jax.tree.map(_global_array, state)),
        meta=ocp.args.JsonSave({"step": step, **self._meta, **meta})))

  def close(self) -> None:
    """Waits for the saves in flight and closes the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def load_state(workdir: str, step: int | None = None) -> dict[str, Any]:
  """A checkpoint's whole train state as nested dicts of numpy arrays.

  Needs neither the config nor the devices of the run that saved it.

  Args:
    workdir: A training workdir.
    step: The checkpoint's step; the latest when None.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    metadata = manager.item_metadata(step)["state"]
    as_numpy = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), metadata)
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(as_numpy)))["state"]


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
