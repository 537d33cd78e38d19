"""The loss-phase rule of LCAM, shared by `scale_by_lcam` and `loss_controlled`.

Each step's loss is compared with the running mean of the losses (the current
epoch's mean, or a debiased moving average); a loss strictly below it puts
training in the "below" phase, any other finite loss in the "above" phase. The
phase of step ``t`` picks the hyper-parameters of step ``t + 1`` (or of step
``t`` itself without the one-step lag). This module holds the statistics and
the decision; what a phase selects is up to its caller.

With ``phases="random"`` (a placebo of the rule) the phase of step ``t`` is
drawn instead, "below" with probability ``below_probability``, from a key
made of ``phase_seed`` and ``t`` alone; the statistics are still kept, and
whether the loss was below the mean is recorded beside the decision.
"""

import numbers
from typing import Any, NamedTuple, TypeGuard

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

AVERAGING_MODES = ("epoch", "ema")
# How the phase is decided: by the loss (LCAM), or drawn at random (placebo).
PHASE_MODES = ("loss", "random")

# The loss statistics are kept in float32 whatever the dtype of the parameters
# or of the incoming loss, so that bf16 models compare losses accurately and the
# state's dtypes never change between steps.
STATS_DTYPE = jnp.float32

# Ends the "pass the loss as `value=`" errors: the loss may have been passed,
# and dropped on the way by Flax's TrainState.
TRAIN_STATE_HINT = (
    "Flax's `TrainState.apply_gradients` does not pass extra arguments such "
    "as `value` on to the optimizer: use the subclass of `TrainState` whose "
    "`apply_gradients` does, in the usage guide's section \"Flax linen "
    '`TrainState`" (docs/usage.md).')

# The epoch mean is compared exactly for epochs of up to this many steps.
_EXACT_MAX_STEPS = 2 ** 16


class LossPhaseState(NamedTuple):
  """The loss statistics and the phase of the last step.

  Attributes:
    phase_step (jax.Array): Number of steps seen so far (the global step ``t``
      of the next update), int32.
    loss_sum (jax.Array): With ``averaging="epoch"``, the sum of the current
      epoch's finite losses, rounded to float32; with ``averaging="ema"``, their
      exponential moving average, not debiased (float32 scalar).
    loss_sum_compensation (jax.Array): With ``averaging="epoch"``, what
      ``loss_sum`` misses of the exact sum (a compensated, double-float32 sum);
      zero with ``averaging="ema"`` (float32 scalar).
    loss_weight (jax.Array): With ``averaging="epoch"``, the number of losses in
      the sum; with ``averaging="ema"``, the moving average's total weight. The
      running mean is ``(loss_sum + loss_sum_compensation) / loss_weight``
      (float32 scalar).
    below_mean (jax.Array): Whether the last finite loss was strictly below the
      running mean (bool scalar): the loss phase in force.
    phase_decided (jax.Array): Whether any finite loss has been seen, i.e.
      whether ``below_mean`` holds a decision yet (bool scalar).
  """

  phase_step: jax.Array
  loss_sum: jax.Array
  loss_sum_compensation: jax.Array
  loss_weight: jax.Array
  below_mean: jax.Array
  phase_decided: jax.Array


class RandomPhaseState(NamedTuple):
  """The phase state of ``phases="random"``: a `LossPhaseState` plus a flag.

  A type of its own, so that the default rule's state keeps its leaves (and
  the checkpoints that hold it their tree).

  Attributes:
    phase_step (jax.Array): As in `LossPhaseState`; the draw of step ``t`` uses
      ``t``.
    loss_sum (jax.Array): As in `LossPhaseState`.
    loss_sum_compensation (jax.Array): As in `LossPhaseState`.
    loss_weight (jax.Array): As in `LossPhaseState`.
    below_mean (jax.Array): The phase in force: the random decision of the last
      step (bool scalar).
    phase_decided (jax.Array): Whether any step has been drawn (bool scalar).
    loss_below_mean (jax.Array): Whether the last finite loss was strictly below
      the running mean (bool scalar), the decision ``phases="loss"`` would take.
  """

  phase_step: jax.Array
  loss_sum: jax.Array
  loss_sum_compensation: jax.Array
  loss_weight: jax.Array
  below_mean: jax.Array
  phase_decided: jax.Array
  loss_below_mean: jax.Array


