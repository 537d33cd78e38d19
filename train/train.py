"""Training and evaluation of Wide-ResNets with LCAM (or SGD) on CIFAR-sized data.

The per-device step is written once, with an optional axis name, and run either
by `jax.pmap` over the local devices (the train state unreplicated:
``in_axes=(None, 0), out_axes=(None, None)``) or by `jax.jit` with the batch
sharded over a device mesh (``config.parallel``). Gradients, the loss given to
LCAM and the BatchNorm statistics are averaged over all devices, so results do
not depend on the device count.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

import models
import optax_lcam
from train import checkpoints
from train import data
from train import metric_writers
from train import schedules

AXIS_NAME = "batch"
PARALLEL_MODES = ("pmap", "jit")
OPTIMIZER_NAMES = ("lcam", "sgd")
NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


class ConfigError(ValueError):
  """A config field has a value the loop cannot use."""


class TrainState(train_state.TrainState):
  """A Flax train state whose optimizer sees the loss (``value=``) of each step.

  Attributes:
    batch_stats: BatchNorm running statistics.
    rng: Raw key data of the run's base PRNG key; the key of step ``t`` is
      ``fold_in(rng, t)``, so that a resumed run draws the same numbers.
    epoch_sums: Sums over the current epoch's steps (``loss``, ``below_mean``
      steps, ``steps``), reset at each epoch start, for the epoch summary.
  """

  batch_stats: Any
  rng: jax.Array
  epoch_sums: dict[str, jax.Array]

  def apply_gradients(self, *, grads, value, **kwargs):
    """Applies one optimizer step, passing the loss to the optimizer."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params,
                                        value=value)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, **kwargs)


def _zero_epoch_sums() -> dict[str, jax.Array]:
  return {name: jnp.zeros([], jnp.float32)
          for name in ("loss", "below_mean", "steps")}


# -----------------------------------------------------------------------------
# Building blocks from the config.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the config's choices before any data is loaded or compiled.

  Raises:
    ConfigError: naming the field, the bad value and what would do.
  """
  choices = {
      "parallel": (config.parallel, PARALLEL_MODES),
      "optimizer.name": (config.optimizer.name, OPTIMIZER_NAMES),
      "schedule.name": (config.schedule.name, schedules.SCHEDULE_NAMES),
      "on_nonfinite_loss": (config.on_nonfinite_loss, NONFINITE_POLICIES),
      "distributed.initialize": (config.distributed.initialize,
                                 ("auto", "yes", "no")),
  }
  for field, (value, valid) in choices.items():
    if value not in valid:
      raise ConfigError(f"config.{field}={value!r} is not one of {valid}.")
  for field in ("batch_size", "eval_batch_size", "num_epochs"):
    if config[field] <= 0:
      raise ConfigError(f"config.{field} must be positive, got "
                        f"{config[field]}.")
  for field in ("eval_every_epochs", "log_every_steps",
                "checkpoint_every_steps", "stop_after_steps",
                "keep_checkpoints", "host_devices"):
    if config[field] < 0:
      raise ConfigError(f"config.{field} must be >= 0, got {config[field]}.")
  # Build the parts once, so that their own checks speak now, as config errors.
  parts = {
      "model": lambda: models.create_model(
          config.model.name, 10, dropout_rate=config.model.dropout_rate,
          dtype=jnp.dtype(config.model.dtype)),
      "schedule": lambda: schedules.create_learning_rate_schedule(
          config.schedule, 1, config.num_epochs),
      "optimizer": lambda: create_optimizer(config.optimizer, 0.1, 1),
  }
  for name, build in parts.items():
    try:
      build()
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.{name}: {e}") from e


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """LCAM, or SGD with (Nesterov) momentum, both with coupled weight decay.

  The loss given to the optimizer is already averaged over all devices by the
  train step, so the optimizer needs no ``axis_name``.
  """
  if config.name == "lcam":
    return optax_lcam.lcam(
        learning_rate, config.beta_below, config.beta_above,
        weight_decay=config.weight_decay, steps_per_epoch=steps_per_epoch,
        beta_init=config.beta_init, averaging=config.averaging,
        ema_decay=config.ema_decay, lag=config.lag,
        start_step=config.start_step, nesterov=config.nesterov)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate, momentum=config.momentum,
                nesterov=config.nesterov))


def create_train_state(model, tx, image_shape, seed: int) -> TrainState:
  """Initialises the model and the optimizer (on the host's default device)."""
  init_key, run_key = jax.random.split(jax.random.key(seed))

  @jax.jit
  def init():
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32),
                           train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"],
        rng=jax.random.key_data(run_key), epoch_sums=_zero_epoch_sums())

  return init()


