"""The train and eval steps, written once with an optional axis name, and
their `jax.pmap` or `jax.jit` wrappers.

The per-device step is run either by `jax.pmap` over the local devices (the
train state unreplicated: ``in_axes=(None, 0), out_axes=(None, None)``) or by
`jax.jit` with the batch sharded over a device mesh (`wrap_steps`). Gradients,
the loss given to LCAM and the BatchNorm statistics are averaged over all
devices, and dropout masks are drawn per example of the global batch, so
results do not depend on the device count (up to the order of float32 sums).
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any, NamedTuple

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

import optax_lcam
from train import config as config_lib
from train import data
from train import optimizers
from train import schedules
from train import tasks

AXIS_NAME = "batch"


class TrainState(train_state.TrainState):
  """A Flax train state whose optimizer sees the loss (``value=``) of each step.

  Attributes:
    batch_stats: BatchNorm running statistics.
    rng: Raw key data of the run's base PRNG key; the key of step ``t`` is
      ``fold_in(rng, t)``, so that a resumed run draws the same numbers.
  """

  batch_stats: Any
  rng: jax.Array

  def apply_gradients(self, *, grads, value, **kwargs):
    """Applies one optimizer step, passing the loss to the optimizer."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params,
                                        value=value)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, **kwargs)


def create_train_state(model, tx, example_input: jax.Array,
                       seed: int) -> TrainState:
  """Initialises the model on one example's input (``(1, ...)``) and the
  optimizer, on the host's default device."""
  init_key, run_key = jax.random.split(jax.random.key(seed))

  @jax.jit
  def init():
    variables = model.init(init_key, example_input, train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(run_key))

  return init()