PhaseState = LossPhaseState | RandomPhaseState


class PhaseRule(NamedTuple):
  """The options of the rule (Python values, fixed when the optimizer is made).

  See `scale_by_lcam` for their meaning.
  """

  steps_per_epoch: int | None = None
  averaging: str = "epoch"
  ema_decay: jax.typing.ArrayLike = 0.99
  lag: bool = True
  start_step: int = 0
  axis_name: str | None = None
  phases: str = "loss"
  below_probability: optax.ScalarOrSchedule = 0.5
  phase_seed: jax.typing.ArrayLike = 0


def is_concrete_number(x: Any) -> TypeGuard[float]:
  """Whether ``x`` is a Python or NumPy real number (not a bool, not traced)."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_traced(x: Any) -> bool:
  """Whether ``x`` is a traced value, whose value is not known yet.

  A hyper-parameter of `optax.inject_hyperparams` is one inside `jax.jit`.
  """
  return isinstance(x, jax.core.Tracer)


def known_real(x: Any) -> float | int | None:
  """``x``'s value, when it is a real number known now; else None.

  Args:
    x: A hyper-parameter as given to a factory.

  Returns:
    A Python int or float for a Python or NumPy integer or float and for a
    0-d NumPy or concrete JAX array of such a dtype; None for a traced value
    (see `is_traced`), an array spread over several hosts, a bool, a complex
    number and anything else, so that checks made with it are the same for
    every kind of number.
  """
  if is_traced(x) or not isinstance(
      x, (numbers.Number, np.ndarray, np.generic, jax.Array)):
    return None
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return None
  value = np.asarray(x)
  if value.shape != ():
    return None
  if jnp.issubdtype(value.dtype, jnp.integer):
    return int(value)
  if jnp.issubdtype(value.dtype, jnp.floating):
    return float(value)
  return None


def starts_at_first_step(rule: PhaseRule) -> bool:
  """Whether ``rule.start_step`` is known, when tracing, to be 0."""
  return is_concrete_number(rule.start_step) and rule.start_step == 0


def validate_rule(rule: PhaseRule) -> None:
  """Raises a ValueError for options of the rule that cannot work.

  Numbers are checked whatever their kind (Python, NumPy, or 0-d concrete
  arrays). Traced values (from `optax.inject_hyperparams` under `jax.jit`) are
  not: a Python ``if`` on them would fail.
  """
  if rule.averaging not in AVERAGING_MODES:
    raise ValueError(
        f"Unknown `averaging` {rule.averaging!r}: use one of "
        f"{AVERAGING_MODES}.")
  if rule.averaging == "epoch" and rule.steps_per_epoch is None:
    raise ValueError(
        'averaging="epoch" compares each loss with the mean of the current '
        "epoch's losses, so it needs `steps_per_epoch` (the number of updates "
        "in one epoch, e.g. ceil(num_train_examples / batch_size)). Pass it, "
        'or use averaging="ema", which needs no epoch length.')
  steps = rule.steps_per_epoch
  if steps is not None and not is_traced(steps):
    known_steps = known_real(steps)
    if known_steps is None or known_steps <= 0 or not float(
        known_steps).is_integer():
      raise ValueError(
          f"`steps_per_epoch` must be a positive integer, got {steps!r}.")
  ema_decay = known_real(rule.ema_decay)
  if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"`ema_decay` must be in [0, 1), got {rule.ema_decay!r}.")
  start_step = known_real(rule.start_step)
  if start_step is not None and start_step < 0:
    raise ValueError(f"`start_step` must be >= 0, got {rule.start_step!r}.")
  _validate_random_options(rule)


def _validate_random_options(rule: PhaseRule) -> None:
  """The checks of ``phases``, ``below_probability`` and ``phase_seed``."""
  if not isinstance(rule.phases, str) or rule.phases not in PHASE_MODES:
    raise ValueError(
        f"Unknown `phases` {rule.phases!r}: use one of {PHASE_MODES} "
        '("random" draws each phase, a placebo of the loss rule).')
  probability = rule.below_probability
  if isinstance(probability, (bool, str)):
    raise TypeError(
        "`below_probability` must be a number in [0, 1] or a schedule of the "
        f"step, got {probability!r}.")
  known_probability = known_real(probability)
  if known_probability is not None and not 0.0 <= known_probability <= 1.0:
    raise ValueError(
        f"`below_probability` must be in [0, 1], got {probability!r}.")
  seed = rule.phase_seed
  known_seed = known_real(seed)
  if isinstance(seed, bool) or (known_seed is not None and (
      not float(known_seed).is_integer() or not 0 <= known_seed < 2 ** 31)):
    raise ValueError(
        f"`phase_seed` must be an integer in [0, 2**31), got {seed!r}.")


def init(rule: PhaseRule) -> PhaseState:
  """The phase state before the first step: no loss seen, no decision.

  A `LossPhaseState` with ``phases="loss"``, a `RandomPhaseState` with
  ``phases="random"``.
  """
  state = LossPhaseState(
      phase_step=jnp.zeros([], jnp.int32),
      loss_sum=jnp.zeros([], STATS_DTYPE),
      loss_sum_compensation=jnp.zeros([], STATS_DTYPE),
      loss_weight=jnp.zeros([], STATS_DTYPE),
      below_mean=jnp.zeros([], jnp.bool_),
      phase_decided=jnp.zeros([], jnp.bool_),
  )
  if rule.phases == "random":
    return RandomPhaseState(*state, loss_below_mean=jnp.zeros([], jnp.bool_))
  return state


def loss_below_mean_of(state: PhaseState) -> jax.Array:
  """Whether the last finite loss was strictly below the running mean.

  The phase itself with ``phases="loss"``; with ``phases="random"``, the
  comparison recorded beside the drawn phase.
  """
  if isinstance(state, RandomPhaseState):
    return state.loss_below_mean
  return state.below_mean


def loss_from_value(value: Any, axis_name: str | None,
                    missing_message: str) -> jax.Array:
  """The step's loss as a float32 scalar, averaged over ``axis_name`` if set.

  Args:
    value: The ``value`` passed to ``update`` (None when it was not passed).
    axis_name: Named axis to average the loss over (``lax.pmean``), or None.
    missing_message: The TypeError's message when ``value`` is None.

  Returns:
    The loss, a float32 scalar.

  Raises:
    TypeError: When there is no loss, or it is complex.
    ValueError: When the loss is not a scalar.
  """
  if value is None:
    raise TypeError(missing_message)
  if jnp.iscomplexobj(value):
    raise TypeError(
        "`value` must be the step's loss, a real number, got a complex one "
        f"({jnp.result_type(value)}).")
  loss = jnp.asarray(value).astype(STATS_DTYPE)
  if loss.shape != ():
    raise ValueError(
        f"`value` must be the scalar loss of the step, got shape {loss.shape}"
        "; average the per-example losses first.")
  if axis_name is not None:
    loss = lax.pmean(loss, axis_name)
  return loss


def running_mean(loss_sum: jax.Array, loss_weight: jax.Array,
                 loss_sum_compensation: jax.typing.ArrayLike = 0.0
                 ) -> jax.Array:
  """The running mean of the losses, NaN before the first finite loss.

  Args:
    loss_sum: The (rounded) sum or moving average of the losses.
    loss_weight: Their number, or the moving average's total weight.
    loss_sum_compensation: What ``loss_sum`` misses of the exact sum.

  Returns:
    ``(loss_sum + loss_sum_compensation) / loss_weight``, or NaN when the
    weight is zero.
  """
  safe_weight = jnp.where(loss_weight > 0, loss_weight, 1.0)
  mean = (loss_sum + loss_sum_compensation) / safe_weight
  return jnp.where(loss_weight > 0, mean, jnp.nan)


def mean_of(state: PhaseState) -> jax.Array:
  """The running mean the last finite loss was compared with."""
  return running_mean(state.loss_sum, state.loss_weight,
                      state.loss_sum_compensation)


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``a + b`` as ``s + e`` exactly, ``s`` the rounded sum (Knuth's TwoSum).

  Additions only, so no fused multiply-add can change it.
  """
  s = a + b
  b_virtual = s - a
  a_virtual = s - b_virtual
  return s, (a - a_virtual) + (b - b_virtual)


