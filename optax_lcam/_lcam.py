"""Loss-Controlled Asymmetric Momentum (LCAM).

Implementation of the optimizer of "Asymmetric Momentum: A Rethinking of
Gradient Descent" (https://arxiv.org/abs/2309.02130) by G. Zhang, D. Zhang,
S. Zhao, D. Liu, C. M. Toptan and H. Liu, exact to the authors' reference code
(repository ``hakumaicc/Asymmetric-Momentum-LCAM``).
"""

import numbers
from typing import Any, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

AVERAGING_MODES = ("epoch", "ema")

# The loss statistics are kept in float32 whatever the dtype of the parameters
# or of the incoming loss, so that bf16 models compare losses accurately and the
# state's dtypes never change between steps.
_STATS_DTYPE = jnp.float32
_MISSING = object()


class ScaleByLCAMState(NamedTuple):
  """State of the `GradientTransformation` returned by `scale_by_lcam`.

  Attributes:
    lcam_step: Number of updates done so far (the global step ``t`` of the
      next update), int32.
    momentum: The heavy-ball momentum buffer, a tree like the parameters.
    beta: The pending momentum coefficient, decided from the last finite loss
      (float32 scalar). With ``lag=True`` it is the coefficient the next update
      uses.
    loss_sum: With ``averaging="epoch"``, the sum of the current epoch's
      finite losses; with ``averaging="ema"``, their exponential moving
      average, not debiased (float32 scalar).
    loss_weight: With ``averaging="epoch"``, the number of losses in
      ``loss_sum``; with ``averaging="ema"``, the moving average's total
      weight. ``loss_sum / loss_weight`` is the running mean (float32
      scalar).
    below_mean: Whether the last finite loss was strictly below the running
      mean (bool scalar): the loss phase of the last step.
  """

  lcam_step: jax.Array
  momentum: optax.Updates
  beta: jax.Array
  loss_sum: jax.Array
  loss_weight: jax.Array
  below_mean: jax.Array


def _is_concrete_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_unit_interval(name: str, value: Any) -> None:
  if _is_concrete_number(value) and not 0.0 <= value < 1.0:
    raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


def _validate_hyperparams(
    beta_below, beta_above, beta_init, steps_per_epoch, averaging, ema_decay,
    start_step,
) -> None:
  """Checks the hyper-parameters that are concrete Python numbers.

  Traced values (from `optax.inject_hyperparams`) are not checked: a Python
  ``if`` on them would fail.
  """
  for name, value in (("beta_below", beta_below), ("beta_above", beta_above),
                      ("beta_init", beta_init), ("ema_decay", ema_decay)):
    _check_unit_interval(name, value)
  if averaging not in AVERAGING_MODES:
    raise ValueError(
        f"Unknown `averaging` {averaging!r}: use one of {AVERAGING_MODES}.")
  if averaging == "epoch" and steps_per_epoch is None:
    raise ValueError(
        'averaging="epoch" compares each loss with the mean of the current '
        "epoch's losses, so it needs `steps_per_epoch` (the number of updates "
        "in one epoch, e.g. ceil(num_train_examples / batch_size)). Pass it, "
        'or use averaging="ema", which needs no epoch length.')
  if _is_concrete_number(steps_per_epoch) and (
      steps_per_epoch <= 0 or int(steps_per_epoch) != steps_per_epoch):
    raise ValueError(
        "`steps_per_epoch` must be a positive integer, got "
        f"{steps_per_epoch!r}.")
  if _is_concrete_number(start_step) and start_step < 0:
    raise ValueError(f"`start_step` must be >= 0, got {start_step!r}.")


def _epoch_statistics(state: ScaleByLCAMState, loss, is_finite,
                      steps_per_epoch):
  """Adds ``loss`` to the running sum of the current epoch.

  The statistics are reset at the first step of every epoch (``t mod S == 0``),
  whether or not that step's loss is finite; a non-finite loss is not added.

  Returns:
    The new ``(loss_sum, loss_weight)``: the sum and number of the epoch's
    finite losses, this one included.
  """
  new_epoch = (state.lcam_step % steps_per_epoch) == 0
  loss_sum = jnp.where(new_epoch, 0.0, state.loss_sum)
  loss_weight = jnp.where(new_epoch, 0.0, state.loss_weight)
  loss_sum = jnp.where(is_finite, loss_sum + loss, loss_sum)
  loss_weight = jnp.where(is_finite, loss_weight + 1, loss_weight)
  return loss_sum, loss_weight


