"""Loss-Controlled Asymmetric Momentum (LCAM).

Implementation of the optimizer of "Asymmetric Momentum: A Rethinking of
Gradient Descent" (https://arxiv.org/abs/2309.02130) by G. Zhang, D. Zhang,
S. Zhao, D. Liu, C. M. Toptan and H. Liu, exact to the authors' reference code
(repository ``hakumaicc/Asymmetric-Momentum-LCAM``).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_lcam import _phase

_MISSING_LOSS = (
    "LCAM chooses its momentum from the training loss: pass the mini-batch "
    "loss to the update as `update(grads, state, params, value=loss)` (e.g. "
    f"from `jax.value_and_grad`). {_phase.TRAIN_STATE_HINT}")


class ScaleByLCAMState(NamedTuple):
  """State of the `optax.GradientTransformation` returned by `scale_by_lcam`.

  Attributes:
    momentum (optax.Updates): The heavy-ball momentum buffer, a tree like the
      parameters.
    beta (jax.Array): The pending momentum coefficient, decided from the last
      finite loss (float32 scalar); ``beta_init`` before the first. With
      ``lag=True`` it is the coefficient the next update uses (from
      ``start_step`` on).
    loss_phase (LossPhaseState | RandomPhaseState): The loss statistics and the
      phase (`LossPhaseState`, or `RandomPhaseState` with ``phases="random"``),
      also readable as the properties below.
  """

  momentum: optax.Updates
  beta: jax.Array
  loss_phase: _phase.PhaseState

  @property
  def lcam_step(self) -> jax.Array:
    """jax.Array: Number of updates done so far (the global step ``t`` of the
    next update), int32."""
    return self.loss_phase.phase_step

  @property
  def loss_sum(self) -> jax.Array:
    """jax.Array: The epoch's sum of finite losses (rounded to float32), or the
    moving average with ``averaging="ema"``."""
    return self.loss_phase.loss_sum

  @property
  def loss_sum_compensation(self) -> jax.Array:
    """jax.Array: What ``loss_sum`` misses of the exact sum (float32)."""
    return self.loss_phase.loss_sum_compensation

  @property
  def loss_weight(self) -> jax.Array:
    """jax.Array: The number of losses in the sum, or the moving average's
    weight."""
    return self.loss_phase.loss_weight

  @property
  def below_mean(self) -> jax.Array:
    """jax.Array: Whether the last finite loss was strictly below the running
    mean, the phase in force (with ``phases="random"``, the last step's
    draw)."""
    return self.loss_phase.below_mean

  @property
  def loss_below_mean(self) -> jax.Array:
    """jax.Array: Whether the last finite loss was strictly below the running
    mean (``below_mean`` itself unless ``phases="random"``)."""
    return _phase.loss_below_mean_of(self.loss_phase)


def _check_unit_interval(name: str, value: Any) -> None:
  known = _phase.known_real(value)
  if known is not None and not 0.0 <= known < 1.0:
    raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


def _heavy_ball(updates, momentum, beta, nesterov):
  """``b = beta * b + g``, with the beta cast to each leaf's dtype.

  The new buffer keeps the old one's dtype (``accumulator_dtype``, or the
  parameters'), also when the updates come in a wider one (float32 updates of
  bfloat16 parameters), so that the state's dtypes never change.
  """
  def accumulate(g, m):
    return g + beta.astype(m.dtype) * m

  is_none = lambda x: x is None
  new_momentum = jax.tree.map(
      lambda g, m: None if g is None else accumulate(g, m),
      updates, momentum, is_leaf=is_none)
  if nesterov:
    directions = jax.tree.map(
        lambda g, m: None if g is None else accumulate(g, m),
        updates, new_momentum, is_leaf=is_none)
  else:
    directions = new_momentum
  directions = jax.tree.map(
      lambda d, g: None if g is None else d.astype(g.dtype),
      directions, updates, is_leaf=is_none)
  new_momentum = jax.tree.map(
      lambda b, m: None if b is None else b.astype(m.dtype),
      new_momentum, momentum, is_leaf=is_none)
  return directions, new_momentum


def scale_by_lcam(
    beta_below: jax.typing.ArrayLike = 0.9,
    beta_above: jax.typing.ArrayLike = 0.95,
    *,
    steps_per_epoch: int | None = None,
    beta_init: jax.typing.ArrayLike = 0.9,
    averaging: str = "epoch",
    ema_decay: jax.typing.ArrayLike = 0.99,
    lag: bool = True,
    start_step: int = 0,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    axis_name: str | None = None,
    phases: str = "loss",
    below_probability: optax.ScalarOrSchedule = 0.5,
    phase_seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Heavy-ball momentum whose coefficient is switched by the training loss.

  At step :math:`t` with loss :math:`l_t` and incoming update :math:`g_t`:

  .. math::

    b_t &= \beta_t b_{t-1} + g_t, \quad b_{-1} = 0, \\
    \bar l_t &= \mathrm{mean}\{l_s : s \text{ in the epoch of } t,
      s \le t\}, \\
    \beta_{t+1} &= \begin{cases} \beta_\text{below} & l_t < \bar l_t \\
      \beta_\text{above} & \text{otherwise,} \end{cases}

  and the output is :math:`b_t` (``nesterov=False``). So the loss of step
  :math:`t` picks the momentum of step :math:`t+1` (the one-step lag of the
  reference); :math:`\beta_0` is ``beta_init``. The first step of every epoch
  always picks ``beta_above`` (its loss is the mean), and the chosen beta
  carries over from one epoch to the next; only the loss statistics are reset.

  The loss of each step must be passed as ``update(..., value=loss)``: the
  mean mini-batch loss before the update, without any weight-decay term (a
  real scalar; a complex one is a TypeError).

  Ablations of the reference rule: ``averaging="ema"`` compares each loss
  with a debiased exponential moving average of the losses (decay
  ``ema_decay``, no reset, no epoch length needed) instead of the epoch's
  mean; ``lag=False`` uses the beta decided from the current loss at once;
  ``start_step`` uses plain momentum ``beta_init`` for the steps before it.
  ``phases="random"`` is a placebo of the rule: the phase of step :math:`t`
  is "below" with probability ``below_probability`` (a number, or a schedule
  evaluated at :math:`t`), drawn from a key made of ``phase_seed`` and
  :math:`t` alone (the state's step counter), so the phases are reproducible,
  the same on every replica and independent of the losses. The lag,
  ``start_step`` and ``beta_init`` act as with the loss, and the loss
  statistics are still kept: ``below_mean`` holds the draw, and
  ``loss_below_mean`` whether the loss was below the mean.

  Epochs are counted in updates: the statistics are reset every
  ``steps_per_epoch`` calls of ``update``. Under `optax.MultiSteps` or
  `multi_steps_with_mean_loss` with k micro-steps per update, pass
  ``ceil(N / (batch_size * k))`` for N examples in micro-batches of
  ``batch_size`` (exact when k divides the number of micro-batches per epoch).

  A non-finite loss leaves the loss statistics (apart from the reset at the
  start of an epoch), the pending beta and the phase untouched, and the step
  still counts. So when only the loss is non-finite, LCAM's own handling is
  enough. Do not wrap LCAM in `optax.apply_if_finite` to drop bad steps: on a
  step it skips, it keeps LCAM's whole state, step counter included, so LCAM's
  epochs drift from the data's by one step per skip. To drop a step's update,
  keep the new optimizer state's step counter and loss statistics and select
  only the old parameters and momentum buffer, e.g. ``jnp.where(ok, new,
  old)`` on those leaves with ``ok = jnp.isfinite(loss)`` (and finite
  gradients).

  Args:
    beta_below: Momentum used after a loss strictly below the running mean.
    beta_above: Momentum used after a loss at or above the running mean.
    steps_per_epoch: Number of optimizer updates per epoch, a positive
      integer (``ceil(N / batch_size)`` when the last partial batch is kept;
      ``ceil(N / (batch_size * k))`` with k accumulated micro-batches per
      update). Required with ``averaging="epoch"``.
    beta_init: Momentum of the first update (and of every update before
      ``start_step``).
    averaging: ``"epoch"`` (the reference: mean of the current epoch's losses)
      or ``"ema"`` (debiased exponential moving average of all losses).
    ema_decay: Decay of the moving average with ``averaging="ema"``.
    lag: If True (the reference), the loss of step ``t`` sets the momentum of
      step ``t + 1``; if False, the momentum of step ``t`` itself.
    start_step: The rule switches on at this step; before it the momentum is
      ``beta_init``.
    nesterov: Whether to use Nesterov momentum (``beta * b_t + g_t``).
    accumulator_dtype: Optional dtype of the momentum buffer; if None, that of
      the parameters. The buffer keeps it whatever the dtype of the incoming
      updates.
    axis_name: If set, the loss is averaged over this named axis
      (``lax.pmean``) before use, so that replicas under ``jax.pmap`` or
      ``shard_map`` take the same decisions.
    phases: ``"loss"`` (the reference: the loss decides the phase) or
      ``"random"`` (each step's phase is drawn; a placebo). The loss is still
      needed with either.
    below_probability: With ``phases="random"``, the probability that a
      step's phase is "below", in [0, 1]: a number or a schedule of the step.
    phase_seed: With ``phases="random"``, the seed of the draws, an integer
      in [0, 2**31).

  Returns:
    A `optax.GradientTransformationExtraArgs` whose ``update`` takes the loss
    as the keyword argument ``value``.

  Raises:
    ValueError: For a hyper-parameter out of range (a number, or a 0-d NumPy
      or JAX array that is not traced: traced values, as under
      `optax.inject_hyperparams` inside `jax.jit`, are not checked), a
      ``steps_per_epoch`` that is not a positive integer (a string or a bool
      included), an unknown ``averaging`` or ``phases``, or
      ``averaging="epoch"`` without ``steps_per_epoch``.
    TypeError: For a ``below_probability`` that is neither a number nor a
      schedule.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lcam
    >>> opt = optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=4)
    >>> params = jnp.array([0.0])
    >>> state = opt.init(params)
    >>> for loss in [2.0, 1.0, 3.0]:
    ...   updates, state = opt.update(jnp.array([1.0]), state, value=loss)
    ...   print(float(state.beta))
    0.8999999761581421
    0.949999988079071
    0.8999999761581421

  References:
    Zhang et al., `Asymmetric Momentum: A Rethinking of Gradient Descent
    <https://arxiv.org/abs/2309.02130>`_, 2023
  """
  for name, value in (("beta_below", beta_below), ("beta_above", beta_above),
                      ("beta_init", beta_init)):
    _check_unit_interval(name, value)
  rule = _phase.PhaseRule(
      steps_per_epoch=steps_per_epoch, averaging=averaging,
      ema_decay=ema_decay, lag=lag, start_step=start_step,
      axis_name=axis_name, phases=phases,
      below_probability=below_probability, phase_seed=phase_seed)
  _phase.validate_rule(rule)
  if accumulator_dtype is not None:
    accumulator_dtype = jnp.dtype(accumulator_dtype)

  betas_are_constants = all(map(_phase.is_concrete_number,
                                 (beta_below, beta_above, beta_init)))

  def pending_beta(state: ScaleByLCAMState, initial_beta: jax.Array):
    """The beta decided at the last step: ``state.beta``.

    With betas known when the optimizer is built, it is chosen again from the
    state's phase flags. The update then multiplies by a selection among
    constants, which XLA's CPU code vectorizes; it does not vectorize a
    multiplication by a float read from the state on leaves of odd length.
    The value is the same: ``state.beta`` was chosen from these flags.
    """
    if not betas_are_constants:
      return state.beta
    return _phase.phase_values(state.loss_phase, beta_below, beta_above,
                               undecided=initial_beta)

  def init_fn(params: optax.Params) -> ScaleByLCAMState:
    return ScaleByLCAMState(
        momentum=optax.tree.zeros_like(params, dtype=accumulator_dtype),
        beta=jnp.asarray(beta_init, _phase.STATS_DTYPE),
        loss_phase=_phase.init(rule),
    )

  def update_fn(
      updates: optax.Updates,
      state: ScaleByLCAMState,
      params: optax.Params | None = None,
      *,
      value: jax.typing.ArrayLike | None = None,
      **extra_args,
  ) -> tuple[optax.Updates, ScaleByLCAMState]:
    del params, extra_args
    loss = _phase.loss_from_value(value, axis_name, _MISSING_LOSS)
    loss_phase = _phase.update(state.loss_phase, loss, rule)
    initial_beta = jnp.asarray(beta_init, _phase.STATS_DTYPE)
    new_beta = _phase.phase_values(loss_phase, beta_below, beta_above,
                                   undecided=initial_beta)
    beta = _phase.values_in_force(state.loss_phase.phase_step,
                                  pending_beta(state, initial_beta),
                                  new_beta, initial_beta, rule)
    directions, momentum = _heavy_ball(updates, state.momentum, beta,
                                       nesterov)
    return directions, ScaleByLCAMState(momentum=momentum, beta=new_beta,
                                        loss_phase=loss_phase)

  # optax types `update` as taking any state; this one takes its own.
  return optax.GradientTransformationExtraArgs(
      init_fn, update_fn)  # type: ignore[arg-type]