def _split_float32(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``x = head + tail`` exactly; ``head`` keeps x's top 8 significant bits."""
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  head = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFF0000), STATS_DTYPE)
  return head, x - head


def _is_below_epoch_mean(loss, loss_sum, compensation, count) -> jax.Array:
  """``loss < (loss_sum + compensation) / count``, without rounding the mean.

  The sign of ``loss_sum + compensation - count * loss`` is computed with
  error-free transformations: the loss is split into three parts of at most 8
  significant bits, whose products with an integer count below 2**16 are exact
  in float32, and the five terms are added with TwoSum. Comparing with a
  rounded float32 mean would get ties within half an ulp of the mean wrong.
  """
  high, rest = _split_float32(loss)
  middle, low = _split_float32(rest)
  total, error = loss_sum, compensation
  for part in (high, middle, low):
    total, part_error = _two_sum(total, -count * part)
    error = error + part_error
  return total + error > 0


def _add_to_epoch(state: PhaseState, loss, is_finite, steps_per_epoch):
  """The epoch's statistics with ``loss`` added, reset at an epoch's start.

  The statistics are reset at the first step of every epoch (``t mod S ==
  0``), whether or not that step's loss is finite; a non-finite loss is not
  added. The sum is compensated: ``loss_sum + loss_sum_compensation`` is the
  exact sum to about 48 bits, ``loss_sum`` alone its float32 rounding.
  """
  new_epoch = (state.phase_step % steps_per_epoch) == 0
  old_sum = jnp.where(new_epoch, 0.0, state.loss_sum)
  old_compensation = jnp.where(new_epoch, 0.0, state.loss_sum_compensation)
  old_weight = jnp.where(new_epoch, 0.0, state.loss_weight)
  new_sum, error = _two_sum(old_sum, loss)
  new_sum, new_compensation = _two_sum(new_sum, old_compensation + error)
  return (jnp.where(is_finite, new_sum, old_sum),
          jnp.where(is_finite, new_compensation, old_compensation),
          jnp.where(is_finite, old_weight + 1, old_weight))


