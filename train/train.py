"""Training and evaluation of Wide-ResNets with LCAM (or SGD) on CIFAR-sized data.

The per-device step is written once, with an optional axis name, and run either
by `jax.pmap` over the local devices (the train state unreplicated:
``in_axes=(None, 0), out_axes=(None, None)``) or by `jax.jit` with the batch
sharded over a device mesh (``config.parallel``). Gradients, the loss given to
LCAM and the BatchNorm statistics are averaged over all devices, and dropout
masks are drawn per example of the global batch, so results do not depend on
the device count (up to the order of float32 sums).

`train_and_evaluate` builds a `Run` once (data, wrapped steps, checkpoints)
and loops over the batches; what happens between steps (logging, progress,
checkpoints, evaluation at an epoch's end, stopping on a signal) is the work
of one `_PeriodicWork` object.
"""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
import warnings
from typing import Any, Callable, NamedTuple

from absl import logging
from flax.training import train_state
import jax
from jax import lax
from jax.experimental import multihost_utils
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
from train import config as config_lib
from train import data
from train import metric_writers
from train import periodic
from train import provenance
from train import runs
from train import schedules
from train import workdir_lock

AXIS_NAME = "batch"


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


class TrainState(train_state.TrainState):
  """A Flax train state whose optimizer sees the loss (``value=``) of each step.

  Attributes:
    batch_stats: BatchNorm running statistics.
    rng: Raw key data of the run's base PRNG key; the key of step ``t`` is
      ``fold_in(rng, t)``, so that a resumed run draws the same numbers.
    epoch_sums: Sums over the current epoch's steps (``loss``, ``below_mean``
      steps, ``steps``; with ``phases="random"`` also ``loss_below_mean``
      steps, see `epoch_sum_names`), reset at each epoch start, for the
      epoch summary.
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


# The sums over an epoch's steps that every run keeps.
EPOCH_SUMS = ("loss", "below_mean", "steps")


def epoch_sum_names(optimizer_config: ml_collections.ConfigDict
                    ) -> tuple[str, ...]:
  """The epoch sums of a run: `EPOCH_SUMS`, and with ``phases="random"`` the
  steps whose loss was below the running mean (otherwise the phase itself,
  so that the checkpoints of other runs keep their tree)."""
  if optimizer_config.phases == "random":
    return EPOCH_SUMS + ("loss_below_mean",)
  return EPOCH_SUMS


def _zero_epoch_sums(names: tuple[str, ...]) -> dict[str, jax.Array]:
  return {name: jnp.zeros([], jnp.float32) for name in names}


# -----------------------------------------------------------------------------
# Building blocks from the config.


def below_probability_schedule(
    below_probability: tuple[float, ...],
    steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """One probability an epoch as a schedule of the step; one is a constant.

  Epochs past the tuple keep its last value.

  Raises:
    ValueError: for an empty tuple or a value outside [0, 1].

  Example:
    >>> schedule = below_probability_schedule((0.5, 0.2), steps_per_epoch=3)
    >>> [round(float(schedule(step)), 2) for step in range(7)]
    [0.5, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2]
  """
  values = tuple(below_probability)
  if not values or not all(
      isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
    raise ValueError(
        f"below_probability={below_probability!r} must be one probability "
        "in [0, 1] an epoch, e.g. (0.5,) for a constant or (0.3, 0.5, 0.7).")
  if len(values) == 1:
    return float(values[0])
  return optax.join_schedules(
      [optax.constant_schedule(float(v)) for v in values],
      boundaries=[epoch * steps_per_epoch for epoch in range(1, len(values))])


def _phase_options(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> dict[str, Any]:
  """The phase-rule arguments of `optax_lcam.lcam` and `loss_controlled`."""
  return {"phases": config.phases, "phase_seed": config.phase_seed,
          "below_probability": below_probability_schedule(
              config.below_probability, steps_per_epoch)}


def _sgd(learning_rate, momentum, nesterov, weight_decay):
  """SGD with (Nesterov) momentum and coupled weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum,
                               nesterov=nesterov))


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """LCAM, SGD or AdamW, optionally with loss-controlled hyper-parameters.

  LCAM and SGD have coupled weight decay (added to the gradient), AdamW
  decoupled weight decay (``optax.adamw``). With ``config.loss_control`` set,
  the named hyper-parameters of SGD or AdamW take one value after a loss below
  the running mean and another at or above it (`optax_lcam.loss_controlled`,
  with LCAM's rule options ``averaging``, ``ema_decay``, ``lag``,
  ``start_step``, ``phases``, ``below_probability`` (one value an epoch) and
  ``phase_seed``). The loss given to the optimizer is already averaged over
  all devices by the train step, so the optimizer needs no ``axis_name``.

  Raises:
    ValueError: for a ``loss_control`` that cannot be used, or
      ``phases="random"`` without a loss-controlled optimizer.
  """
  phase_options = _phase_options(config, steps_per_epoch)
  if config.name == "lcam":
    if config.loss_control:
      raise ValueError(
          "loss_control is for sgd or adamw; LCAM is SGD whose momentum is "
          'already loss-controlled (or use name=sgd with loss_control=\'{'
          '"momentum": [0.95, 0.9]}\').')
    return optax_lcam.lcam(
        learning_rate, config.beta_below, config.beta_above,
        weight_decay=config.weight_decay, steps_per_epoch=steps_per_epoch,
        beta_init=config.beta_init, averaging=config.averaging,
        ema_decay=config.ema_decay, lag=config.lag,
        start_step=config.start_step, nesterov=config.nesterov,
        **phase_options)
  if config.name == "sgd":
    factory, arguments = _sgd, {"momentum": config.momentum,
                                "nesterov": config.nesterov}
  else:
    factory, arguments = optax.adamw, {"b1": config.b1, "b2": config.b2,
                                       "eps": config.eps}
  arguments.update(learning_rate=learning_rate,
                   weight_decay=config.weight_decay)
  controlled = config_lib.parse_loss_control(config.loss_control)
  if not controlled:
    if config.phases != "loss":
      raise ValueError(
          f"phases={config.phases!r} draws the phases of a loss-controlled "
          f"optimizer, and {config.name} has none: use name=lcam, or set "
          "loss_control.")
    return factory(**arguments)
  return optax_lcam.loss_controlled(
      optax.inject_hyperparams(factory, static_args=("nesterov",))(
          **arguments),
      below={name: below for name, (below, _) in controlled.items()},
      above={name: above for name, (_, above) in controlled.items()},
      steps_per_epoch=steps_per_epoch, averaging=config.averaging,
      ema_decay=config.ema_decay, lag=config.lag,
      start_step=config.start_step, **phase_options)