# -----------------------------------------------------------------------------
# The per-device steps, written once with an optional axis name.


def _sum_over_devices(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the train and eval steps need besides the state and the batch."""

  model: Any
  learning_rate: Callable[[jax.Array], jax.Array]
  steps_per_epoch: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  uses_lcam: bool
  skip_nonfinite: bool
  axis_name: str | None


def _images(batch, key, step_config: StepConfig):
  images = batch["image"]
  if step_config.augment:
    images = data.augment(key, images, batch["position"])
  return data.normalize(images, step_config.mean, step_config.std,
                        dtype=step_config.model.dtype)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               step_config: StepConfig):
  """One optimizer step on one device's part of the global batch.

  The loss is the mean cross-entropy over the real (mask) examples of the
  whole global batch; it, the gradients and (through the model's
  ``bn_axis_name``) the BatchNorm statistics are reduced over
  ``step_config.axis_name`` when set.

  Returns:
    The new state, and the step's metrics (identical on every device).
  """
  axis_name = step_config.axis_name
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  if axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(axis_name))
  images = _images(batch, augment_key, step_config)
  mask = batch["mask"]
  num_real = _sum_over_devices(jnp.sum(mask, dtype=jnp.float32), axis_name)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, mask=mask, rngs={"dropout": dropout_key},
        mutable=["batch_stats"])
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["label"])
    return jnp.sum(jnp.where(mask, losses, 0.0)) / num_real, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  loss = _sum_over_devices(loss, axis_name)
  grads = _sum_over_devices(grads, axis_name)
  new_state = state.apply_gradients(grads=grads, value=loss,
                                    batch_stats=updates["batch_stats"])

  metrics = {"loss": loss, "learning_rate": step_config.learning_rate(
      state.step)}
  below_mean = jnp.zeros([], jnp.bool_)
  if step_config.uses_lcam:
    info = optax_lcam.lcam_info(new_state.opt_state)
    metrics.update(beta=info.beta, mean_loss=info.mean_loss,
                   below_mean=info.below_mean)
    below_mean = info.below_mean

  is_finite = jnp.isfinite(loss)
  new_state = new_state.replace(epoch_sums=_add_to_epoch_sums(
      state, step_config.steps_per_epoch, is_finite,
      {"loss": loss, "below_mean": below_mean.astype(jnp.float32),
       "steps": jnp.ones([], jnp.float32)}))
  if step_config.skip_nonfinite:
    new_state = _drop_update_unless(is_finite, new_state, state)
  return new_state, metrics


def _add_to_epoch_sums(state: TrainState, steps_per_epoch: int, is_finite,
                       step_values: dict[str, jax.Array]):
  """The epoch's sums with this step's values (reset at an epoch's first step)."""
  new_epoch = (state.step % steps_per_epoch) == 0
  sums = jax.tree.map(lambda x: jnp.where(new_epoch, 0.0, x), state.epoch_sums)
  return jax.tree.map(lambda s, x: jnp.where(is_finite, s + x, s), sums,
                      step_values)


def _drop_update_unless(is_finite, new_state: TrainState, state: TrainState):
  """Keeps the old parameters, statistics and optimizer buffers if not finite.

  Integer leaves (the step counters of the train state, of LCAM and of the
  learning-rate schedule) advance all the same, so the optimizer's epochs stay
  aligned with the data's.
  """
  def keep_if_finite(new, old):
    if not jnp.issubdtype(new.dtype, jnp.inexact):
      return new
    return jnp.where(is_finite, new, old)

  return new_state.replace(**{
      field: jax.tree.map(keep_if_finite, getattr(new_state, field),
                          getattr(state, field))
      for field in ("params", "batch_stats", "opt_state")})


def eval_step(state: TrainState, batch: dict[str, jax.Array],
              step_config: StepConfig) -> dict[str, jax.Array]:
  """Sums of the loss, the correct predictions and the real examples."""
  images = _images(batch, None, dataclasses.replace(step_config,
                                                     augment=False))
  logits = state.apply_fn({"params": state.params,
                           "batch_stats": state.batch_stats}, images,
                          train=False).astype(jnp.float32)
  mask = batch["mask"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           batch["label"])
  correct = jnp.argmax(logits, axis=-1) == batch["label"]
  sums = {"loss": jnp.sum(jnp.where(mask, losses, 0.0)),
          "correct": jnp.sum(mask & correct, dtype=jnp.float32),
          "count": jnp.sum(mask, dtype=jnp.float32)}
  return _sum_over_devices(sums, step_config.axis_name)


class Parallel(NamedTuple):
  """The steps wrapped for several devices, and how to feed them."""

  train_step: Callable  # (state, device_batch) -> (state, metrics)
  eval_step: Callable  # (state, device_batch) -> sums
  put_state: Callable  # host state -> device state
  put_batch: Callable  # this process's numpy batch -> device batch


def make_parallel(mode: str, step_config: StepConfig) -> Parallel:
  """Wraps the per-device steps with `jax.pmap` or `jax.jit` and shardings.

  Either way the state lives replicated on every device: `put_state` puts it
  there with the sharding the steps return it with, so the step compiles once.
  """
  mesh = Mesh(np.asarray(jax.devices()), (AXIS_NAME,))
  replicated = NamedSharding(mesh, P())

  def put_state(state):
    return jax.tree.map(lambda x: _replicate(np.asarray(x), replicated), state)

  if mode == "pmap":
    pmapped = functools.partial(jax.pmap, axis_name=AXIS_NAME,
                                in_axes=(None, 0))
    config = dataclasses.replace(step_config, axis_name=AXIS_NAME)
    return Parallel(
        train_step=pmapped(functools.partial(train_step, step_config=config),
                           out_axes=(None, None)),
        eval_step=pmapped(functools.partial(eval_step, step_config=config),
                          out_axes=None),
        put_state=put_state,
        put_batch=lambda batch: data.shard_for_devices(
            batch, jax.local_device_count()))

  batch_sharding = NamedSharding(mesh, P(AXIS_NAME))
  config = dataclasses.replace(step_config, axis_name=None)

  def put_batch(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
        batch)

  return Parallel(
      train_step=jax.jit(functools.partial(train_step, step_config=config),
                         out_shardings=(replicated, replicated),
                         donate_argnums=(0,)),
      eval_step=jax.jit(functools.partial(eval_step, step_config=config),
                        out_shardings=replicated),
      put_state=put_state, put_batch=put_batch)


def _replicate(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """The same host value on every device of ``sharding`` (several processes too)."""
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: value[index])


# -----------------------------------------------------------------------------
# The loop.


def build_parallel(config: ml_collections.ConfigDict, train_split: data.Split,
                   steps_per_epoch: int) -> tuple[Parallel, TrainState]:
  """The model, optimizer and wrapped steps of ``config``, and a fresh state.

  Args:
    config: A training config.
    train_split: The training data (for the classes, image shape and, with
      ``normalization="dataset"``, the statistics).
    steps_per_epoch: Optimizer steps per epoch.

  Returns:
    The steps wrapped for ``config.parallel``, and the initial train state on
    the host's default device.
  """
  model = models.create_model(
      config.model.name, train_split.num_classes,
      dropout_rate=config.model.dropout_rate,
      dtype=jnp.dtype(config.model.dtype),
      bn_axis_name=AXIS_NAME if config.parallel == "pmap" else None)
  learning_rate = schedules.create_learning_rate_schedule(
      config.schedule, steps_per_epoch, config.num_epochs)
  tx = create_optimizer(config.optimizer, learning_rate, steps_per_epoch)
  mean, std = data.normalization_stats(config.data.normalization, train_split)
  step_config = StepConfig(
      model=model, learning_rate=learning_rate,
      steps_per_epoch=steps_per_epoch, mean=tuple(mean), std=tuple(std),
      augment=config.data.augment, uses_lcam=config.optimizer.name == "lcam",
      skip_nonfinite=config.on_nonfinite_loss == "skip", axis_name=None)
  state = create_train_state(model, tx, train_split.images.shape[1:],
                             config.seed)
  return make_parallel(config.parallel, step_config), state


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the config or environment asks.

  Must run before JAX touches a device.
  """
  coordinator = (config.coordinator_address
                 or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  if config.initialize == "no" or (config.initialize == "auto"
                                   and not coordinator):
    return
  kwargs = {"coordinator_address": coordinator,
            "num_processes": config.num_processes,
            "process_id": config.process_id}
  jax.distributed.initialize(**{k: v for k, v in kwargs.items()
                                if v is not None})


def evaluate(parallel: Parallel, state, split: data.Split,
             batch_size: int) -> dict[str, float]:
  """Exact loss and accuracy on every example of ``split``."""
  totals = None
  for batch in data.eval_batches(split, batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    sums = parallel.eval_step(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"test_loss": float(totals["loss"]) / count,
          "test_accuracy": float(totals["correct"]) / count}


def _fetch_train_metrics(pending: list, writer, steps_per_epoch: int,
                         throughput: "_Throughput",
                         stop_on_nonfinite: bool) -> dict[str, float]:
  """Moves pending step metrics to the host, checks them and logs the last.

  Raises:
    NonFiniteLossError: naming the first step whose loss is not finite, when
      ``stop_on_nonfinite``.
  """
  if not pending:
    return {}
  steps, metrics = zip(*pending)
  metrics = jax.device_get(list(metrics))
  pending.clear()
  for step, values in zip(steps, metrics):
    if np.isfinite(values["loss"]):
      continue
    message = (f"The training loss is {values['loss']} at step {step} "
               f"(epoch {(step - 1) // steps_per_epoch + 1}).")
    if not stop_on_nonfinite:
      logging.warning("%s The step's update was skipped.", message)
      continue
    writer.write("train", step, _train_record(values, step, steps_per_epoch,
                                              throughput))
    raise NonFiniteLossError(
        f"{message} Training stopped; the last checkpoint before it is kept. "
        "Lower the learning rate, or set --config.on_nonfinite_loss=skip to "
        "skip such steps.")
  record = _train_record(metrics[-1], steps[-1], steps_per_epoch, throughput)
  writer.write("train", steps[-1], record)
  return record


def _train_record(values, step, steps_per_epoch, throughput):
  record = {k: float(v) for k, v in values.items() if k != "below_mean"}
  record["epoch"] = step / steps_per_epoch
  images_per_sec = throughput.images_per_sec(step)
  if np.isfinite(images_per_sec):  # not at the epoch's first step
    record["images_per_sec"] = images_per_sec
  return record


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains (or resumes training) per ``config``, writing into ``workdir``.

  Writes ``config.json``, ``metrics.jsonl``, TensorBoard events and Orbax
  checkpoints; re-running on the same workdir resumes from the latest
  checkpoint with the same remaining batches.

  Args:
    config: A training config (see ``train/configs/default.py``).
    workdir: Directory for the outputs.

  Returns:
    The final train state (replicated over the devices for ``jit``).
  """
  validate_config(config)
  maybe_initialize_distributed(config.distributed)
  run_start = time.perf_counter()
  if config.batch_size % jax.device_count() or (
      config.eval_batch_size % jax.device_count()):
    raise ConfigError(
        f"config.batch_size ({config.batch_size}) and config.eval_batch_size "
        f"({config.eval_batch_size}) must be divisible by the number of "
        f"devices ({jax.device_count()}).")
  is_chief = jax.process_index() == 0

  train_split = data.load_split(config.data.source, "train",
                                data_dir=config.data.data_dir,
                                cache_dir=config.data.cache_dir)
  test_split = None
  if config.eval_every_epochs:
    test_split = data.load_split(config.data.source, "test",
                                 data_dir=config.data.data_dir,
                                 cache_dir=config.data.cache_dir)
  steps_per_epoch = data.steps_per_epoch(train_split.num_examples,
                                         config.batch_size,
                                         config.data.drop_remainder)
  total_steps = steps_per_epoch * config.num_epochs
  parallel, state = build_parallel(config, train_split, steps_per_epoch)

  checkpointer = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"), config,
      keep=config.keep_checkpoints)
  state = parallel.put_state(checkpointer.restore_latest(state))
  start_step = int(state.step)
  if is_chief:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    logging.info("%s at step %d of %d (%d steps per epoch), %d devices",
                 "Resuming" if start_step else "Starting", start_step,
                 total_steps, steps_per_epoch, jax.device_count())
  stop_step = total_steps
  if config.stop_after_steps:
    stop_step = min(stop_step, config.stop_after_steps)

  writer = metric_writers.MetricWriter(workdir, enabled=is_chief,
                                       purge_step=start_step or None)
  try:
    state = _train_loop(config, state, parallel, checkpointer, writer,
                        train_split, test_split, steps_per_epoch, start_step,
                        stop_step, total_steps, run_start)
  finally:
    writer.close()
    checkpointer.close()
  return state


def _train_loop(config, state, parallel, checkpointer, writer, train_split,
                test_split, steps_per_epoch, step, stop_step, total_steps,
                run_start):
  """Runs epochs from ``step`` to ``stop_step``; see `train_and_evaluate`."""
  is_chief = jax.process_index() == 0
  pending = []
  while step < stop_step:
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    epoch_start = time.perf_counter()
    batches = data.train_batches(
        train_split, config.batch_size, seed=config.seed, epoch=epoch,
        start_step=step_in_epoch, drop_remainder=config.data.drop_remainder,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    progress = metric_writers.Progress(
        steps_per_epoch, epoch + 1, batch_size=config.batch_size,
        enabled=is_chief and config.progress)
    throughput = _Throughput(config.batch_size)
    fetch = functools.partial(
        _fetch_train_metrics, pending, writer, steps_per_epoch, throughput,
        config.on_nonfinite_loss == "stop")
    for batch in batches:
      state, metrics = parallel.train_step(state, parallel.put_batch(batch))
      step += 1
      pending.append((step, metrics))
      if not throughput.started:
        jax.block_until_ready(metrics)
        throughput.start(step)
        if run_start is not None:
          writer.write("run", step, {
              "time_to_first_step_s": time.perf_counter() - run_start,
              "devices": jax.device_count(),
              "processes": jax.process_count()})
          run_start = None
      end_of_epoch = step % steps_per_epoch == 0
      stopping = step >= stop_step
      if (config.log_every_steps and step % config.log_every_steps == 0
          ) or end_of_epoch or stopping:
        # The fetch waits for the steps before it, so the progress's speed is
        # the device's, not the speed at which steps are queued.
        shown = fetch()
        progress.update(step - epoch * steps_per_epoch,
                        **{k: shown[k] for k in ("loss", "beta") if k in shown})
      if stopping or end_of_epoch:
        break
      if (config.checkpoint_every_steps
          and step % config.checkpoint_every_steps == 0):
        fetch()
        checkpointer.save(step, state)
    progress.close()
    if step % steps_per_epoch == 0:
      _end_epoch(config, state, parallel, writer, test_split, step,
                 steps_per_epoch, total_steps, time.perf_counter() - epoch_start)
    checkpointer.save(step, state)
  return state


def _end_epoch(config, state, parallel, writer, test_split, step,
               steps_per_epoch, total_steps, epoch_time):
  """Evaluates when due and writes the epoch record."""
  epoch = step // steps_per_epoch
  sums = jax.device_get(state.epoch_sums)
  num_steps = max(float(sums["steps"]), 1.0)
  below = float(sums["below_mean"]) / num_steps
  record = {"epoch": epoch, "train_loss": float(sums["loss"]) / num_steps,
            "epoch_time_s": epoch_time}
  if config.optimizer.name == "lcam":
    record.update(phase_below_fraction=below, phase_above_fraction=1 - below)
  every = config.eval_every_epochs
  if test_split is not None and every and (epoch % every == 0
                                           or step == total_steps):
    record.update(evaluate(parallel, state, test_split,
                           config.eval_batch_size))
  writer.write("epoch", step, record)
  logging.info("epoch %d: %s", epoch, json.dumps(record))


class _Throughput:
  """Images per second from the end of an epoch's first step to a fetch.

  The clock starts once the epoch's first step is done (it may include
  compilation), and a fetch of the step metrics waits for the steps before
  it, so the rate is the device's rate over the steps in between.
  """

  def __init__(self, batch_size: int):
    self._batch_size = batch_size
    self._start = None

  def start(self, step: int) -> None:
    self._start = (time.perf_counter(), step)

  @property
  def started(self) -> bool:
    return self._start is not None

  def images_per_sec(self, step: int) -> float:
    if self._start is None or step == self._start[1]:
      return float("nan")
    elapsed = time.perf_counter() - self._start[0]
    return (step - self._start[1]) * self._batch_size / max(elapsed, 1e-9)
