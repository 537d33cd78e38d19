"""Loss control for any optax optimizer: LCAM's phase rule, any hyper-parameter.

LCAM switches the momentum of SGD between two values by comparing each
mini-batch loss with the running mean of the losses. `loss_controlled` applies
the same rule to the hyper-parameters of any optimizer made by
`optax.inject_hyperparams`: each loss phase gets its own values.
"""

from collections.abc import Mapping
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lcam import _phase

_INJECTED_STATES = (optax.InjectStatefulHyperparamsState,
                    optax.InjectHyperparamsState)

_MISSING_LOSS = (
    "loss_controlled chooses the hyper-parameters from the training loss: "
    "pass the mini-batch loss to the update as `update(grads, state, params, "
    f"value=loss)` (e.g. from `jax.value_and_grad`). {_phase.TRAIN_STATE_HINT}")

_HOW_TO_INJECT = (
    "Build the inner optimizer with `optax.inject_hyperparams`, e.g. "
    "`optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)`: "
    "loss_controlled sets the hyper-parameters that it keeps in its state.")


class LossControlledState(NamedTuple):
  """State of the `optax.GradientTransformation` returned by `loss_controlled`.

  Attributes:
    loss_phase (LossPhaseState | RandomPhaseState): The loss statistics and the
      phase (`LossPhaseState`, or `RandomPhaseState` with ``phases="random"``).
    controlled_state (optax.OptState): The state of the inner optimizer, made by
      `optax.inject_hyperparams`. Its ``hyperparams`` hold the controlled
      hyper-parameters' values decided from the last finite loss (with
      ``lag=True``, the values the next update uses), or the inner's own
      values before the first decision and before ``start_step - 1``.
  """

  loss_phase: _phase.PhaseState
  controlled_state: Any


def _check_value_dicts(below: Any, above: Any) -> tuple[str, ...]:
  """Checks ``below`` and ``above``; returns the controlled names, sorted."""
  for label, values in (("below", below), ("above", above)):
    if not isinstance(values, Mapping):
      raise TypeError(
          f"`{label}` must be a dict from hyper-parameter name to value, e.g. "
          f'{{"b1": 0.95}}; got {type(values).__name__}.')
  if not below or not above:
    raise ValueError(
        "`below` and `above` must name at least one hyper-parameter, with its "
        'value in each phase, e.g. below={"b1": 0.95}, above={"b1": 0.9}.')
  if set(below) != set(above):
    only_below = sorted(set(below) - set(above))
    only_above = sorted(set(above) - set(below))
    raise ValueError(
        "`below` and `above` must set the same hyper-parameters, each needs a "
        f"value in both phases. Only in `below`: {only_below}; only in "
        f"`above`: {only_above}.")
  for label, values in (("below", below), ("above", above)):
    for name, value in values.items():
      if callable(value) or isinstance(value, (bool, str)) or not (
          isinstance(value, (numbers.Number, np.ndarray, np.generic,
                             jax.Array))):
        raise TypeError(
            f"`{label}[{name!r}]` must be a number or an array, got "
            f"{value!r}. (A schedule cannot be a phase's value: schedule the "
            "inner optimizer's other hyper-parameters instead.)")
  return tuple(sorted(below))


def _arguments_not_injected(inner: optax.GradientTransformation) -> dict:
  """The factory arguments `optax.inject_hyperparams` kept static, if known.

  Read from the closure of inject_hyperparams' ``init`` (an optax detail, so
  only used to word an error message); empty when it cannot be read.
  """
  try:
    init: Any = inner.init  # a function, whose closure is read
    code, closure = init.__code__, init.__closure__
    cells = dict(zip(code.co_freevars, closure or ()))
    return dict(cells["other_hps"].cell_contents)
  except (AttributeError, KeyError, TypeError, ValueError):
    return {}