def _ema_statistics(state: ScaleByLCAMState, loss, is_finite, ema_decay):
  """Adds ``loss`` to an exponential moving average of the losses.

  Returns:
    The new ``(loss_sum, loss_weight)``: the moving average, not debiased, and
    its total weight ``1 - ema_decay ** n``, so that their ratio is the
    debiased average.
  """
  decay = jnp.asarray(ema_decay, _STATS_DTYPE)
  loss_sum = decay * state.loss_sum + (1 - decay) * loss
  loss_weight = decay * state.loss_weight + (1 - decay)
  return (jnp.where(is_finite, loss_sum, state.loss_sum),
          jnp.where(is_finite, loss_weight, state.loss_weight))


def running_mean(loss_sum: jax.Array, loss_weight: jax.Array) -> jax.Array:
  """The running mean of the losses, NaN before the first finite loss."""
  safe_weight = jnp.where(loss_weight > 0, loss_weight, 1.0)
  return jnp.where(loss_weight > 0, loss_sum / safe_weight, jnp.nan)


def _heavy_ball(updates, momentum, beta, nesterov, accumulator_dtype):
  """``b = beta * b + g``, with the beta cast to each leaf's dtype."""
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
  new_momentum = optax.tree.cast(new_momentum, accumulator_dtype)
  return directions, new_momentum


