"""The optimizer of a training config: LCAM, SGD or AdamW, optionally with
loss-controlled hyper-parameters (`create_optimizer`)."""

import json
from typing import Any

import ml_collections
import optax

import optax_lcam


def parse_loss_control(text: str) -> dict[str, tuple[float, float]]:
  """``'{"b1": [0.95, 0.9]}'`` -> ``{"b1": (0.95, 0.9)}`` (below, above).

  Raises:
    ValueError: naming what is wrong, with an example.

  Example:
    >>> parse_loss_control('{"b1": [0.95, 0.9]}')
    {'b1': (0.95, 0.9)}
    >>> parse_loss_control("")
    {}
  """
  if not text:
    return {}
  example = ('e.g. \'{"b1": [0.95, 0.9]}\': each controlled hyper-parameter '
             "with its value below the running mean and at or above it")
  try:
    parsed = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"loss_control={text!r} is not JSON ({e}); {example}.") from None
  if not isinstance(parsed, dict) or not parsed or not all(
      isinstance(pair, list) and len(pair) == 2
      and all(isinstance(v, (int, float)) for v in pair)
      for pair in parsed.values()):
    raise ValueError(f"loss_control={text!r} is not a map of names to "
                     f"[below, above] numbers; {example}.")
  return {name: (float(below), float(above))
          for name, (below, above) in parsed.items()}


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


def _phase_options(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   seed: int) -> dict[str, Any]:
  """The phase-rule arguments of `optax_lcam.lcam` and `loss_controlled`."""
  phase_seed = seed if config.phase_seed is None else config.phase_seed
  return {"phases": config.phases, "phase_seed": phase_seed,
          "below_probability": below_probability_schedule(
              config.below_probability, steps_per_epoch)}


def _sgd(learning_rate, momentum, nesterov, weight_decay):
  """SGD with (Nesterov) momentum and coupled weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum,
                               nesterov=nesterov))


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule,
                     steps_per_epoch: int, seed: int = 0
                     ) -> optax.GradientTransformation:
  """LCAM, SGD or AdamW, optionally with loss-controlled hyper-parameters.

  LCAM and SGD have coupled weight decay (added to the gradient), AdamW
  decoupled weight decay (``optax.adamw``). With ``config.loss_control`` set,
  the named hyper-parameters of SGD or AdamW take one value after a loss below
  the running mean and another at or above it (`optax_lcam.loss_controlled`,
  with LCAM's rule options ``averaging``, ``ema_decay``, ``lag``,
  ``start_step``, ``phases``, ``below_probability`` (one value an epoch) and
  ``phase_seed``, the run's ``seed`` when None). The loss given to the
  optimizer is already averaged over all devices by the train step, so the
  optimizer needs no ``axis_name``.

  Raises:
    ValueError: for a ``loss_control`` that cannot be used, or
      ``phases="random"`` without a loss-controlled optimizer.
  """
  phase_options = _phase_options(config, steps_per_epoch, seed)
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
  controlled = parse_loss_control(config.loss_control)
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
  return tuple(parse_loss_control(config.loss_control))



