"""Reading LCAM's state out of any optax optimizer state, for logging."""

from typing import Any, NamedTuple

import jax

from optax_lcam import _phase
from optax_lcam._lcam import ScaleByLCAMState


class LCAMInfo(NamedTuple):
  """What LCAM's state says about the last step.

  Attributes:
    beta: The momentum coefficient decided from the last finite loss (with the
      default ``lag=True``, the one the next update uses).
    mean_loss: The running mean the last loss was compared with (the epoch's
      mean, or the debiased moving average with ``averaging="ema"``); NaN
      before the first finite loss of an epoch.
    below_mean: The loss phase of the last step: True when its loss was
      strictly below the running mean.
    step: The number of updates LCAM has done.
  """

  beta: jax.Array
  mean_loss: jax.Array
  below_mean: jax.Array
  step: jax.Array


def _find_all(opt_state: Any, types: tuple[type, ...]) -> list[Any]:
  is_wanted = lambda x: isinstance(x, types)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_wanted)
          if is_wanted(x)]


def find_lcam_state(opt_state: Any) -> ScaleByLCAMState:
  """Finds the one `ScaleByLCAMState` inside an optimizer state.

  Works through `optax.chain`, `optax.inject_hyperparams`,
  `optax.MultiSteps`, `optax.apply_if_finite` and any other nesting of tuples,
  NamedTuples, dicts and lists.

  Args:
    opt_state: An optimizer state that contains exactly one LCAM state.

  Returns:
    The LCAM state.

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
      (chained, injected, multi-step, ...).

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
                  below_mean=state.below_mean, step=state.lcam_step)

