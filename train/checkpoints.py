"""Orbax checkpoints of the whole train state, with the config they were made with.

A checkpoint holds the step, the parameters, the BatchNorm statistics, the
optimizer state (with LCAM's momentum, pending beta and loss statistics), the
run's PRNG key and the epoch's running sums, plus the config as JSON. Orbax
writes each checkpoint into a temporary directory and renames it when
complete, so a run killed while saving leaves the previous checkpoint usable.
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Config fields a run cannot change when it resumes: they change the shapes of
# the state or which batches the remaining steps see.
RESUME_INVARIANT_FIELDS = (
    "seed", "data.source", "data.drop_remainder", "batch_size", "model.name",
    "optimizer.name", "optimizer.averaging",
)


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint of a run with another config."""


def _lookup(config: dict[str, Any], dotted: str) -> Any:
  for key in dotted.split("."):
    if not isinstance(config, dict) or key not in config:
      return None
    config = config[key]
  return config


def check_compatible(saved_config: dict[str, Any],
                     config: ml_collections.ConfigDict,
                     directory: str) -> None:
  """Raises `IncompatibleCheckpointError` if ``config`` cannot resume ``saved_config``."""
  current = config.to_dict()
  differences = [
      f"{field}: checkpoint {_lookup(saved_config, field)!r}, "
      f"config {_lookup(current, field)!r}"
      for field in RESUME_INVARIANT_FIELDS
      if _lookup(saved_config, field) != _lookup(current, field)]
  if differences:
    raise IncompatibleCheckpointError(
        f"The checkpoints in {directory} come from a run with another config ("
        + "; ".join(differences) + "). Use a new --workdir for a new run, or "
        "the original config to resume this one.")


def to_host(tree: Any) -> Any:
  """Copies every array of ``tree`` to host memory (one replica of each)."""
  def leaf_to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(leaf_to_host, tree)


class Checkpointer:
  """Saves and restores the train state in ``directory``, keeping the last few.

  Every process must call `save` and `restore_latest` (Orbax synchronises
  them); only the primary process writes the files of replicated arrays.
  """

  def __init__(self, directory: str, config: ml_collections.ConfigDict, *,
               keep: int = 3):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: Where the checkpoints go (a workdir's ``checkpoints``).
      config: The run's config, saved with every checkpoint and compared with
        that of the checkpoint resumed.
      keep: How many of the latest checkpoints to keep; 0 keeps all.
    """
    self._directory = os.path.abspath(directory)
    self._config = config
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep or None,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(self, template: Any) -> Any:
    """The state of the latest checkpoint, or ``template`` when there is none.

    Args:
      template: A state of the right structure, shapes and dtypes (a freshly
        initialised one); its non-array fields are kept.

    Raises:
      IncompatibleCheckpointError: the checkpoint's config differs in a field
        of `RESUME_INVARIANT_FIELDS`, or its arrays do not fit ``template``.
    """
    step = self._manager.latest_step()
    if step is None:
      return template
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_compatible(meta["config"], self._config, self._directory)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(to_host(template))))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise IncompatibleCheckpointError(
          f"The checkpoint of step {step} in {self._directory} does not fit "
          f"this run's state ({e}). Use a new --workdir for a new run.") from e
    return restored

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as the checkpoint of ``step`` (once per step)."""
    if self._manager.latest_step() == step:
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_host(state)),
        meta=ocp.args.JsonSave({"step": step,
                                "config": self._config.to_dict()})))

  def close(self) -> None:
    """Waits for pending saves to finish and closes the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