def lcam(
    learning_rate: optax.ScalarOrSchedule,
    beta_below: jax.typing.ArrayLike = 0.9,
    beta_above: jax.typing.ArrayLike = 0.95,
    *,
    weight_decay: float | jax.Array = 0.0,
    steps_per_epoch: int | None = None,
    beta_init: jax.typing.ArrayLike = 0.9,
    averaging: str = "epoch",
    ema_decay: jax.typing.ArrayLike = 0.99,
    lag: bool = True,
    start_step: int = 0,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    axis_name: str | None = None,
    phases: str = "loss",
    below_probability: optax.ScalarOrSchedule = 0.5,
    phase_seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with Loss-Controlled Asymmetric Momentum (LCAM).

  The optimizer of the LCAM reference: coupled weight decay on every parameter
  (:math:`d_t = g_t + \lambda \theta_t`), then `scale_by_lcam`, then the
  learning rate: :math:`\theta_{t+1} = \theta_t - \eta_t b_t`. With
  ``beta_below == beta_above == beta`` it is exactly
  ``optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(
  learning_rate, momentum=beta))``.

  Pass the mini-batch loss to every update as ``value=loss``. Which of the two
  coefficients gets the larger value is the experiment: the paper favours
  ``beta_below > beta_above`` ("sparse" priority) on some datasets and the
  reverse on others.

  ``steps_per_epoch`` counts optimizer updates, not micro-batches: with
  `multi_steps_with_mean_loss` (or `optax.MultiSteps`) and k micro-steps per
  update it is ``ceil(N / (batch_size * k))``. Do not wrap LCAM in
  `optax.apply_if_finite`: it freezes LCAM's step counter on the steps it
  skips, and LCAM's epochs then drift from the data's. LCAM already ignores a
  non-finite loss; see `scale_by_lcam` for dropping a step's update.

  Args:
    learning_rate: A fixed learning rate or an optax schedule of the step.
    beta_below: Momentum used after a loss strictly below the running mean.
    beta_above: Momentum used after a loss at or above the running mean.
    weight_decay: Coupled (L2) weight decay :math:`\lambda`, added to the
      gradient of every parameter before the momentum.
    steps_per_epoch: Number of optimizer updates per epoch; see
      `scale_by_lcam`.
    beta_init: See `scale_by_lcam`.
    averaging: See `scale_by_lcam`.
    ema_decay: See `scale_by_lcam`.
    lag: See `scale_by_lcam`.
    start_step: See `scale_by_lcam`.
    nesterov: See `scale_by_lcam`.
    accumulator_dtype: See `scale_by_lcam`.
    axis_name: See `scale_by_lcam`.
    phases: See `scale_by_lcam`.
    below_probability: See `scale_by_lcam`.
    phase_seed: See `scale_by_lcam`.

  Returns:
    The corresponding `optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lcam
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=10)
    >>> params = jnp.array([1., 2., 3.])
    >>> opt_state = solver.init(params)
    >>> for _ in range(3):
    ...   loss, grad = jax.value_and_grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params,
    ...                                      value=loss)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.3f}")
    8.960
    2.962
    0.028

  References:
    Zhang et al., `Asymmetric Momentum: A Rethinking of Gradient Descent
    <https://arxiv.org/abs/2309.02130>`_, 2023
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      scale_by_lcam(
          beta_below, beta_above, steps_per_epoch=steps_per_epoch,
          beta_init=beta_init, averaging=averaging, ema_decay=ema_decay,
          lag=lag, start_step=start_step, nesterov=nesterov,
          accumulator_dtype=accumulator_dtype, axis_name=axis_name,
          phases=phases, below_probability=below_probability,
          phase_seed=phase_seed),
      optax.scale_by_learning_rate(learning_rate),
  )
