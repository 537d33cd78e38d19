"""Gradient accumulation that gives LCAM the mean loss of the micro-batches."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lcam import _phase


class MultiStepsMeanLossState(NamedTuple):
  """State of `multi_steps_with_mean_loss`.

  Attributes:
    multi_steps (optax.MultiStepsState): The state of the wrapped
      `optax.MultiSteps`.
    micro_loss_sum (jax.Array): Sum of the losses of the micro-batches
      accumulated so far (float32 scalar).
  """

  multi_steps: optax.MultiStepsState
  micro_loss_sum: jax.Array


def _was_skipped(old: optax.MultiStepsState,
                 new: optax.MultiStepsState) -> jax.Array:
  """Whether `optax.MultiSteps` rejected the micro-step from ``old`` to ``new``.

  When its ``should_skip_update_fn`` says skip, MultiSteps leaves its counters
  as they were; any other micro-step moves ``mini_step`` on (modulo k), or,
  with k = 1, ``gradient_step``. Reading the counters, rather than calling the
  skip function a second time, agrees with MultiSteps by construction.
  """
  return jnp.logical_and(new.mini_step == old.mini_step,
                         new.gradient_step == old.gradient_step)


def multi_steps_with_mean_loss(
    opt: optax.GradientTransformation,
    every_k_schedule: int | optax.Schedule,
    **multi_steps_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  """`optax.MultiSteps` that passes the mean loss of the micro-batches on.

  `optax.MultiSteps` calls the inner update at every micro-step with that
  micro-step's ``value`` and keeps only the state of the emitting one, so an
  inner LCAM would compare the *last* micro-batch's loss with the mean. This
  wrapper sums the micro-batches' losses and hands the inner optimizer their
  mean, the loss of the whole accumulated batch, as ``value``. A micro-step
  that MultiSteps rejects through its ``should_skip_update_fn`` neither adds
  its loss nor counts, as MultiSteps leaves its own state untouched then.

  The inner optimizer updates once every k micro-steps, so an inner LCAM's
  ``steps_per_epoch`` counts these updates: ``ceil(N / (batch_size * k))`` for
  N examples in micro-batches of ``batch_size``. That is exact when k divides
  the number of micro-batches per epoch, ``ceil(N / batch_size)``; otherwise
  some updates straddle two epochs and LCAM's epochs drift from the data's.

  Args:
    opt: The inner optimizer, e.g. ``optax_lcam.lcam(...)``.
    every_k_schedule: Number of micro-steps per update (an int or a schedule
      of the update count), as for `optax.MultiSteps`.
    **multi_steps_kwargs: Other arguments of `optax.MultiSteps`.

  Returns:
    A `optax.GradientTransformationExtraArgs`; its update takes the
    micro-batch loss as ``value``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_lcam
    >>> opt = optax_lcam.multi_steps_with_mean_loss(
    ...     optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=10), 2)
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> for loss in [1.0, 3.0]:
    ...   _, state = opt.update(jnp.ones(1), state, params, value=loss)
    >>> float(optax_lcam.lcam_info(state).mean_loss)
    2.0
  """
  multi_steps = optax.MultiSteps(opt, every_k_schedule, **multi_steps_kwargs)

  def init_fn(params: optax.Params) -> MultiStepsMeanLossState:
    return MultiStepsMeanLossState(multi_steps.init(params),
                                   jnp.zeros([], jnp.float32))

  def update_fn(
      updates: optax.Updates,
      state: MultiStepsMeanLossState,
      params: optax.Params | None = None,
      *,
      value: jax.typing.ArrayLike | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, MultiStepsMeanLossState]:
    if value is None:
      raise TypeError(
          "Pass the micro-batch loss to the update as `value=loss`: it is "
          "averaged over the micro-batches and given to the inner optimizer. "
          f"{_phase.TRAIN_STATE_HINT}")
    loss_sum = state.micro_loss_sum + jnp.asarray(value).astype(jnp.float32)
    micro_steps_done = jnp.asarray(state.multi_steps.mini_step) + 1
    mean_loss = loss_sum / micro_steps_done.astype(jnp.float32)
    updates, new_multi_steps = multi_steps.update(
        updates, state.multi_steps, params, value=mean_loss, **extra_args)
    skipped = _was_skipped(state.multi_steps, new_multi_steps)
    emitted = new_multi_steps.mini_step == 0
    micro_loss_sum = jnp.where(emitted, 0.0, loss_sum)
    return updates, MultiStepsMeanLossState(
        new_multi_steps,
        jnp.where(skipped, state.micro_loss_sum, micro_loss_sum))

  # optax types `update` as taking any state; this one takes its own.
  return optax.GradientTransformationExtraArgs(
      init_fn, update_fn)  # type: ignore[arg-type]