def _sum_over_devices(x, axis_name):
  return x if axis_name is None else lax.psum(x, axis_name)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the train and eval steps need besides the state and the batch."""

  model: Any
  learning_rate: Callable[[jax.Array], jax.Array]
  inputs: tasks.StepInputs  # the task's: batch, key -> inputs, labels
  controlled: tuple[str, ...]  # loss-controlled hyper-parameters, logged
  skip_nonfinite: bool
  axis_name: str | None


def _masked_sum(losses: jax.Array, mask: jax.Array) -> jax.Array:
  """The sum of ``losses`` where ``mask`` (per example or per character)."""
  return jnp.sum(jnp.where(mask, losses, 0.0))


def train_step(state: TrainState, batch: dict[str, jax.Array],
               step_config: StepConfig):
  """One optimizer step on one device's part of the global batch.

  The loss is the mean cross-entropy over what the mask marks (the real
  examples, or the predicted characters) in the whole global batch; it, the
  gradients and (through the model's ``bn_axis_name``) the BatchNorm
  statistics are reduced over ``step_config.axis_name`` when set.

  Returns:
    The new state, and the step's metrics (identical on every device).
  """
  axis_name = step_config.axis_name
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                state.step)
  # The same keys on every device: the model draws each example's dropout
  # mask by its index in the global batch (`models.ExampleDropout`).
  augment_key, dropout_key = jax.random.split(step_key)
  inputs, labels = step_config.inputs(batch, augment_key)
  mask = batch["mask"]
  num_real = _sum_over_devices(jnp.sum(mask, dtype=jnp.float32), axis_name)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, inputs,
        train=True, mask=mask, rngs={"dropout": dropout_key},
        mutable=["batch_stats"])
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels)
    return _masked_sum(losses, mask) / num_real, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  loss = _sum_over_devices(loss, axis_name)
  grads = _sum_over_devices(grads, axis_name)
  new_state = state.apply_gradients(
      grads=grads, value=loss,
      batch_stats=updates.get("batch_stats", state.batch_stats))

  metrics = {"loss": loss, "learning_rate": step_config.learning_rate(
      state.step)}
  if step_config.controlled:
    info = optax_lcam.loss_control_info(new_state.opt_state)
    metrics.update(mean_loss=info.mean_loss, below_mean=info.below_mean,
                   loss_below_mean=info.loss_below_mean)
    metrics.update({name: info.hyperparams[name]
                    for name in step_config.controlled})
  if step_config.skip_nonfinite:
    new_state = _drop_update_unless(jnp.isfinite(loss), new_state, state)
  return new_state, metrics


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
  """Sums of the loss, the correct predictions and the real examples (or
  predicted characters)."""
  inputs, labels = step_config.inputs(batch, None)
  logits = state.apply_fn({"params": state.params,
                           "batch_stats": state.batch_stats}, inputs,
                          train=False).astype(jnp.float32)
  mask = batch["mask"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels
  sums = {"loss": _masked_sum(losses, mask),
          "correct": jnp.sum(mask & correct, dtype=jnp.float32),
          "count": jnp.sum(mask, dtype=jnp.float32)}
  return _sum_over_devices(sums, step_config.axis_name)


class ParallelSteps(NamedTuple):
  """The steps wrapped for several devices, and how to feed them."""

  train_step: Callable  # (state, device_batch) -> (state, metrics)
  eval_step: Callable  # (state, device_batch) -> sums
  put_batch: Callable  # this process's numpy batch -> device batch
  state_sharding: NamedSharding  # where the state lives: on every device

  def put_state(self, state):
    """The host ``state`` on the devices, with the sharding the steps return."""
    return jax.tree.map(
        lambda x: _replicate(np.asarray(x), self.state_sharding), state)


def wrap_steps(mode: str, step_config: StepConfig, *,
               donate_state: bool = True) -> ParallelSteps:
  """Wraps the per-device steps with `jax.pmap` or `jax.jit` and shardings.

  Either way the state lives replicated on every device, with the sharding
  the steps return it with, so the step compiles once. The train step
  donates the state it is given (``donate_state``): its buffers hold the new
  state, so a device holds the train state once, not twice, and the state
  passed in is deleted. On a CPU host split into several devices the train
  step waits for itself (see `one_step_in_flight`).
  """
  mesh = Mesh(np.asarray(jax.devices()), (AXIS_NAME,))
  replicated = NamedSharding(mesh, P())
  donate = (0,) if donate_state else ()
  if mode == "pmap":
    config = dataclasses.replace(step_config, axis_name=AXIS_NAME)
    pmapped = functools.partial(jax.pmap, axis_name=AXIS_NAME,
                                in_axes=(None, 0))
    train = pmapped(functools.partial(train_step, step_config=config),
                    out_axes=(None, None), donate_argnums=donate)
    evaluation = pmapped(functools.partial(eval_step, step_config=config),
                         out_axes=None)

    def put_batch(batch):
      return data.shard_for_devices(batch, jax.local_device_count())
  else:
    config = dataclasses.replace(step_config, axis_name=None)
    batch_sharding = NamedSharding(mesh, P(AXIS_NAME))
    train = jax.jit(functools.partial(train_step, step_config=config),
                    out_shardings=(replicated, replicated),
                    donate_argnums=donate)
    evaluation = jax.jit(functools.partial(eval_step, step_config=config),
                         out_shardings=replicated)

    def put_batch(batch):
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
          batch)
  if jax.device_count() > 1 and jax.devices()[0].platform == "cpu":
    train = one_step_in_flight(train)
  return ParallelSteps(train, evaluation, put_batch, replicated)


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



def _replicate(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """The same host value on every device of ``sharding`` (of every process)."""
  return jax.make_array_from_callback(value.shape, sharding,
                                      lambda index: value[index])


def create_steps_and_state(config: ml_collections.ConfigDict,
                           train_split: data.Split | data.TextSplit,
                           steps_per_epoch: int, *,
                           donate_state: bool = True
                           ) -> tuple[ParallelSteps, TrainState]:
  """Builds the model, schedule and optimizer of ``config``; wraps the steps.

  Args:
    config: A training config.
    train_split: The training data (for the classes, the input's shape and,
      with ``normalization="dataset"``, the statistics).
    steps_per_epoch: Optimizer steps per epoch.
    donate_state: Whether the train step donates the state it is given (see
      `wrap_steps`).

  Returns:
    The steps wrapped for ``config.parallel``, and the initial train state on
    the host's default device.

  Raises:
    config_lib.ConfigError: the model, schedule or optimizer rejects its
      config.
  """
  task = tasks.create_task(config)
  with config_lib.as_config_errors("model"):
    model = task.create_model(
        config, train_split,
        axis_name=AXIS_NAME if config.parallel == "pmap" else None)
  with config_lib.as_config_errors("schedule"):
    learning_rate = schedules.create_learning_rate_schedule(
        config.schedule, steps_per_epoch, config.num_epochs)
  with config_lib.as_config_errors("optimizer"):
    tx = optimizers.create_optimizer(config.optimizer, learning_rate,
                                     steps_per_epoch, seed=config.seed)
  step_config = StepConfig(
      model=model, learning_rate=learning_rate,
      inputs=task.step_inputs(config, train_split),
      controlled=optimizers.controlled_names(config.optimizer),
      skip_nonfinite=config.on_nonfinite_loss == "skip", axis_name=None)
  state = create_train_state(model, tx,
                             task.example_input(config, train_split),
                             config.seed)
  return wrap_steps(config.parallel, step_config,
                          donate_state=donate_state), state