def scale_by_lcam(
    beta_below: jax.typing.ArrayLike = 0.9,
    beta_above: jax.typing.ArrayLike = 0.95,
    *,
    steps_per_epoch: Optional[int] = None,
    beta_init: jax.typing.ArrayLike = 0.9,
    averaging: str = "epoch",
    ema_decay: jax.typing.ArrayLike = 0.99,
    lag: bool = True,
    start_step: int = 0,
    nesterov: bool = False,
    accumulator_dtype: Optional[Any] = None,
    axis_name: Optional[str] = None,
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
  mean mini-batch loss before the update, without any weight-decay term.

  Ablations of the reference rule: ``averaging="ema"`` compares each loss
  with a debiased exponential moving average of the losses (decay
  ``ema_decay``, no reset, no epoch length needed) instead of the epoch's
  mean; ``lag=False`` uses the beta decided from the current loss at once;
  ``start_step`` uses plain momentum ``beta_init`` for the steps before it.

  A non-finite loss leaves the loss statistics (apart from the reset at the
  start of an epoch), the pending beta and the phase untouched; what to do with
  the update itself is the caller's business (see `optax.apply_if_finite`).

  Args:
    beta_below: Momentum used after a loss strictly below the running mean.
    beta_above: Momentum used after a loss at or above the running mean.
    steps_per_epoch: Number of updates per epoch (``ceil(N / batch_size)``
      when the last partial batch is kept). Required with
      ``averaging="epoch"``.
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
      the parameters.
    axis_name: If set, the loss is averaged over this named axis
      (``lax.pmean``) before use, so that replicas under ``jax.pmap`` or
      ``shard_map`` take the same decisions.

  Returns:
    A `optax.GradientTransformationExtraArgs` whose ``update`` takes the loss
    as the keyword argument ``value``.

  Raises:
    ValueError: For a concrete hyper-parameter out of range, an unknown
      ``averaging``, or ``averaging="epoch"`` without ``steps_per_epoch``.

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
  _validate_hyperparams(beta_below, beta_above, beta_init, steps_per_epoch,
                        averaging, ema_decay, start_step)
  if accumulator_dtype is not None:
    accumulator_dtype = jnp.dtype(accumulator_dtype)

  def init_fn(params: optax.Params) -> ScaleByLCAMState:
    return ScaleByLCAMState(
        lcam_step=jnp.zeros([], jnp.int32),
        momentum=optax.tree.zeros_like(params, dtype=accumulator_dtype),
        beta=jnp.asarray(beta_init, _STATS_DTYPE),
        loss_sum=jnp.zeros([], _STATS_DTYPE),
        loss_weight=jnp.zeros([], _STATS_DTYPE),
        below_mean=jnp.zeros([], jnp.bool_),
    )

  def update_fn(
      updates: optax.Updates,
      state: ScaleByLCAMState,
      params: Optional[optax.Params] = None,
      *,
      value: jax.typing.ArrayLike = _MISSING,
      **extra_args,
  ) -> tuple[optax.Updates, ScaleByLCAMState]:
    del params, extra_args
    if value is _MISSING or value is None:
      raise TypeError(
          "LCAM chooses its momentum from the training loss: pass the "
          "mini-batch loss to the update as `update(grads, state, params, "
          "value=loss)` (e.g. from `jax.value_and_grad`).")
    loss = jnp.asarray(value).astype(_STATS_DTYPE)
    if loss.shape != ():
      raise ValueError(
          f"`value` must be the scalar loss of the step, got shape {loss.shape}"
          "; average the per-example losses first.")
    if axis_name is not None:
      loss = lax.pmean(loss, axis_name)
    is_finite = jnp.isfinite(loss)

    if averaging == "epoch":
      loss_sum, loss_weight = _epoch_statistics(
          state, loss, is_finite, steps_per_epoch)
    else:
      loss_sum, loss_weight = _ema_statistics(
          state, loss, is_finite, ema_decay)
    mean = running_mean(loss_sum, loss_weight)
    below_mean = jnp.where(is_finite, loss < mean, state.below_mean)
    decided_beta = jnp.where(below_mean, beta_below, beta_above)
    new_beta = jnp.where(is_finite, decided_beta, state.beta).astype(
        _STATS_DTYPE)

    beta = state.beta if lag else new_beta
    beta = jnp.where(state.lcam_step < start_step, beta_init, beta)
    directions, momentum = _heavy_ball(
        updates, state.momentum, beta.astype(_STATS_DTYPE), nesterov,
        accumulator_dtype)
    new_state = ScaleByLCAMState(
        lcam_step=optax.safe_increment(state.lcam_step),
        momentum=momentum,
        beta=new_beta,
        loss_sum=loss_sum,
        loss_weight=loss_weight,
        below_mean=below_mean,
    )
    return directions, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lcam(
    learning_rate: optax.ScalarOrSchedule,
    beta_below: jax.typing.ArrayLike = 0.9,
    beta_above: jax.typing.ArrayLike = 0.95,
    *,
    weight_decay: jax.typing.ArrayLike = 0.0,
    steps_per_epoch: Optional[int] = None,
    beta_init: jax.typing.ArrayLike = 0.9,
    averaging: str = "epoch",
    ema_decay: jax.typing.ArrayLike = 0.99,
    lag: bool = True,
    start_step: int = 0,
    nesterov: bool = False,
    accumulator_dtype: Optional[Any] = None,
    axis_name: Optional[str] = None,
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

  Args:
    learning_rate: A fixed learning rate or an optax schedule of the step.
    beta_below: Momentum used after a loss strictly below the running mean.
    beta_above: Momentum used after a loss at or above the running mean.
    weight_decay: Coupled (L2) weight decay :math:`\lambda`, added to the
      gradient of every parameter before the momentum.
    steps_per_epoch: See `scale_by_lcam`.
    beta_init: See `scale_by_lcam`.
    averaging: See `scale_by_lcam`.
    ema_decay: See `scale_by_lcam`.
    lag: See `scale_by_lcam`.
    start_step: See `scale_by_lcam`.
    nesterov: See `scale_by_lcam`.
    accumulator_dtype: See `scale_by_lcam`.
    axis_name: See `scale_by_lcam`.

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
          accumulator_dtype=accumulator_dtype, axis_name=axis_name),
      optax.scale_by_learning_rate(learning_rate),
  )