def _check_controllable(inner_state: Any, names: tuple[str, ...],
                        static: Mapping[str, Any], below: Mapping,
                        above: Mapping) -> None:
  """Raises a clear error unless each name is a numeric injected value.

  Works on a concrete state and on the abstract one of `jax.eval_shape`;
  ``static`` are the factory arguments inject_hyperparams kept static.
  """
  if not isinstance(inner_state, _INJECTED_STATES):
    kind = type(inner_state).__name__
    if type(inner_state) is tuple:  # pylint: disable=unidiomatic-typecheck
      kind += f" of ({', '.join(type(x).__name__ for x in inner_state)})"
    raise TypeError(
        "loss_controlled needs an inner optimizer made by "
        f"`optax.inject_hyperparams`, but the inner's state is a {kind}. "
        f"{_HOW_TO_INJECT} Inside a chain, wrap only the injected part in "
        "loss_controlled.")
  hyperparams = inner_state.hyperparams
  scheduled = getattr(inner_state, "hyperparams_states", {})
  for name in names:
    if name in scheduled:
      raise ValueError(
          f"`{name}` is a schedule in the inner optimizer, and its schedule "
          "would override the phase's value at every step. Give the inner a "
          f"number for `{name}` (the value before the first decision).")
    if name in static:
      raise ValueError(
          f"`{name}` cannot be controlled: `optax.inject_hyperparams` kept it "
          f"static (value {static[name]!r}), because it is in `static_args` "
          "or is not a number, so it is fixed when the optimizer is built. "
          f"Leave `{name}` out of `static_args` and give it a number.")
    if name not in hyperparams:
      raise ValueError(
          f"The inner optimizer has no injected hyper-parameter `{name}`. "
          f"Those it has: {sorted(hyperparams)}.")
    shape = jnp.shape(hyperparams[name])
    for label, values in (("below", below), ("above", above)):
      if np.broadcast_shapes(np.shape(values[name]), shape) != shape:
        raise ValueError(
            f"`{label}[{name!r}]` has shape {np.shape(values[name])}, but the "
            f"inner's `{name}` has shape {shape}.")


def _abstract_inner_state(inner: optax.GradientTransformation) -> Any:
  """The inner's state for one float32 scalar parameter, without computing.

  Returns None when the inner's ``init`` cannot run on such a parameter (it
  may need the real parameters' structure, e.g. for a mask); the checks are
  then made by ``init``.
  """
  try:
    return jax.eval_shape(inner.init, jax.ShapeDtypeStruct((), jnp.float32))
  except Exception:  # pylint: disable=broad-except
    return None


def _is_narrower_than_float32(x: Any) -> bool:
  dtype = jnp.result_type(x)
  return bool(jnp.issubdtype(dtype, jnp.floating)) and (
      jnp.finfo(dtype).bits < 32)


def _hyperparams_in_float32(inner: optax.GradientTransformation,
                            injected: Any, params: optax.Params) -> Any:
  """The injected state with its float hyper-parameters in float32 at least.

  `optax.inject_hyperparams` keeps them in the parameters' dtype unless built
  with ``hyperparam_dtype``: with bfloat16 parameters AdamW's ``b2 = 0.999``
  becomes 1 and its first update NaN. The values are made again by the
  inner's ``init`` on float32 scalars shaped like the parameters' tree (cheap),
  and the injected update keeps them in float32.

  Raises:
    ValueError: When that ``init`` fails; the message says what to pass.
  """
  narrow = [name for name, value in injected.hyperparams.items()
            if _is_narrower_than_float32(value)]
  if not narrow:
    return injected
  scalars = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)
  try:
    wide_state: Any = inner.init(scalars)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"The inner optimizer keeps {narrow} in the parameters' dtype, "
        f"{jnp.result_type(injected.hyperparams[narrow[0]])}: build it with "
        "`optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)`."
    ) from e
  return injected._replace(
      hyperparams={**injected.hyperparams,
                   **{n: wide_state.hyperparams[n] for n in narrow}})


def _check_kept_in_float32(injected: Any, new_injected: Any) -> None:
  """Raises when the inner's update narrowed float32 hyper-parameters.

  `optax.inject_hyperparams` keeps float32 arrays from version 0.2.8 on;
  before, its update casts them to the parameters' dtype unless built with
  ``hyperparam_dtype``. Dtypes are static: this costs nothing at run time.
  Scheduled hyper-parameters are computed afresh at every update, and left
  out.
  """
  scheduled = getattr(injected, "hyperparams_states", {})
  narrowed = sorted(
      name for name, value in new_injected.hyperparams.items()
      if name not in scheduled and _is_narrower_than_float32(value)
      and not _is_narrower_than_float32(injected.hyperparams[name]))
  if narrowed:
    raise ValueError(
        f"The inner optimizer's update casts {narrowed} to "
        f"{jnp.result_type(new_injected.hyperparams[narrowed[0]])}: build "
        "it with `optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)`"
        ".")


def _cast_floats_like(tree: Any, like: Any) -> Any:
  """``tree`` with each float leaf in the dtype of its ``like`` leaf."""
  def cast(x, y):
    if x is None:
      return x
    dtype = jnp.result_type(y)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.result_type(x) == dtype:
      return x
    return jnp.asarray(x).astype(dtype)
  return jax.tree.map(cast, tree, like, is_leaf=lambda x: x is None)


