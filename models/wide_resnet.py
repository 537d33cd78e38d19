"""Wide residual networks (Zagoruyko & Komodakis, 2016) of the LCAM reference.

The reference (``hakumaicc/Asymmetric-Momentum-LCAM``, a copy of the common
``wideresnet.py`` of ``xternalz/WideResNet-pytorch``) uses pre-activation basic
blocks:

  BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> [dropout] -> 3x3 conv

plus the block input as shortcut, or, where the shape changes, a 1x1 conv
(stride s) applied to the *activated* input (the output of the first BN-ReLU).
A 3x3 stem conv with 16 channels comes first; three groups of
``(depth - 4) / 6`` blocks of widths 16k, 32k, 64k with strides 1, 2, 2 follow;
then BN, ReLU, global average pooling and a dense layer.

Details that match the reference exactly:

* 3x3 convs pad by one pixel on each side, also with stride 2 (flax's 'SAME'
  would pad (0, 1) for an even input and stride 2, shifting the sampling grid).
* Convs have no bias and Kaiming-normal init with fan_out
  (std = sqrt(2 / (3 * 3 * out_channels)), not truncated).
* BatchNorm with PyTorch's defaults: momentum 0.1 (0.9 in flax terms), epsilon
  1e-5, scale 1, bias 0, unbiased running variance (see ``batch_norm.py``).
* Global average pooling, which is the reference's ``avg_pool2d(out, 8)`` on
  32x32 images (8x8 after the two stride-2 groups), and any size otherwise.
* The dense layer keeps PyTorch's default weight init
  (uniform in +-1 / sqrt(fan_in)) and the reference's zero bias.
* Dropout, when used, sits after the second ReLU, as in the LCAM reference's
  copy of the block (xternalz puts it before the second BN); every reference
  run uses no dropout, where the two agree. Its masks are drawn per example
  (``dropout.ExampleDropout``), so they do not depend on the device layout.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import batch_norm
from models import dropout

Array = jax.Array
Dtype = Any

PARAM_DTYPE = jnp.float32

# Kaiming normal, fan_out, gain sqrt(2): PyTorch's
# kaiming_normal_(mode='fan_out', nonlinearity='relu') used by the reference.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init: kaiming_uniform_(a=sqrt(5)),
# i.e. uniform in +-1 / sqrt(fan_in).
dense_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")
# The reference zero-initialises the classifier bias.
dense_bias_init = nn.initializers.zeros

PAD_ONE = ((1, 1), (1, 1))
NO_PAD = ((0, 0), (0, 0))


def blocks_per_group(depth: int) -> int:
  """Number of basic blocks in each of the three groups of a WRN of ``depth``.

  Args:
    depth: total number of weighted layers, ``6 n + 4`` with ``n >= 1``.

  Returns:
    ``n = (depth - 4) // 6``.

  Raises:
    ValueError: if ``depth`` is not an integer of the form ``6 n + 4``, n >= 1.

  Example:
    >>> blocks_per_group(28)
    4
  """
  if (isinstance(depth, bool) or not isinstance(depth, int)
      or depth < 10 or (depth - 4) % 6 != 0):
    raise ValueError(
        f"Invalid Wide-ResNet depth {depth!r}: depth must be 6 * n + 4 with "
        "n >= 1 blocks per group, so (depth - 4) must be a positive multiple "
        "of 6 (10, 16, 22, 28, 34, 40, ...).")
  return (depth - 4) // 6


class BasicBlock(nn.Module):
  """Pre-activation basic block of a Wide-ResNet.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv and of the 1x1 shortcut conv.
    dropout_rate: dropout between the two convs, in training only.
    dtype: computation dtype.
    bn_axis_name: optional mapped axis the batch is split over: BatchNorm
      synchronises over it, and dropout numbers the examples along it.
    bn_momentum: BatchNorm momentum (flax convention).
    bn_epsilon: BatchNorm epsilon.
  """

  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
    """Applies the block to ``x`` of shape (B, H, W, C_in)."""
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=PARAM_DTYPE,
        kernel_init=conv_kernel_init)
    norm = functools.partial(
        batch_norm.BatchNorm, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, axis_name=self.bn_axis_name)
    activated = nn.relu(
        norm(name="bn1")(x, use_running_average=not train, mask=mask))
    if x.shape[-1] == self.features and self.strides == 1:
      shortcut = x
    else:
      shortcut = conv(self.features, (1, 1), strides=self.strides,
                      padding=NO_PAD, name="shortcut_conv")(activated)
    y = conv(self.features, (3, 3), strides=self.strides, padding=PAD_ONE,
             name="conv1")(activated)
    y = nn.relu(norm(name="bn2")(y, use_running_average=not train, mask=mask))
    if self.dropout_rate > 0.0:
      y = dropout.ExampleDropout(self.dropout_rate,
                                 axis_name=self.bn_axis_name)(
                                     y, deterministic=not train)
    y = conv(self.features, (3, 3), strides=1, padding=PAD_ONE,
             name="conv2")(y)
    return shortcut + y


class WideResNet(nn.Module):
  """Wide-ResNet WRN-depth-k for CIFAR-sized images, as in the LCAM reference.

  The architecture and initialisation follow the module docstring. Arguments
  are checked when the module is constructed: an invalid ``depth`` (not
  ``6 n + 4`` with ``n >= 1``), ``widen_factor``, ``num_classes`` or
  ``dropout_rate`` raises ``ValueError`` there, before any call.

  Precision: parameters and BatchNorm statistics are always float32; convs and
  BatchNorm outputs are computed in ``dtype`` (e.g. ``jnp.bfloat16`` on
  accelerators). The head (global average pooling and the dense layer) runs in
  float32, so the logits are float32 whatever ``dtype`` is.

  Variables: ``params`` and ``batch_stats``. In training (``train=True``) the
  BatchNorm layers use and update batch statistics, so apply with
  ``mutable=['batch_stats']``; with ``dropout_rate > 0`` pass
  ``rngs={'dropout': key}``. In evaluation the running statistics are used and
  nothing is mutated or random.

  Attributes:
    depth: number of weighted layers, ``6 n + 4`` (10, 16, 22, 28, 40, ...).
    widen_factor: k, the width multiplier of the three groups (16k, 32k, 64k).
    num_classes: number of logits.
    dropout_rate: dropout between the two convs of each block (training only).
    dtype: computation dtype of the convs and BatchNorms.
    bn_axis_name: name of a ``jax.pmap`` / ``shard_map`` axis over which the
      BatchNorm batch statistics are computed, so that N devices with B / N
      examples each behave as one device with B examples (dropout draws each
      example's mask by its index in the global batch, see
      ``dropout.ExampleDropout``). ``None`` (default) for one device or for
      ``jax.jit`` with sharded arrays, where XLA already reduces over the
      whole global batch.
    bn_momentum: BatchNorm running-average momentum in flax's convention
      (0.9 = PyTorch's 0.1).
    bn_epsilon: BatchNorm epsilon (PyTorch's default 1e-5).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = WideResNet(depth=10, widen_factor=1, num_classes=10)
    >>> images = jnp.zeros((2, 32, 32, 3))
    >>> variables = model.init(jax.random.key(0), images, train=False)
    >>> logits, updates = model.apply(variables, images, train=True,
    ...                               mutable=['batch_stats'])
    >>> logits.shape, logits.dtype
    ((2, 10), dtype('float32'))
  """

  depth: int
  widen_factor: int
  num_classes: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def __post_init__(self):
    blocks_per_group(self.depth)
    if (isinstance(self.widen_factor, bool)
        or not isinstance(self.widen_factor, int) or self.widen_factor < 1):
      raise ValueError(
          "widen_factor must be a positive integer, got "
          f"{self.widen_factor!r}.")
    if (isinstance(self.num_classes, bool)
        or not isinstance(self.num_classes, int) or self.num_classes < 1):
      raise ValueError(
          f"num_classes must be a positive integer, got {self.num_classes!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      images: Array,
      *,
      train: bool,
      mask: Array | None = None,
  ) -> Array:
    """Computes the logits of a batch of images.

    Args:
      images: float array of shape (B, H, W, 3), already normalised (NHWC).
      train: training mode (batch statistics, dropout) or evaluation mode
        (running statistics, no dropout).
      mask: optional bool array of shape (B,) marking the real examples of a
        padded batch. In training every BatchNorm takes its batch statistics
        from the real examples only (on all devices of ``bn_axis_name``); the
        padded examples still get (meaningless) logits, which the loss must
        mask out. Pad with finite values (e.g. zeros): non-finite padding
        stays out of the statistics but would turn gradients into NaN.

    Returns:
      float32 logits of shape (B, num_classes).
    """
    block = functools.partial(
        BasicBlock, dropout_rate=self.dropout_rate, dtype=self.dtype,
        bn_axis_name=self.bn_axis_name, bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon)
    x = nn.Conv(16, (3, 3), strides=1, padding=PAD_ONE, use_bias=False,
                dtype=self.dtype, param_dtype=PARAM_DTYPE,
                kernel_init=conv_kernel_init, name="stem_conv")(images)
    group_widths = (16 * self.widen_factor, 32 * self.widen_factor,
                    64 * self.widen_factor)
    group_strides = (1, 2, 2)
    for group, (width, stride) in enumerate(zip(group_widths, group_strides)):
      for index in range(blocks_per_group(self.depth)):
        x = block(features=width, strides=stride if index == 0 else 1,
                  name=f"group{group + 1}_block{index + 1}")(
                      x, train=train, mask=mask)
    x = batch_norm.BatchNorm(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        axis_name=self.bn_axis_name, name="final_bn")(
            x, use_running_average=not train, mask=mask)
    x = nn.relu(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=PARAM_DTYPE, kernel_init=dense_kernel_init,
                    bias_init=dense_bias_init, name="classifier")(features)


WRN_28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)
WRN_16_8 = functools.partial(WideResNet, depth=16, widen_factor=8)
WRN_40_4 = functools.partial(WideResNet, depth=40, widen_factor=4)
WRN_16_4 = functools.partial(WideResNet, depth=16, widen_factor=4)
WRN_10_1 = functools.partial(WideResNet, depth=10, widen_factor=1)

_VARIANTS = {
    "wrn-28-10": WRN_28_10,
    "wrn-16-8": WRN_16_8,
    "wrn-40-4": WRN_40_4,
    "wrn-16-4": WRN_16_4,
    "wrn-10-1": WRN_10_1,
}
MODEL_NAMES = tuple(_VARIANTS)


def canonical_model_name(name: str) -> str:
  """Spells a model name the way ``MODEL_NAMES`` does: lower case, dashes.

  Args:
    name: e.g. ``'WRN_28_10'`` or ``'wrn-28-10'``.

  Returns:
    The canonical spelling, e.g. ``'wrn-28-10'``.

  Example:
    >>> canonical_model_name(' WRN_28_10 ')
    'wrn-28-10'
  """
  return name.strip().lower().replace("_", "-")


def create_model(name: str, num_classes: int, **overrides: Any) -> WideResNet:
  """Builds a named Wide-ResNet variant.

  Args:
    name: one of ``MODEL_NAMES`` (``'wrn-28-10'``, ``'wrn-16-8'``,
      ``'wrn-40-4'``, ``'wrn-16-4'``, ``'wrn-10-1'``); case and underscores
      instead of dashes do not matter.
    num_classes: number of logits.
    **overrides: other ``WideResNet`` fields, e.g. ``dtype=jnp.bfloat16``,
      ``bn_axis_name='batch'``, ``dropout_rate=0.3``.

  Returns:
    The (unbound) ``WideResNet`` module.

  Raises:
    ValueError: for an unknown name (the message lists the known ones), or an
      invalid field value.

  Example:
    >>> model = create_model('WRN_16_8', num_classes=100)
    >>> model.depth, model.widen_factor, model.num_classes
    (16, 8, 100)
  """
  key = canonical_model_name(name)
  if key not in _VARIANTS:
    raise ValueError(
        f'Unknown model name {name!r}; known names: {", ".join(MODEL_NAMES)} '
        '(case-insensitive, "_" may replace "-").')
  return _VARIANTS[key](num_classes=num_classes, **overrides)


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of parameters.

  Works on concrete arrays and on the abstract ``jax.ShapeDtypeStruct`` leaves
  that ``jax.eval_shape(model.init, ...)`` returns, so big models can be
  counted without allocating or computing anything.

  Args:
    params: a pytree of arrays, e.g. ``variables['params']``.

  Returns:
    The sum of the sizes of all leaves.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('wrn-28-10', num_classes=10)
    >>> variables = jax.eval_shape(
    ...     lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
    ...                        train=False))
    >>> count_params(variables['params'])
    36479194
  """
  leaves = jax.tree_util.tree_leaves(params)
  return sum(math.prod(np.shape(leaf)) for leaf in leaves)