def _add_to_ema(state: PhaseState, loss, is_finite, ema_decay):
  """The moving average with ``loss`` added (unchanged for a non-finite one).

  Returns the moving average, not debiased, a zero compensation, and its total
  weight ``1 - ema_decay ** n``, so that their ratio is the debiased average.
  """
  decay = jnp.asarray(ema_decay, STATS_DTYPE)
  new_sum = decay * state.loss_sum + (1 - decay) * loss
  new_weight = decay * state.loss_weight + (1 - decay)
  return (jnp.where(is_finite, new_sum, state.loss_sum),
          state.loss_sum_compensation,
          jnp.where(is_finite, new_weight, state.loss_weight))


def random_phase(step: jax.Array, rule: PhaseRule) -> jax.Array:
  """The phase ``phases="random"`` draws for step ``step``: True for "below".

  True with probability ``rule.below_probability`` (a schedule is evaluated
  at ``step``), from the key ``fold_in(key(phase_seed), step)``: the same on
  every replica and for any losses.

  Args:
    step: The step's index ``t`` (the phase step before the update), int32.
    rule: The options of the rule.

  Returns:
    A bool scalar.
  """
  below_probability = rule.below_probability
  probability = (below_probability(step) if callable(below_probability)
                 else below_probability)
  seed = jnp.asarray(rule.phase_seed).astype(jnp.uint32)
  key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.random.uniform(key, (), STATS_DTYPE) < jnp.asarray(
      probability, STATS_DTYPE)