def controlled_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The loss-controlled hyper-parameters of an optimizer config, if any."""
  if config.name == "lcam":
    return ("beta",)
  return tuple(config_lib.parse_loss_control(config.loss_control))


def create_train_state(model, tx, image_shape, seed: int,
                       epoch_sums: tuple[str, ...] = EPOCH_SUMS) -> TrainState:
  """Initialises the model and the optimizer (on the host's default device).

  ``epoch_sums`` names the sums kept over an epoch (see `epoch_sum_names`).
  """
  init_key, run_key = jax.random.split(jax.random.key(seed))

  @jax.jit
  def init():
    variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32),
                           train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"],
        rng=jax.random.key_data(run_key),
        epoch_sums=_zero_epoch_sums(epoch_sums))

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
  controlled: tuple[str, ...]  # loss-controlled hyper-parameters, logged
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
  # The same keys on every device: the model draws each example's dropout
  # mask by its index in the global batch (`models.ExampleDropout`).
  augment_key, dropout_key = jax.random.split(step_key)
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
  below_mean = loss_below_mean = jnp.zeros([], jnp.bool_)
  if step_config.controlled:
    info = optax_lcam.loss_control_info(new_state.opt_state)
    metrics.update(mean_loss=info.mean_loss, below_mean=info.below_mean,
                   loss_below_mean=info.loss_below_mean)
    metrics.update({name: info.hyperparams[name]
                    for name in step_config.controlled})
    below_mean, loss_below_mean = info.below_mean, info.loss_below_mean

  is_finite = jnp.isfinite(loss)
  step_values = {"loss": loss, "below_mean": below_mean.astype(jnp.float32),
                 "loss_below_mean": loss_below_mean.astype(jnp.float32),
                 "steps": jnp.ones([], jnp.float32)}
  new_state = new_state.replace(epoch_sums=_add_to_epoch_sums(
      state, step_config.steps_per_epoch, is_finite,
      {name: step_values[name] for name in state.epoch_sums}))
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
  """Undoes a step's update of parameters and buffers if its loss is not finite.

  On a step whose loss is not finite, the parameters, the BatchNorm
  statistics and every part of the optimizer state shaped like the
  parameters (a subtree with their tree structure and shapes: momenta,
  Adam's moments, any other optimizer's per-parameter buffers) keep their
  old values. The rest of the optimizer state moves on as the optimizer
  decides: every counter (the train state's, LCAM's, the schedule's)
  advances, so the optimizer's epochs stay aligned with the data's, and LCAM
  adds no non-finite loss to its statistics (it only resets them at an
  epoch's start). A floating-point leaf of that rest which the step made
  non-finite keeps its old value too, so no NaN enters an optimizer state
  this rule does not know.
  """
  def keep(new, old):
    return jax.tree.map(lambda n, o: jnp.where(is_finite, n, o), new, old)

  params_structure = jax.tree.structure(state.params)
  params_shapes = [jnp.shape(x) for x in jax.tree.leaves(state.params)]

  def is_params_shaped(tree):
    return (jax.tree.structure(tree) == params_structure
            and [jnp.shape(x) for x in jax.tree.leaves(tree)] == params_shapes)

  def keep_buffers(new, old):
    if is_params_shaped(new):
      return keep(new, old)
    if jnp.issubdtype(jnp.result_type(new), jnp.inexact):
      return jnp.where(is_finite | jnp.isfinite(new), new, old)
    return new

  return new_state.replace(
      params=keep(new_state.params, state.params),
      batch_stats=keep(new_state.batch_stats, state.batch_stats),
      opt_state=jax.tree.map(keep_buffers, new_state.opt_state,
                             state.opt_state, is_leaf=is_params_shaped))


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
  put_batch: Callable  # this process's numpy batch -> device batch
  state_sharding: NamedSharding  # where the state lives: on every device

  def put_state(self, state):
    """The host ``state`` on the devices, with the sharding the steps return."""
    return jax.tree.map(
        lambda x: _replicate(np.asarray(x), self.state_sharding), state)


def make_parallel(mode: str, step_config: StepConfig, *,
                  donate_state: bool = True) -> Parallel:
  """Wraps the per-device steps with `jax.pmap` or `jax.jit` and shardings.

  Either way the state lives replicated on every device, with the sharding
  the steps return it with, so the step compiles once. The train step
  donates the state it is given (``donate_state``): its buffers hold the new
  state, so a device holds the train state once, not twice, and the state
  passed in is deleted. On a CPU host split into several devices the train
  step waits for itself (see `one_step_in_flight`).
  """
  parallel = _make_parallel(mode, step_config, donate_state)
  devices = jax.devices()
  if len(devices) > 1 and devices[0].platform == "cpu":
    parallel = parallel._replace(
        train_step=one_step_in_flight(parallel.train_step))
  return parallel


def one_step_in_flight(step: Callable) -> Callable:
  """``step`` that returns once its results are computed.

  On a CPU split into several XLA devices, long runs with up to
  ``log_every_steps`` steps queued ahead of the devices stopped three times
  (after 2,000 to 4,000 steps, with 2 and with 4 devices on 2 cores) in a
  cross-device sum that one device never joined, which XLA aborts after 40 s.
  Keeping one step in flight costs the CPU loop little: its host work per
  step is small against the step.
  """
  def step_and_wait(state, batch):
    state, metrics = step(state, batch)
    return jax.block_until_ready((state, metrics))

  return step_and_wait


def _make_parallel(mode: str, step_config: StepConfig,
                   donate_state: bool) -> Parallel:
  mesh = Mesh(np.asarray(jax.devices()), (AXIS_NAME,))
  replicated = NamedSharding(mesh, P())
  donate = (0,) if donate_state else ()
  if mode == "pmap":
    pmapped = functools.partial(jax.pmap, axis_name=AXIS_NAME,
                                in_axes=(None, 0))
    config = dataclasses.replace(step_config, axis_name=AXIS_NAME)
    return Parallel(
        train_step=pmapped(functools.partial(train_step, step_config=config),
                           out_axes=(None, None), donate_argnums=donate),
        eval_step=pmapped(functools.partial(eval_step, step_config=config),
                          out_axes=None),
        put_batch=lambda batch: data.shard_for_devices(
            batch, jax.local_device_count()),
        state_sharding=replicated)

  batch_sharding = NamedSharding(mesh, P(AXIS_NAME))
  config = dataclasses.replace(step_config, axis_name=None)

  def put_batch(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
        batch)

  return Parallel(
      train_step=jax.jit(functools.partial(train_step, step_config=config),
                         out_shardings=(replicated, replicated),
                         donate_argnums=donate),
      eval_step=jax.jit(functools.partial(eval_step, step_config=config),
                        out_shardings=replicated),
      put_batch=put_batch, state_sharding=replicated)


def _replicate(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """The same host value on every device of ``sharding`` (several processes too)."""
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: value[index])


# -----------------------------------------------------------------------------
# The loop.


def build_parallel(config: ml_collections.ConfigDict, train_split: data.Split,
                   steps_per_epoch: int, *, donate_state: bool = True
                   ) -> tuple[Parallel, TrainState]:
  """The model, optimizer and wrapped steps of ``config``, and a fresh state.

  Args:
    config: A training config.
    train_split: The training data (for the classes, image shape and, with
      ``normalization="dataset"``, the statistics).
    steps_per_epoch: Optimizer steps per epoch.
    donate_state: Whether the train step donates the state it is given (see
      `make_parallel`).

  Returns:
    The steps wrapped for ``config.parallel``, and the initial train state on
    the host's default device.

  Raises:
    config_lib.ConfigError: the model, schedule or optimizer rejects its
      config.
  """
  with config_lib.as_config_errors("model"):
    model = models.create_model(
        config.model.name, train_split.num_classes,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype),
        bn_axis_name=AXIS_NAME if config.parallel == "pmap" else None)
  with config_lib.as_config_errors("schedule"):
    learning_rate = schedules.create_learning_rate_schedule(
        config.schedule, steps_per_epoch, config.num_epochs)
  with config_lib.as_config_errors("optimizer"):
    tx = create_optimizer(config.optimizer, learning_rate, steps_per_epoch)
  mean, std = data.normalization_stats(config.data.normalization, train_split)
  step_config = StepConfig(
      model=model, learning_rate=learning_rate,
      steps_per_epoch=steps_per_epoch, mean=tuple(mean), std=tuple(std),
      augment=config.data.augment,
      controlled=controlled_names(config.optimizer),
      skip_nonfinite=config.on_nonfinite_loss == "skip", axis_name=None)
  state = create_train_state(model, tx, train_split.images.shape[1:],
                             config.seed, epoch_sum_names(config.optimizer))
  return make_parallel(config.parallel, step_config,
                       donate_state=donate_state), state


def detected_cluster() -> tuple[str, int] | None:
  """The cluster JAX's own detection finds, and its process count.

  These are the environments (SLURM, Open MPI, Cloud TPU, Kubernetes, in
  JAX's order) that ``jax.distributed.initialize()`` reads its arguments from
  when it is given none. JAX has no public way to ask without initializing,
  so this asks the same ``ClusterEnv`` classes that it does
  (``jax._src.clusters``, stable since 2022). Opt-in methods (mpi4py) are
  left out, as JAX leaves them out.

  Returns:
    ``(name, process count)`` of the first environment present, or None.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=protected-access
    environments = clusters.ClusterEnv._cluster_types
  except (ImportError, AttributeError):
    logging.warning("This JAX version does not expose its cluster detection: "
                    "set --config.distributed.initialize=yes for a "
                    "multi-process run.")
    return None
  for environment in environments:
    try:
      with warnings.catch_warnings():  # Kubernetes without its package.
        warnings.simplefilter("ignore")
        if environment.opt_in_only_method or not environment.is_env_present():
          continue
      return environment.name, environment.get_process_count()
    except Exception as e:  # pylint: disable=broad-except
      # Half there, e.g. a Kubernetes pod outside a Job.
      logging.warning("JAX's %s cluster detection failed (%s): running alone "
                      "(--config.distributed.initialize=yes to join).",
                      environment.name, e)
      return None
  return None


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the config or environment asks.

  With ``initialize="auto"`` the environment asks with a coordinator address
  (in the config or ``JAX_COORDINATOR_ADDRESS``), or with a cluster of more
  than one process that JAX detects (`detected_cluster`): a SLURM step of
  several tasks, an Open MPI job, a multi-host TPU slice. A cluster of one
  process (``sbatch`` with one task) needs no initialization. Must run before
  JAX touches a device.
  """
  if config.initialize == "no":
    return
  coordinator = (config.coordinator_address
                 or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  if config.initialize == "auto" and not coordinator:
    cluster = detected_cluster()
    if cluster is None or cluster[1] < 2:
      return
    logging.info("Joining the %d processes of the %s cluster that JAX "
                 "detects (--config.distributed.initialize=no runs alone).",
                 cluster[1], cluster[0])
  kwargs = {"coordinator_address": coordinator,
            "num_processes": config.num_processes,
            "process_id": config.process_id}
  jax.distributed.initialize(**{k: v for k, v in kwargs.items()
                                if v is not None})


def evaluate(parallel: Parallel, state, split: data.Split, batch_size: int,
             prefix: str = "test") -> dict[str, float]:
  """Exact loss and accuracy on every example of ``split``.

  Returns:
    ``{f"{prefix}_loss", f"{prefix}_accuracy"}``.
  """
  totals = None
  for batch in data.eval_batches(split, batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    sums = parallel.eval_step(state, parallel.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {f"{prefix}_loss": float(totals["loss"]) / count,
          f"{prefix}_accuracy": float(totals["correct"]) / count}


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run builds once: its config, data, wrapped steps and checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  train_split: data.Split  # without the validation examples
  test_split: data.Split | None  # None when the config never evaluates
  steps_per_epoch: int
  parallel: Parallel
  checkpointer: checkpoints.Checkpointer
  # The training examples held out (config.data.validation_examples), if any.
  validation_split: data.Split | None = None
  provenance: dict = dataclasses.field(default_factory=dict)  # `train.provenance`

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
    """This process's batches from global step ``step`` to its epoch's end."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    return data.train_batches(
        self.train_split, self.config.batch_size, seed=self.config.seed,
        epoch=epoch, start_step=step_in_epoch,
        drop_remainder=self.config.data.drop_remainder,
        process_index=jax.process_index(), process_count=jax.process_count())


def build_run(config: ml_collections.ConfigDict, workdir: str, *,
              test_split: bool = False) -> tuple[Run, TrainState, dict]:
  """Loads the data, builds the steps and restores the latest checkpoint.

  Args:
    config: A validated training config.
    workdir: The run's directory.
    test_split: Whether to load the test split even if the config never
      evaluates.

  With ``config.data.validation_examples`` K > 0, K examples of the training
  split are held out of training (`data.hold_out`) and evaluated like the test
  split; the steps per epoch follow the examples that remain.

  Returns:
    The run; its state on the devices (restored, or fresh when the workdir
    has no checkpoint); the checkpoint's meta data (``{}`` without one).

  Raises:
    config_lib.ConfigError, data.DataError,
    checkpoints.IncompatibleCheckpointError,
    checkpoints.DamagedCheckpointError.
  """
  load = functools.partial(data.load_split, config.data.source,
                           data_dir=config.data.data_dir,
                           cache_dir=config.data.cache_dir)
  train_split = load("train")
  full_train_split, validation_split = train_split, None
  if config.data.validation_examples:
    train_split, validation_split = data.hold_out(
        train_split, config.data.validation_examples)
  config_lib.validate(config, train_examples=train_split.num_examples)
  steps_per_epoch = data.steps_per_epoch(
      train_split.num_examples, config.batch_size, config.data.drop_remainder)
  parallel, state = build_parallel(config, train_split, steps_per_epoch)
  checkpointer = checkpoints.Checkpointer(
      os.path.join(workdir, runs.CHECKPOINTS_DIRNAME), config,
      keep=config.keep_checkpoints,
      facts={"steps_per_epoch": steps_per_epoch,
             "num_train_examples": train_split.num_examples})
  try:
    state, meta = checkpointer.restore_latest(parallel.put_state(state))
    test = load("test") if test_split or (config.eval_every_epochs
                                          and config.data.eval_test) else None
    facts = provenance.provenance(
        config.data.source, [s for s in (full_train_split, test) if s])
  except BaseException:
    checkpointer.close()
    raise
  return Run(config, workdir, train_split, test, steps_per_epoch, parallel,
             checkpointer, validation_split, facts), state, meta


@contextlib.contextmanager
def hold_workdir(workdir: str):
  """Holds ``workdir`` for one run: its lock (`train.workdir_lock`).

  The processes of a multi-process run share their workdir, so process 0
  holds the lock for all of them, and all of them stop when it is busy.
  Without `jax.distributed` this runs before JAX touches a device.

  Raises:
    workdir_lock.WorkdirBusyError: another run holds ``workdir``.
  """
  distributed = jax.distributed.is_initialized()
  with contextlib.ExitStack() as stack:
    busy = None
    if not distributed or jax.process_index() == 0:
      try:
        stack.enter_context(workdir_lock.hold(workdir))
      except workdir_lock.WorkdirBusyError as e:
        busy = e
    if distributed and jax.process_count() > 1 and np.any(
        multihost_utils.process_allgather(np.int32(busy is not None))):
      busy = busy or workdir_lock.WorkdirBusyError(
          f"the workdir {workdir} is in use by another run (found by "
          "process 0).")
    if busy:
      raise busy
    yield


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains (or resumes training) per ``config``, writing into ``workdir``.

  Writes ``config.json``, ``metrics.jsonl``, TensorBoard events and Orbax
  checkpoints; re-running on the same workdir resumes from the latest
  checkpoint with the same remaining batches, and does nothing when the run
  is complete. SIGINT (Ctrl-C) or SIGTERM stops training after the step in
  flight, with a checkpoint of that step. One run at a time holds the
  workdir (`hold_workdir`).

  Args:
    config: A training config (see ``train/configs/default.py``).
    workdir: Directory for the outputs.

  Returns:
    The final train state (replicated over the devices).

  Raises:
    TrainingInterrupted: after a signal, once the checkpoint is saved.
    NonFiniteLossError: with ``on_nonfinite_loss="stop"``.
    workdir_lock.WorkdirBusyError: another run holds ``workdir``.
  """
  config_lib.validate(config)
  maybe_initialize_distributed(config.distributed)
  run_start = time.perf_counter()
  with hold_workdir(workdir), periodic.StopOnSignals() as stop:
    config_lib.validate(config, jax.device_count())
    run, state, meta = build_run(config, workdir)
    try:
      return _train(run, state, meta, stop, run_start)
    finally:
      run.checkpointer.close()


def _train(run: Run, state: TrainState, meta: dict,
           stop: periodic.StopOnSignals, run_start: float) -> TrainState:
  """Writes the config, then trains from the state's step to the stop step."""
  step = int(state.step)
  if step >= run.stop_step:
    logging.info("The run in %s is %s: nothing to do.", run.workdir,
                 f"complete (step {step} of {run.total_steps})"
                 if step >= run.total_steps else
                 f"at step {step}, where config.stop_after_steps stops it")
    return state
  if run.is_chief:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, runs.CONFIG_FILENAME), "w") as f:
      f.write(run.config.to_json(indent=2))
    logging.info("%s at step %d of %d (%d steps per epoch), %d devices",
                 "Resuming" if step else "Starting", step, run.total_steps,
                 run.steps_per_epoch, jax.device_count())
  with metric_writers.MetricWriter(run.workdir, enabled=run.is_chief,
                                   resume_step=step) as writer:
    work = _PeriodicWork(run, writer, stop, run_start,
                         meta.get("epoch_elapsed_s", 0.0))
    while step < run.stop_step:
      work.start_epoch(step)
      try:
        for batch in run.batches(step):
          state, metrics = run.parallel.train_step(
              state, run.parallel.put_batch(batch))
          step += 1
          work.after_step(step, state, metrics)
          if step % run.steps_per_epoch == 0 or step >= run.stop_step:
            break
      finally:
        work.progress.end_epoch()
  return state


class _PeriodicWork:
  """What the loop does after a step: logs, progress, checkpoints, epoch ends.

  Train metrics stay on the devices until a logged step (every
  ``log_every_steps``, an epoch's end, a checkpoint, the last step), so the
  host does not wait for every step. A signal stops the loop after the step
  in flight, with a checkpoint of it.
  """

  def __init__(self, run: Run, writer: metric_writers.MetricWriter,
               stop: periodic.StopOnSignals, run_start: float | None,
               epoch_elapsed_s: float):
    self.run, self.writer, self.stop = run, writer, stop
    self.run_start = run_start
    self.progress = periodic.Progress(
        run.steps_per_epoch, enabled=run.is_chief and run.config.progress)
    self.pending = []
    self.throughput = None
    self.epoch_start = None
    # The time the resumed epoch took before its checkpoint.
    self.epoch_elapsed_before = epoch_elapsed_s

  def start_epoch(self, step: int) -> None:
    epoch, done = divmod(step, self.run.steps_per_epoch)
    before = self.epoch_elapsed_before if done else 0.0
    self.epoch_start, self.epoch_elapsed_before = (
        time.perf_counter() - before, 0.0)
    self.throughput = periodic.Throughput(self.run.config.batch_size)
    self.progress.start_epoch(epoch + 1, done)

  def _due(self, step: int, every: int) -> bool:
    return bool(every) and step % every == 0

  def after_step(self, step: int, state: TrainState, metrics) -> None:
    config = self.run.config
    self.pending.append((step, metrics))
    if not self.throughput.started:
      self._first_step_done(step, metrics)
    end_of_epoch = step % self.run.steps_per_epoch == 0
    save = (end_of_epoch or step >= self.run.stop_step
            or self._due(step, config.checkpoint_every_steps))
    log = save or self._due(step, config.log_every_steps)
    signum = self._stop_signal(synced=log)
    if log or signum:
      self._log_train_metrics()
    if end_of_epoch:
      self.progress.end_epoch()
      self._end_epoch(step, state)
    if save or signum:
      self._save(step, state, end_of_epoch)
    if signum and step < self.run.stop_step:
      raise TrainingInterrupted(signum, step, self.run.total_steps)

  def _first_step_done(self, step: int, metrics) -> None:
    """Starts the epoch's clock; after the run's first step, its record."""
    jax.block_until_ready(metrics)
    self.throughput.start(step)
    if self.run_start is not None:
      self.writer.write("run", step, {
          "time_to_first_step_s": time.perf_counter() - self.run_start,
          **self.run.provenance})
      self.run_start = None

  def _stop_signal(self, synced: bool) -> int:
    """The signal that asks to stop, or 0.

    With several processes they must stop at the same step: they agree at
    steps where they wait for the devices anyway (logged steps).
    """
    if jax.process_count() == 1:
      return self.stop.signum or 0
    if not synced:
      return 0
    return int(np.max(multihost_utils.process_allgather(
        np.int32(self.stop.signum or 0))))

  def _log_train_metrics(self) -> None:
    """Fetches the pending step metrics, checks them, logs the last.

    Raises:
      NonFiniteLossError: naming the first step whose loss is not finite,
        with ``on_nonfinite_loss="stop"``.
    """
    if not self.pending:
      return
    steps, metrics = zip(*self.pending)
    metrics = jax.device_get(list(metrics))
    self.pending.clear()
    spe = self.run.steps_per_epoch
    for step, values in zip(steps, metrics):
      if np.isfinite(values["loss"]):
        continue
      message = (f"The training loss is {values['loss']} at step {step} "
                 f"(epoch {(step - 1) // spe + 1}).")
      if self.run.config.on_nonfinite_loss == "skip":
        logging.warning("%s The step's update was skipped.", message)
        continue
      self.writer.write("train", step, self._train_record(step, values))
      raise NonFiniteLossError(
          f"{message} Training stopped; the last checkpoint before it is "
          "kept. Lower the learning rate, or set "
          "--config.on_nonfinite_loss=skip to skip such steps.")
    record = self._train_record(steps[-1], metrics[-1])
    self.writer.write("train", steps[-1], record)
    self.progress.update(steps[-1] - (steps[-1] - 1) // spe * spe, {
        k: record[k] for k in ("loss", "beta", "images_per_sec")
        if k in record})

  def _train_record(self, step: int, values: dict) -> dict[str, float]:
    record = {k: float(v) for k, v in values.items()
              if k not in ("below_mean", "loss_below_mean")}
    record["epoch"] = step / self.run.steps_per_epoch
    images_per_sec = self.throughput.images_per_sec(step)
    if images_per_sec is not None:  # Not at the epoch's first step.
      record["images_per_sec"] = images_per_sec
    return record

  def _end_epoch(self, step: int, state: TrainState) -> None:
    """Evaluates when due and writes the epoch record."""
    run, config = self.run, self.run.config
    epoch = step // run.steps_per_epoch
    sums = jax.device_get(state.epoch_sums)
    num_steps = max(float(sums["steps"]), 1.0)
    below = float(sums["below_mean"]) / num_steps
    # Without phases="random" the phase is whether the loss was below.
    loss_below = float(sums.get("loss_below_mean", sums["below_mean"]))
    record = {"epoch": epoch, "train_loss": float(sums["loss"]) / num_steps,
              "epoch_time_s": time.perf_counter() - self.epoch_start}
    if controlled_names(config.optimizer):
      record.update(phase_below_fraction=below, phase_above_fraction=1 - below,
                    loss_below_mean_fraction=loss_below / num_steps)
    every = config.eval_every_epochs
    if every and (epoch % every == 0 or step == run.total_steps):
      for prefix, split in (("val", run.validation_split),
                            ("test", run.test_split)):
        if split is not None:
          record.update(evaluate(run.parallel, state, split,
                                 config.eval_batch_size, prefix))
    self.writer.write("epoch", step, record)
    logging.info("epoch %d: %s", epoch, json.dumps(record))

  def _save(self, step: int, state: TrainState, end_of_epoch: bool) -> None:
    """Saves a checkpoint, with the time the epoch has taken so far."""
    elapsed = 0.0 if end_of_epoch else time.perf_counter() - self.epoch_start
    self.run.checkpointer.save(step, state, epoch_elapsed_s=elapsed)
