"""Reading LCAM's state out of any optax optimizer state, for logging."""

import sys
from typing import Any, NamedTuple

import jax

from optax_lcam import _phase
from optax_lcam._lcam import ScaleByLCAMState
from optax_lcam._loss_controlled import LossControlledState


class LCAMInfo(NamedTuple):
  """What LCAM's state says about the last step.

  Attributes:
    beta (jax.Array): The momentum coefficient decided from the last finite loss
      (with the default ``lag=True``, the one the next update uses).
    mean_loss (jax.Array): The running mean the last loss was compared with (the
      epoch's mean, or the debiased moving average with ``averaging="ema"``);
      NaN before the first finite loss of an epoch.
    below_mean (jax.Array): The phase of the last step: True when its loss was
      strictly below the running mean (with ``phases="random"``, when its draw
      was "below").
    step (jax.Array): The number of updates LCAM has done.
    loss_below_mean (jax.Array): Whether the last finite loss was strictly below
      the running mean; equal to ``below_mean`` unless ``phases="random"``.
  """

  beta: jax.Array
  mean_loss: jax.Array
  below_mean: jax.Array
  step: jax.Array
  loss_below_mean: jax.Array


def _variable_values(opt_state: Any) -> Any:
  """``opt_state`` with each Flax NNX Variable replaced by its value.

  `flax.nnx.Optimizer` keeps the arrays of its ``opt_state`` in
  `flax.nnx.Variable` objects (``OptArray``, ``OptVariable``). Flax is not a
  dependency, and a state cannot hold its Variables unless `flax.nnx` has been
  imported, so it is looked up, not imported.
  """
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return opt_state
  is_variable = lambda x: isinstance(x, nnx.Variable)

  def value_of(x: Any) -> Any:
    if not is_variable(x):
      return x
    return x.get_value() if hasattr(x, "get_value") else x.value

  return jax.tree.map(value_of, opt_state, is_leaf=is_variable)


def _find_all(opt_state: Any, types: tuple[type, ...]) -> list[Any]:
  is_wanted = lambda x: isinstance(x, types)
  return [x for x in jax.tree.leaves(_variable_values(opt_state),
                                     is_leaf=is_wanted)
          if is_wanted(x)]


def find_lcam_state(opt_state: Any) -> ScaleByLCAMState:
  """Finds the one `ScaleByLCAMState` inside an optimizer state.

  Works through `optax.chain`, `optax.inject_hyperparams`,
  `optax.MultiSteps`, `optax.apply_if_finite` and any other nesting of tuples,
  NamedTuples, dicts and lists, and on the ``opt_state`` of a
  `flax.nnx.Optimizer`, whose arrays are held in `flax.nnx.Variable` objects.

  Args:
    opt_state: An optimizer state that contains exactly one LCAM state.

  Returns:
    The LCAM state, with arrays as leaves (the values of a state's
    `flax.nnx.Variable` objects).

  Raises:
    ValueError: When there is no LCAM state, or more than one.
  """
  found = _find_all(opt_state, (ScaleByLCAMState,))
  if len(found) != 1:
    raise ValueError(
        f"Expected exactly one LCAM state in the optimizer state, found "
        f"{len(found)}. Pass the state of an optimizer built with "
        "`optax_lcam.lcam` or `optax_lcam.scale_by_lcam`.")
  return found[0]


def lcam_info(opt_state: Any) -> LCAMInfo:
  """Returns LCAM's current beta, running mean loss and phase, for logging.

  Args:
    opt_state: An optimizer state holding one LCAM state anywhere inside it
      (chained, injected, multi-step, ...), or the ``opt_state`` of a
      `flax.nnx.Optimizer`.

  Returns:
    An `LCAMInfo`. Works on replicated (pmapped) states too: each field then
    has the leading device axis.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_lcam
    >>> opt = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=4)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> _, state = opt.update(jnp.ones(2), state, params, value=2.0)
    >>> _, state = opt.update(jnp.ones(2), state, params, value=1.0)
    >>> info = optax_lcam.lcam_info(state)
    >>> float(info.beta), float(info.mean_loss), bool(info.below_mean)
    (0.949999988079071, 1.5, True)
  """
  state = find_lcam_state(opt_state)
  return LCAMInfo(beta=state.beta,
                  mean_loss=_phase.mean_of(state.loss_phase),
                  below_mean=state.below_mean, step=state.lcam_step,
                  loss_below_mean=state.loss_below_mean)