def update(state: PhaseState, loss: jax.Array,
           rule: PhaseRule) -> PhaseState:
  """Adds the step's loss to the statistics and decides the phase.

  A non-finite loss leaves the statistics (apart from the reset at the start
  of an epoch) and the loss's phase untouched; the step counter always
  advances. With ``phases="random"`` the phase of every step is drawn (see
  `random_phase`), whatever its loss.

  Args:
    state: The phase state before the step.
    loss: The step's loss, a float32 scalar (see `loss_from_value`).
    rule: The options of the rule.

  Returns:
    The phase state after the step; its ``below_mean`` is the decision.
  """
  is_finite = jnp.isfinite(loss)
  if rule.averaging == "epoch":
    loss_sum, compensation, weight = _add_to_epoch(
        state, loss, is_finite, rule.steps_per_epoch)
    below = _is_below_epoch_mean(loss, loss_sum, compensation, weight)
  else:
    loss_sum, compensation, weight = _add_to_ema(
        state, loss, is_finite, rule.ema_decay)
    below = loss < running_mean(loss_sum, weight)
  loss_below_mean = jnp.where(is_finite, below, loss_below_mean_of(state))
  new_state = LossPhaseState(
      phase_step=jnp.asarray(optax.safe_increment(state.phase_step)),
      loss_sum=loss_sum,
      loss_sum_compensation=compensation,
      loss_weight=weight,
      below_mean=loss_below_mean,
      phase_decided=jnp.logical_or(state.phase_decided, is_finite),
  )
  if rule.phases == "loss":
    return new_state
  return RandomPhaseState(
      *new_state._replace(
          below_mean=random_phase(state.phase_step, rule),
          phase_decided=jnp.ones([], jnp.bool_)),
      loss_below_mean=loss_below_mean)


def phase_values(state: PhaseState, below: Any, above: Any,
                 undecided: Any) -> Any:
  """The values the phase selects, ``undecided`` before any finite loss.

  Args:
    state: A phase state.
    below: The values of the phase below the mean.
    above: The values of the phase at or above the mean (same structure).
    undecided: The values before the first decision (same structure, arrays).

  Returns:
    ``below`` or ``above`` by ``state.below_mean``, or ``undecided``; each
    leaf cast to the dtype of its ``undecided`` leaf.
  """
  def select(b, a, u):
    value = jnp.where(state.below_mean, b, a)
    value = jnp.where(state.phase_decided, value, u)
    return value.astype(jnp.result_type(u))
  return jax.tree.map(select, below, above, undecided)


def values_in_force(step: jax.Array, pending: Any, decided: Any, initial: Any,
                    rule: PhaseRule) -> Any:
  """The values a step uses: lag, and the start of the rule.

  Args:
    step: The step's index ``t`` (the phase step before the update).
    pending: The values decided before this step (from the loss of ``t - 1``).
    decided: The values decided from this step's loss.
    initial: The values before ``rule.start_step``.
    rule: The options of the rule.

  Returns:
    ``initial`` before ``start_step``, else ``pending`` with the one-step lag
    and ``decided`` without it; cast like ``initial``.
  """
  chosen = pending if rule.lag else decided
  def in_force(c, i):
    # A step is never below 0; comparing it with 0 would put an integer into
    # the caller's element-wise loops, which XLA's CPU code then does not
    # vectorize.
    if not starts_at_first_step(rule):
      c = jnp.where(step < rule.start_step, i, c)
    return jnp.asarray(c).astype(jnp.result_type(i))
  return jax.tree.map(in_force, chosen, initial)
