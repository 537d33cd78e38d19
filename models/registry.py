"""Named models of both families: Wide-ResNets and character GPTs."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models import gpt
from models import wide_resnet

MODEL_NAMES = wide_resnet.MODEL_NAMES + gpt.MODEL_NAMES


def _checked_name(name: str) -> str:
  """The canonical spelling of a known name; ValueError for another."""
  key = wide_resnet.canonical_model_name(name)
  if key not in MODEL_NAMES:
    raise ValueError(
        f'Unknown model name {name!r}; known names: {", ".join(MODEL_NAMES)} '
        '(case-insensitive, "_" may replace "-").')
  return key


def create_model(name: str, num_classes: int, *, dropout_rate: float = 0.0,
                 dtype: Any = jnp.float32,
                 bn_axis_name: str | None = None) -> nn.Module:
  """Builds a named Wide-ResNet or GPT.

  Args:
    name: one of ``MODEL_NAMES``, e.g. ``'wrn-28-10'`` or ``'gpt-6-384'``;
      case and underscores instead of dashes do not matter.
    num_classes: number of logits: the classes of a Wide-ResNet, the
      vocabulary size of a GPT.
    dropout_rate: the model's dropout rate (training only).
    dtype: computation dtype.
    bn_axis_name: a mapped axis the batch is split over: BatchNorm
      synchronises over it and dropout numbers the examples along it (a GPT,
      which has no BatchNorm, takes it as its ``axis_name``).

  Returns:
    The (unbound) ``WideResNet`` or ``GPT`` module.

  Raises:
    ValueError: for an unknown name (the message lists the known ones), or an
      invalid field value.

  Example:
    >>> model = create_model('GPT_4_128', num_classes=65)
    >>> model.num_layers, model.width, model.context, model.vocab_size
    (4, 128, 64, 65)
  """
  key = _checked_name(name)
  if key in gpt.VARIANTS:
    return gpt.VARIANTS[key](vocab_size=num_classes, dropout_rate=dropout_rate,
                             dtype=dtype, axis_name=bn_axis_name)
  return wide_resnet.create_model(key, num_classes, dropout_rate=dropout_rate,
                                  dtype=dtype, bn_axis_name=bn_axis_name)


def gpt_context(name: str) -> int:
  """The context (longest sequence) of a named GPT.

  Args:
    name: a ``'gpt-*'`` name of ``MODEL_NAMES``.

  Returns:
    The number of positions of its position table.

  Raises:
    ValueError: for an unknown name or a Wide-ResNet's.

  Example:
    >>> gpt_context('gpt-6-384')
    256
  """
  key = _checked_name(name)
  if key not in gpt.VARIANTS:
    raise ValueError(f"{name!r} is not a GPT; GPTs: "
                     f"{', '.join(gpt.MODEL_NAMES)}.")
  return gpt.VARIANTS[key].keywords["context"]
