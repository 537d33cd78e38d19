"""The learning-rate schedules of the LCAM reference and its baselines."""

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULE_NAMES = ("step", "exponential", "cosine", "constant")


def step_decay(learning_rate: float, boundaries_epochs, decay_factor: float,
               steps_per_epoch: int) -> optax.Schedule:
  """The rate, x ``decay_factor`` after each epoch in ``boundaries_epochs``.

  Schedule A of the reference is ``step_decay(0.1, (31, 61, 91), 0.2, S)``:
  epochs 0-30 at 0.1, 31-60 at 0.02, 61-90 at 0.004, then 0.0008. A
  boundary may be a fraction of an epoch: the decay then comes at the step
  nearest to it (``round(epoch * S)``), e.g. (1.6, 3.2, 4.8) is schedule A
  scaled to 8 epochs.

  Raises:
    ValueError: two boundaries fall on the same step.
  """
  steps = [round(epoch * steps_per_epoch) for epoch in boundaries_epochs]
  if len(set(steps)) != len(steps):
    raise ValueError(f"boundaries_epochs {tuple(boundaries_epochs)} put two "
                     f"decays on the same step ({steps} at {steps_per_epoch} "
                     "steps an epoch): space them further apart.")
  return optax.piecewise_constant_schedule(
      learning_rate, dict.fromkeys(steps, decay_factor))


def constant_then_exponential(learning_rate: float, constant_epochs: int,
                              decay_per_step: float,
                              steps_per_epoch: int) -> optax.Schedule:
  """Constant for ``constant_epochs``, then x ``decay_per_step`` every step.

  Schedule B of the reference: 0.1 for 31 epochs, then the first step of epoch
  31 already uses ``0.1 * 0.99985``.
  """
  return optax.exponential_decay(
      learning_rate, transition_steps=1, decay_rate=decay_per_step,
      transition_begin=max(constant_epochs * steps_per_epoch - 1, 0))


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int,
                                  num_epochs: int) -> optax.Schedule:
  """The schedule named by ``config.name``, with an optional linear warm-up.

  The warm-up ramps the rate linearly from 0 to ``config.learning_rate`` over
  the first ``warmup_epochs``. The step and exponential schedules keep their
  decays at the epochs the config names (the warm-up replaces the start of
  their constant part), so the warm-up must end by their first decay; the
  cosine decay starts where the warm-up ends and ends with the run.

  Args:
    config: The ``schedule`` part of a training config.
    steps_per_epoch: Optimizer steps in one epoch.
    num_epochs: Length of the run (the end of the cosine decay).

  Returns:
    An optax schedule of the global step.

  Raises:
    ValueError: for an unknown name, or a warm-up that ends after the first
      decay of the step or exponential schedule.
  """
  total_steps = num_epochs * steps_per_epoch
  warmup_steps = round(config.warmup_epochs * steps_per_epoch)
  first_decay_epoch = None  # of the step and exponential schedules
  if config.name == "step":
    main = step_decay(config.learning_rate, config.boundaries_epochs,
                      config.decay_factor, steps_per_epoch)
    first_decay_epoch = min(config.boundaries_epochs, default=None)
  elif config.name == "exponential":
    main = constant_then_exponential(config.learning_rate,
                                     config.constant_epochs,
                                     config.decay_per_step, steps_per_epoch)
    first_decay_epoch = config.constant_epochs
  elif config.name == "cosine":
    alpha = config.final_learning_rate / config.learning_rate
    main = optax.cosine_decay_schedule(
        config.learning_rate, max(total_steps - warmup_steps, 1), alpha=alpha)
  elif config.name == "constant":
    main = optax.constant_schedule(config.learning_rate)
  else:
    raise ValueError(f"Unknown schedule {config.name!r}: use one of "
                     f"{SCHEDULE_NAMES}.")
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, config.learning_rate, warmup_steps)
  if config.name == "cosine":
    return optax.join_schedules([warmup, main], [warmup_steps])
  if (first_decay_epoch is not None
      and warmup_steps > first_decay_epoch * steps_per_epoch):
    raise ValueError(
        f"warmup_epochs={config.warmup_epochs} ends after the first decay "
        f"(after epoch {first_decay_epoch}): shorten the warm-up or decay "
        "later.")
  return warmup_then(warmup, main, warmup_steps)


def warmup_then(warmup: optax.Schedule, main: optax.Schedule,
                warmup_steps: int) -> optax.Schedule:
  """``warmup`` for the first ``warmup_steps``, then ``main`` of the same step.

  Unlike `optax.join_schedules`, which starts ``main`` at 0 after the
  boundary, ``main`` keeps counting from the run's first step, so its decay
  points do not move.

  Example:
    >>> warmup = optax.linear_schedule(0.0, 1.0, 2)
    >>> main = optax.piecewise_constant_schedule(1.0, {3: 0.5})
    >>> schedule = warmup_then(warmup, main, 2)
    >>> [float(schedule(step)) for step in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.5]
  """
  return lambda step: jnp.where(step < warmup_steps, warmup(step), main(step))
