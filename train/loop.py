"""Trains and evaluates a model with LCAM (or SGD, AdamW) on one task.

`train_and_evaluate` sets a run up once (`set_up_training`: the task's data
(`train.tasks`), the steps of `train.steps` wrapped for the devices,
checkpoints) and runs one loop over the steps, which logs, saves, evaluates
at an epoch's end and stops on a signal (`_train`). The loop is the same for
every task: Wide-ResNets on CIFAR-style images, GPTs on a character corpus.
"""

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from train import checkpoints
from train import config as config_lib
from train import data
from train import devices
from train import optimizers
from train import progress as progress_lib
from train import provenance
from train import record
from train import signals
from train import steps
from train import tasks


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
  """SIGINT or SIGTERM stopped training; a checkpoint of the step is saved."""

  def __init__(self, signum: int, step: int, total_steps: int):
    self.signum = signum
    super().__init__(
        f"Training stopped at step {step} of {total_steps} "
        f"({signal.Signals(signum).name}); its checkpoint is saved, and the "
        "same command resumes the run.")


def evaluate(parallel: steps.ParallelSteps, state, split, config:
             ml_collections.ConfigDict, prefix: str = "test",
             task: tasks.Task | None = None) -> dict[str, float]:
  """Exact measures on every example (or character) of ``split``.

  ``task`` defaults to ``config.task``'s (`train.tasks.create_task`).

  Returns:
    The task's fields for the split, e.g. ``{split_field(prefix, "loss"),
    split_field(prefix, "accuracy")}`` (`train.record.split_field`).
  """
  task = task or tasks.create_task(config)
  totals = None
  for batch in task.eval_batches(config, split,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    sums = parallel.eval_step(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return task.eval_fields(jax.device_get(totals), prefix)


# -----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """What a run builds once: its config, task, data, wrapped steps and
  checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  train_split: data.Split | data.TextSplit  # without validation examples
  test_split: data.Split | data.TextSplit | None  # None: never evaluated
  steps_per_epoch: int
  parallel: steps.ParallelSteps
  checkpointer: checkpoints.Checkpointer
  # The validation split (of a text, or the training examples held out by
  # config.data.validation_examples), if any.
  validation_split: data.Split | data.TextSplit | None = None
  # `train.provenance`
  provenance: dict = dataclasses.field(default_factory=dict)

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.num_epochs

  @property
  def stop_step(self) -> int:
    """Where this invocation stops: the end, or ``config.stop_after_steps``."""
    return min(self.total_steps, self.config.stop_after_steps or
               self.total_steps)

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0

  def batches(self, step: int):
    """This process's batches from global step ``step`` to the stop step."""

    def epoch_batches(epoch):
      return self.task.train_batches(
          self.config, self.train_split, epoch=epoch,
          start_step=max(step - epoch * self.steps_per_epoch, 0),
          process_index=jax.process_index(),
          process_count=jax.process_count())

    epochs = itertools.count(step // self.steps_per_epoch)
    return itertools.islice(
        itertools.chain.from_iterable(map(epoch_batches, epochs)),
        self.stop_step - step)


def set_up_training(config: ml_collections.ConfigDict, workdir: str, *,
                    test_split: bool = False, read_only: bool = False
                    ) -> tuple[TrainingSetup, steps.TrainState, dict]:
  """Loads the data, builds the steps and restores the latest checkpoint.

  Args:
    config: A validated training config.
    workdir: The run's directory.
    test_split: Whether to load the test split even if the config never
      evaluates.
    read_only: Whether to leave the workdir as it is (`train.evaluate`):
      damaged checkpoints are skipped, not set aside.

  The task (`train.tasks`) loads the splits: for images, with
  ``config.data.validation_examples`` K > 0, K examples of the training split
  are held out of training (`data.hold_out`) and evaluated like the test
  split; a text has its own validation split.

  Returns:
    The set-up; its state on the devices (restored, or fresh when the
    workdir has no checkpoint); the checkpoint's meta data (``{}`` without
    one).

  Raises:
    config_lib.ConfigError, data.DataError,
    checkpoints.IncompatibleCheckpointError,
    checkpoints.DamagedCheckpointError.
  """
  task = tasks.create_task(config)
  train_split, validation_split, test, loaded = task.load_splits(
      config, test=test_split or bool(config.eval_every_epochs
                                      and config.data.eval_test))
  config_lib.validate(config, train_examples=train_split.num_examples)
  steps_per_epoch = task.steps_per_epoch(config, train_split)
  parallel, state = steps.create_steps_and_state(config, train_split,
                                                 steps_per_epoch)
  checkpointer = checkpoints.Checkpointer(
      os.path.join(workdir, record.CHECKPOINTS_DIRNAME), config,
      keep=config.keep_checkpoints,
      facts={"steps_per_epoch": steps_per_epoch,
             "num_train_examples": train_split.num_examples},
      moved_to_meta=("epoch_sums",), read_only=read_only)
  try:
    state, meta = checkpointer.restore_latest(parallel.put_state(state))
    facts = provenance.provenance(config.data.source, list(loaded))
  except BaseException:
    checkpointer.close()
    raise
  return TrainingSetup(config, workdir, task, train_split, test,
                       steps_per_epoch, parallel, checkpointer,
                       validation_split, facts), state, meta


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> steps.TrainState:
  """Trains (or resumes training) per ``config``, writing into ``workdir``.

  Writes ``config.json``, ``metrics.jsonl``, TensorBoard events and Orbax
  checkpoints; re-running on the same workdir resumes from the latest
  checkpoint with the same remaining batches, and does nothing when the run
  is complete. SIGINT (Ctrl-C) or SIGTERM stops training after the step in
  flight, with a checkpoint of that step. One run at a time holds the
  workdir (`devices.hold_workdir`).

  Args:
    config: A training config (see ``train/configs/default.py``).
    workdir: Directory for the outputs.

  Returns:
    The final train state (replicated over the devices).

  Raises:
    TrainingInterrupted: after a signal, once the checkpoint is saved.
    NonFiniteLossError: with ``on_nonfinite_loss="stop"``.
    devices.WorkdirBusyError: another run holds ``workdir``.
  """
  config_lib.validate(config)
  devices.maybe_initialize_distributed(config.distributed)
  run_start = time.perf_counter()
  with devices.hold_workdir(workdir), signals.StopOnSignals() as stop:
    config_lib.validate(config, jax.device_count())
    setup, state, meta = set_up_training(config, workdir)
    with contextlib.closing(setup.checkpointer):
      return _train(setup, state, meta, stop, run_start)


def _train(setup: TrainingSetup, state: steps.TrainState, meta: dict,
           stop: signals.StopOnSignals, run_start: float
           ) -> steps.TrainState:
  """The loop: trains from the state's step to the stop step.

  The step metrics stay on the devices until a logged step (every
  ``log_every_steps``, an epoch's end, a checkpoint, a signal), so the host
  does not wait for every step. There the host checks their losses, adds
  them to the epoch's sums and logs the last. The sums, and the time the
  epoch has taken, are saved with each checkpoint, so a run resumed inside
  an epoch logs the same epoch record.
  """
  config, parallel, spe = setup.config, setup.parallel, setup.steps_per_epoch
  start = int(state.step)
  if setup.is_chief:  # Written again at every start: a lost one comes back.
    os.makedirs(setup.workdir, exist_ok=True)
    with open(os.path.join(setup.workdir, record.CONFIG_FILENAME), "w") as f:
      f.write(config.to_json(indent=2))
  if start and start % spe == 0 and _epoch_record_missing(setup, start):
    _write_epoch_record_again(setup, state, meta)
  if start >= setup.stop_step:
    logging.info("The run in %s is %s: nothing to do.", setup.workdir,
                 f"complete (step {start} of {setup.total_steps})"
                 if start >= setup.total_steps else
                 f"at step {start}, where config.stop_after_steps stops it")
    return state
  if setup.is_chief:
    logging.info("%s at step %d of %d (%d steps per epoch), %d devices",
                 "Resuming" if start else "Starting", start,
                 setup.total_steps, spe, jax.device_count())
  progress = progress_lib.Progress(
      spe, enabled=setup.is_chief and config.progress)
  # Inside an epoch: its sums and time before the checkpoint.
  sums = _epoch_sums(meta.get("epoch_sums"))
  epoch_start = time.perf_counter() - meta.get("epoch_elapsed_s", 0.0)
  pending, clock = [], None
  with record.MetricWriter(setup.workdir, enabled=setup.is_chief,
                           resume_step=start) as writer:
    try:
      for step, batch in zip(range(start + 1, setup.stop_step + 1),
                             setup.batches(start)):
        if (step - 1) % spe == 0:  # An epoch starts.
          sums, epoch_start = _epoch_sums(), time.perf_counter()
        if (step - 1) % spe == 0 or step == start + 1:
          progress.start_epoch((step - 1) // spe + 1, (step - 1) % spe)
          clock = None
        state, metrics = parallel.train_step(state, parallel.put_batch(batch))
        pending.append((step, metrics))
        if clock is None:  # The epoch's first step, which may compile.
          jax.block_until_ready(metrics)
          clock = (time.perf_counter(), step)
          if run_start is not None:
            writer.write(record.RUN_KIND, step, {
                record.TIME_TO_FIRST_STEP_S: clock[0] - run_start,
                **setup.provenance})
            run_start = None
        end_of_epoch = step % spe == 0
        save = (end_of_epoch or step == setup.stop_step
                or _every(step, config.checkpoint_every_steps))
        log = save or _every(step, config.log_every_steps)
        signum = _stop_signal(stop, synced=log)
        if log or signum:
          fetched, pending = jax.device_get(pending), []
          for done, values in fetched:
            if np.isfinite(values["loss"]):
              sums = _add_step(sums, values)
              continue
            message = (f"The training loss is {values['loss']} at step {done} "
                       f"(epoch {(done - 1) // spe + 1}).")
            if config.on_nonfinite_loss == "skip":
              logging.warning("%s The step's update was skipped.", message)
              continue
            writer.write(record.TRAIN_KIND, done, record.train_fields(
                done, values, spe, _throughput(clock, done, setup)))
            # The run's outcome, for a study: diverged, not failed.
            writer.write(record.DIVERGED_KIND, done, {record.EPOCH: done / spe})
            raise NonFiniteLossError(
                f"{message} Training stopped; the last checkpoint before it "
                "is kept. Lower the learning rate, or set "
                "--config.on_nonfinite_loss=skip to skip such steps.")
          logged = record.train_fields(step, fetched[-1][1], spe,
                                       _throughput(clock, step, setup))
          writer.write(record.TRAIN_KIND, step, logged)
          progress.update((step - 1) % spe + 1, {
              k: logged[k] for k in ("loss", "beta", record.IMAGES_PER_SEC,
                                     record.TOKENS_PER_SEC) if k in logged})
        if end_of_epoch:
          progress.end_epoch()
          epoch = step // spe
          epoch_record = record.epoch_fields(
              epoch, sums, optimizers.controlled_names(config.optimizer),
              time.perf_counter() - epoch_start)
          epoch_record.update(_evaluations(setup, state, step))
          writer.write(record.EPOCH_KIND, step, epoch_record)
          logging.info("epoch %d: %s", epoch, json.dumps(epoch_record))
        if save or signum:
          setup.checkpointer.save(
              step, state, epoch_sums=_json_sums(sums), epoch_elapsed_s=(
                  0.0 if end_of_epoch else time.perf_counter() - epoch_start))
        if signum and step < setup.stop_step:
          raise TrainingInterrupted(signum, step, setup.total_steps)
    finally:
      progress.end_epoch()
  return state


def _evaluations(setup: TrainingSetup, state: steps.TrainState,
                 step: int) -> dict[str, float]:
  """The evaluations due at the end of the epoch that ends at ``step``."""
  every, epoch = setup.config.eval_every_epochs, step // setup.steps_per_epoch
  if not every or (epoch % every and step != setup.total_steps):
    return {}
  fields = {}
  for prefix, split in zip(record.SPLITS, (setup.validation_split,
                                           setup.test_split)):
    if split is not None:
      fields.update(evaluate(setup.parallel, state, split, setup.config,
                             prefix, setup.task))
  return fields


def _epoch_record_missing(setup: TrainingSetup, step: int) -> bool:
  """Whether the record lacks the epoch that ends at ``step`` (its last
  line was cut by a crash, say), as process 0 reads it."""
  try:
    epochs = record.read_metrics(setup.workdir).get(record.EPOCH_KIND, [])
  except FileNotFoundError:
    epochs = []
  missing = np.int32(step not in {r["step"] for r in epochs})
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  return bool(missing)


def _write_epoch_record_again(setup: TrainingSetup, state: steps.TrainState,
                              meta: dict) -> None:
  """Writes the missing record of the epoch a checkpoint ends, from the
  epoch's sums saved with it and the evaluations (deterministic); its time is
  unknown (null). A checkpoint older than saved sums cannot: it says so."""
  step, spe = int(state.step), setup.steps_per_epoch
  if "epoch_sums" not in meta:
    logging.warning("The record of epoch %d is missing and the checkpoint "
                    "of step %d is too old to write it again.", step // spe,
                    step)
    return
  fields = record.epoch_fields(
      step // spe, _epoch_sums(meta["epoch_sums"]),
      optimizers.controlled_names(setup.config.optimizer), None)
  fields.update(_evaluations(setup, state, step))
  with record.MetricWriter(setup.workdir, enabled=setup.is_chief,
                           tensorboard=False) as writer:
    writer.write(record.EPOCH_KIND, step, fields)
  logging.warning("The record of epoch %d was missing: written again from "
                  "the checkpoint of step %d.", step // spe, step)


def _every(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


def _stop_signal(stop: signals.StopOnSignals, synced: bool) -> int:
  """The signal that asks to stop, or 0.

  With several processes they must stop at the same step: they agree at
  steps where they wait for the devices anyway (logged steps).
  """
  if jax.process_count() == 1:
    return stop.signum or 0
  if not synced:
    return 0
  return int(np.max(multihost_utils.process_allgather(
      np.int32(stop.signum or 0))))


def _throughput(clock: tuple[float, int], step: int,
                setup: TrainingSetup) -> dict[str, float]:
  """The task's rate (images or characters per second) since the end of the
  epoch's first step (which may compile); none at that step. Fetching the
  metrics waited for the steps before, so it is the device's."""
  if step <= clock[1]:
    return {}
  elapsed = max(time.perf_counter() - clock[0], 1e-9)
  return {setup.task.throughput_field: (step - clock[1])
          * setup.config.batch_size
          * setup.task.units_per_example(setup.config) / elapsed}


def _epoch_sums(saved: dict | None = None) -> dict[str, Any]:
  """The sums over an epoch's finite steps: zero, or as a checkpoint saved them.

  The loss is summed in float32, step after step: the additions the train
  step made on the devices when it kept the sums, so ``train_loss`` is the
  same to the bit. The rest count steps. Older checkpoints hold the sums in
  their state as float32 arrays, with ``loss_below_mean`` only for
  ``phases="random"`` (otherwise it equals ``below_mean``).
  """
  saved = saved or {}
  counts = {name: int(saved.get(name, 0))
            for name in ("steps", "below_mean")}
  counts["loss_below_mean"] = int(saved.get("loss_below_mean",
                                            counts["below_mean"]))
  return {"loss": np.float32(saved.get("loss", 0.0)), **counts}


def _add_step(sums: dict[str, Any], values: dict) -> dict[str, Any]:
  """``sums`` with one finite step's metrics (LCAM's phases, if any) added."""
  return {"loss": sums["loss"] + np.float32(values["loss"]),
          "steps": sums["steps"] + 1,
          "below_mean": sums["below_mean"] + int(values.get("below_mean", 0)),
          "loss_below_mean": sums["loss_below_mean"] + int(
              values.get("loss_below_mean", 0))}


def _json_sums(sums: dict[str, Any]) -> dict[str, float | int]:
  return {name: float(value) if name == "loss" else value
          for name, value in sums.items()}