def loss_controlled(
    inner: optax.GradientTransformation,
    below: Mapping[str, jax.typing.ArrayLike],
    above: Mapping[str, jax.typing.ArrayLike],
    *,
    steps_per_epoch: int | None = None,
    averaging: str = "epoch",
    ema_decay: jax.typing.ArrayLike = 0.99,
    lag: bool = True,
    start_step: int = 0,
    axis_name: str | None = None,
    phases: str = "loss",
    below_probability: optax.ScalarOrSchedule = 0.5,
    phase_seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Switches an optimizer's hyper-parameters by the training loss's phase.

  LCAM's rule for any hyper-parameter of any optimizer made by
  `optax.inject_hyperparams`. At step :math:`t` with loss :math:`l_t`, for
  each controlled hyper-parameter :math:`h`:

  .. math::

    \bar l_t &= \mathrm{mean}\{l_s : s \text{ in the epoch of } t,
      s \le t\}, \\
    h_{t+1} &= \begin{cases} h_\text{below} & l_t < \bar l_t \\
      h_\text{above} & \text{otherwise,} \end{cases}

  and :math:`h_0` is the inner optimizer's own value (the one it was built
  with). So ``loss_controlled(optax.inject_hyperparams(optax.sgd)(lr,
  momentum=b), below={"momentum": b1}, above={"momentum": b2}, ...)`` after
  `optax.add_decayed_weights` is LCAM with ``beta_init=b``. The options are
  LCAM's, with the same defaults and meaning (see `scale_by_lcam`): the epoch's
  mean (``steps_per_epoch`` counts optimizer updates) or a debiased moving
  average, the strict ``<``, the one-step lag (``lag=False`` uses the values
  decided from :math:`l_t` at step :math:`t` itself), the inner's own values
  before ``start_step``, values carried across epochs, non-finite losses
  ignored, the loss averaged over ``axis_name``, and the placebo
  ``phases="random"`` (each step's phase drawn, see `scale_by_lcam`).

  The inner's ``hyperparams`` in the state show the controlled values decided
  from the last finite loss (see `LossControlledState`). Those entries belong
  to ``loss_controlled``: from step ``start_step - 1`` on, every update
  overwrites them, so a value set there by hand lasts one step at most. The
  loss is also passed on to the inner as ``value``.

  The inner's float hyper-parameters are kept in float32 (or wider), whatever
  the parameters' dtype: `optax.inject_hyperparams` alone keeps them in the
  parameters' dtype unless built with ``hyperparam_dtype``, and in bfloat16
  AdamW's ``b2 = 0.999`` rounds to 1 and its first update is NaN. The updates
  and the inner's state keep the dtypes they came in (the gradients', the
  state's at ``init``), so loss control works wherever the inner optimizer
  does, at the precision of the optimizer without `optax.inject_hyperparams`.

  Args:
    inner: The optimizer to control, made by `optax.inject_hyperparams`,
      e.g. ``optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)``.
    below: Hyper-parameter name to its value after a loss strictly below the
      running mean.
    above: The same names, to their values after a loss at or above it.
    steps_per_epoch: Number of optimizer updates per epoch. Required with
      ``averaging="epoch"``.
    averaging: ``"epoch"`` (mean of the current epoch's losses) or ``"ema"``
      (debiased exponential moving average of all losses).
    ema_decay: Decay of the moving average with ``averaging="ema"``.
    lag: If True, the loss of step ``t`` sets the values of step ``t + 1``;
      if False, those of step ``t`` itself.
    start_step: Before this step the inner's own values hold.
    axis_name: If set, the loss is averaged over this named axis
      (``lax.pmean``), so that replicas take the same decisions.
    phases: ``"loss"`` (the loss decides the phase) or ``"random"`` (each
      step's phase is drawn; a placebo).
    below_probability: With ``phases="random"``, the probability of the
      "below" phase, in [0, 1]: a number or a schedule of the step.
    phase_seed: With ``phases="random"``, the seed of the draws, an integer
      in [0, 2**31).

  Returns:
    A `optax.GradientTransformationExtraArgs` whose ``update`` takes the loss
    as the keyword argument ``value``; its state is a `LossControlledState`.

  Raises:
    TypeError: When ``inner`` is not a transformation made by
      `optax.inject_hyperparams`, or a phase's value is not a number or an
      array, or ``below_probability`` is neither a number nor a schedule.
    ValueError: For empty ``below``/``above``, different names in them, a
      name the inner does not inject (static, scheduled, or unknown: the
      message lists the names it has), a value whose shape does not fit, or
      a bad rule option. These are checked when ``loss_controlled`` is called
      whenever the inner's ``init`` can run on a scalar parameter (for every
      optax optimizer without a mask); otherwise ``init`` checks them. With
      bfloat16 or float16 parameters, also from ``init`` or the first update
      when the inner's hyper-parameters cannot be kept in float32 (an inner
      whose ``init`` fails on scalars, or optax before 0.2.8, whose
      `optax.inject_hyperparams` casts them to the parameters' dtype at every
      update): the message says to build the inner with
      ``hyperparam_dtype=jnp.float32``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lcam
    >>> opt = optax_lcam.loss_controlled(
    ...     optax.inject_hyperparams(optax.adamw)(learning_rate=0.1, b1=0.9),
    ...     below={"b1": 0.95}, above={"b1": 0.8}, steps_per_epoch=4)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> for loss in [2.0, 1.0, 3.0]:
    ...   updates, state = opt.update(jnp.ones(2), state, params, value=loss)
    ...   b1 = optax_lcam.loss_control_info(state).hyperparams["b1"]
    ...   print(f"{float(b1):.2f}")
    0.80
    0.95
    0.80

  References:
    Zhang et al., `Asymmetric Momentum: A Rethinking of Gradient Descent
    <https://arxiv.org/abs/2309.02130>`_, 2023
  """
  if not isinstance(inner, optax.GradientTransformation):
    hint = (" It is a function: call it with the hyper-parameters first."
            if callable(inner) else "")
    raise TypeError(
        "`inner` must be an optax transformation made by "
        f"`optax.inject_hyperparams`, got {type(inner).__name__}.{hint} "
        f"{_HOW_TO_INJECT}")
  names = _check_value_dicts(below, above)
  rule = _phase.PhaseRule(
      steps_per_epoch=steps_per_epoch, averaging=averaging,
      ema_decay=ema_decay, lag=lag, start_step=start_step,
      axis_name=axis_name, phases=phases,
      below_probability=below_probability, phase_seed=phase_seed)
  _phase.validate_rule(rule)
  static = _arguments_not_injected(inner)
  abstract_state = _abstract_inner_state(inner)
  if abstract_state is not None:
    _check_controllable(abstract_state, names, static, below, above)
  inner = optax.with_extra_args_support(inner)
  below = {name: below[name] for name in names}
  above = {name: above[name] for name in names}

  values_are_constants = all(
      map(_phase.is_concrete_number, [*below.values(), *above.values()]))

  def init_fn(params: optax.Params) -> LossControlledState:
    inner_state = inner.init(params)
    _check_controllable(inner_state, names, static, below, above)
    return LossControlledState(
        loss_phase=_phase.init(rule),
        controlled_state=_hyperparams_in_float32(inner, inner_state, params))

  def update_fn(
      updates: optax.Updates,
      state: LossControlledState,
      params: optax.Params | None = None,
      *,
      value: jax.typing.ArrayLike | None = None,
      **extra_args,
  ) -> tuple[optax.Updates, LossControlledState]:
    loss = _phase.loss_from_value(value, axis_name, _MISSING_LOSS)
    step = state.loss_phase.phase_step
    loss_phase = _phase.update(state.loss_phase, loss, rule)
    injected = state.controlled_state
    # Until the values decided for step start_step are stored (after step
    # start_step - 1), the state holds the inner's own values.
    pending = {name: injected.hyperparams[name] for name in names}
    if values_are_constants and _phase.starts_at_first_step(rule):
      # The same values, chosen again among constants by the phase flags,
      # so that XLA's CPU code vectorizes the inner's update (see
      # `scale_by_lcam`). With start_step == 0, the state holds the values
      # decided at the last step, or the inner's own before any decision.
      pending = _phase.phase_values(state.loss_phase, below, above,
                                    undecided=pending)
    decided = _phase.phase_values(loss_phase, below, above, undecided=pending)
    used = _phase.values_in_force(step, pending, decided, pending, rule)
    new_updates, new_injected = inner.update(
        updates, _with_values(injected, used), params, value=value,
        **extra_args)
    _check_kept_in_float32(injected, new_injected)
    # Float32 hyper-parameters make the inner compute in float32: its updates
    # and state go back to the dtypes they came in.
    new_updates = _cast_floats_like(new_updates, updates)
    new_injected = _cast_floats_like(new_injected, injected)
    stored = jax.tree.map(
        lambda d, u: jnp.where(step + 1 < rule.start_step, u, d),
        decided, used)
    return new_updates, LossControlledState(
        loss_phase=loss_phase,
        controlled_state=_with_values(new_injected, stored))

  # optax types `update` as taking any state; this one takes its own.
  return optax.GradientTransformationExtraArgs(
      init_fn, update_fn)  # type: ignore[arg-type]


def _with_values(injected: Any, values: dict[str, jax.Array]) -> Any:
  """The injected state with ``values`` in its hyperparams, dtypes kept."""
  hyperparams = dict(injected.hyperparams)
  for name, value in values.items():
    hyperparams[name] = jnp.asarray(value).astype(
        jnp.result_type(hyperparams[name]))
  return injected._replace(hyperparams=hyperparams)