class LossControlInfo(NamedTuple):
  """What a loss-controlled state (LCAM's or `loss_controlled`'s) says.

  Attributes:
    below_mean (jax.Array): The phase in force: True when the last finite loss
      was strictly below the running mean (with ``phases="random"``, when the
      last step's draw was "below").
    mean_loss (jax.Array): The running mean it was compared with; NaN before the
      first finite loss of an epoch.
    step (jax.Array): The number of updates done.
    hyperparams (dict[str, jax.Array]): The current values of the
      hyper-parameters: for `loss_controlled`, the inner optimizer's injected
      hyper-parameters, the controlled ones holding the values decided from the
      last finite loss (see `LossControlledState`); for LCAM,
      ``{"beta": beta}``.
    loss_below_mean (jax.Array): Whether the last finite loss was strictly below
      the running mean; equal to ``below_mean`` unless ``phases="random"``.
  """

  below_mean: jax.Array
  mean_loss: jax.Array
  step: jax.Array
  hyperparams: dict[str, jax.Array]
  loss_below_mean: jax.Array


def find_loss_control_state(
    opt_state: Any) -> ScaleByLCAMState | LossControlledState:
  """Finds the one LCAM or `loss_controlled` state inside an optimizer state.

  Args:
    opt_state: An optimizer state that contains exactly one of them, at any
      depth (chained, injected, multi-step, ...), or the ``opt_state`` of a
      `flax.nnx.Optimizer`.

  Returns:
    The `ScaleByLCAMState` or `LossControlledState`, with arrays as leaves.

  Raises:
    ValueError: When there is none, or more than one.
  """
  found = _find_all(opt_state, (ScaleByLCAMState, LossControlledState))
  if len(found) != 1:
    raise ValueError(
        "Expected exactly one loss-controlled state in the optimizer state, "
        f"found {len(found)}. Pass the state of an optimizer built with "
        "`optax_lcam.loss_controlled`, `optax_lcam.lcam` or "
        "`optax_lcam.scale_by_lcam`.")
  return found[0]


def loss_control_info(opt_state: Any) -> LossControlInfo:
  """Returns the phase, running mean loss and hyper-parameters, for logging.

  Works on the state of `loss_controlled` and on LCAM's.

  Args:
    opt_state: An optimizer state holding one such state anywhere inside it,
      or the ``opt_state`` of a `flax.nnx.Optimizer`.

  Returns:
    A `LossControlInfo`. On replicated (pmapped) states each field has the
    leading device axis.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_lcam
    >>> opt = optax_lcam.loss_controlled(
    ...     optax.inject_hyperparams(optax.sgd)(0.1, momentum=0.9),
    ...     below={"momentum": 0.95}, above={"momentum": 0.5},
    ...     steps_per_epoch=4)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> for loss in [2.0, 1.0]:
    ...   _, state = opt.update(jnp.ones(2), state, params, value=loss)
    >>> info = optax_lcam.loss_control_info(state)
    >>> bool(info.below_mean), float(info.mean_loss), int(info.step)
    (True, 1.5, 2)
    >>> round(float(info.hyperparams["momentum"]), 2)
    0.95
  """
  state = find_loss_control_state(opt_state)
  if isinstance(state, ScaleByLCAMState):
    hyperparams = {"beta": state.beta}
  else:
    hyperparams = dict(state.controlled_state.hyperparams)
  phase = state.loss_phase
  return LossControlInfo(below_mean=phase.below_mean,
                         mean_loss=_phase.mean_of(phase),
                         step=phase.phase_step, hyperparams=hyperparams,
                         loss_below_mean=_phase.loss_below_mean_of(phase))
