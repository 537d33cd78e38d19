"""Batch normalisation over the real examples of a batch, across devices.

``flax.linen.BatchNorm`` accepts a ``mask`` and an ``axis_name``, but with both
it averages the per-device masked means
(``lax.pmean`` of ``x.mean(where=mask)``).
That is only right when every device holds the same number of real examples:
with a padded last batch the devices hold different numbers, and a device
holding padding only contributes a NaN mean (0 / 0) that poisons every device.
The layer here sums the real values, their squares and their count on each
device, adds the three up over ``axis_name`` with one ``lax.psum``, and only
then divides. N devices with B / N examples each then compute exactly the
statistics of one device holding all B examples, padded or not.

The layer also follows PyTorch's ``nn.BatchNorm2d``, which the LCAM reference
trains with: the batch is normalised with the biased variance, while the
running variance is updated with the unbiased one (``n / (n - 1)``).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Statistics and running averages are float32, whatever the compute dtype.
STATS_DTYPE = jnp.float32


def _example_mask(mask: Array, ndim: int) -> Array:
  """Reshapes a per-example mask of shape (B,) to broadcast to (B, ..., C)."""
  return jnp.reshape(jnp.asarray(mask, dtype=bool), (-1,) + (1,) * (ndim - 1))


def batch_moments(
    x: Array,
    mask: Array | None = None,
    axis_name: str | None = None,
) -> tuple[Array, Array, Array]:
  """Per-channel mean and biased variance of the real examples of a batch.

  The statistics are taken over every axis but the last (the channels), in
  float32, from the examples where ``mask`` is true, on this device and, when
  ``axis_name`` is given, on every device of that mapped axis. Masked-out
  values are replaced by zeros before reducing, so padding may hold any
  finite or non-finite garbage without reaching the statistics.

  Args:
    x: activations of shape (B, ..., C), any float dtype.
    mask: optional bool array of shape (B,); true marks a real example.
    axis_name: optional name of a ``jax.pmap`` / ``shard_map`` axis to
      reduce over as well.

  Returns:
    ``(mean, var, count)``: float32 arrays of shape (C,), (C,) and (), where
    ``count`` is the number of values per channel the statistics came from
    (real examples times spatial positions, summed over devices). With no real
    example at all, the mean and variance are 0 rather than NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [3.0], [100.0]])
    >>> mean, var, count = batch_moments(x, mask=jnp.array([True, True, False]))
    >>> print(mean, var, count)
    [2.] [1.] 2.0
  """
  values = x.astype(STATS_DTYPE)
  reduction_axes = tuple(range(x.ndim - 1))
  values_per_example = math.prod(x.shape[1:-1])
  if mask is None:
    is_real = None
    count = jnp.asarray(x.shape[0] * values_per_example, STATS_DTYPE)
  else:
    is_real = _example_mask(mask, x.ndim)
    values = jnp.where(is_real, values, 0.0)
    count = jnp.sum(jnp.asarray(mask, STATS_DTYPE)) * values_per_example

  def total(per_value):
    return _sum_over_devices(jnp.sum(per_value, axis=reduction_axes), axis_name)

  # Two passes (the mean, then the squared deviations from it), as PyTorch's
  # kernels are: E[x^2] - E[x]^2 loses the variance of channels whose mean is
  # large against their spread, and makes it depend on the order of the sums.
  count = _sum_over_devices(count, axis_name)
  safe_count = jnp.maximum(count, 1.0)
  mean = total(values) / safe_count
  deviations = jnp.square(values - mean)
  if is_real is not None:
    deviations = jnp.where(is_real, deviations, 0.0)
  var = total(deviations) / safe_count
  return mean, var, count


def _sum_over_devices(x: Array, axis_name: str | None) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def updated_running_moments(
    running_mean: Array,
    running_var: Array,
    batch_mean: Array,
    batch_var: Array,
    count: Array,
    momentum: float,
    unbiased_running_var: bool = True,
) -> tuple[Array, Array]:
  """Exponential moving averages of the batch statistics, as PyTorch keeps them.

  ``running = momentum * running + (1 - momentum) * batch``, where flax's
  ``momentum`` 0.9 is PyTorch's ``momentum`` 0.1. A batch without any real
  example leaves the running statistics unchanged.

  Args:
    running_mean: current running mean, shape (C,).
    running_var: current running variance, shape (C,).
    batch_mean: mean of the batch, shape (C,).
    batch_var: biased variance of the batch, shape (C,).
    count: number of values per channel behind the batch statistics.
    momentum: weight of the old running value (flax convention).
    unbiased_running_var: if true (PyTorch), the running variance averages the
      unbiased batch variance ``batch_var * count / (count - 1)``.

  Returns:
    The new ``(running_mean, running_var)``.

  Example:
    >>> import jax.numpy as jnp
    >>> mean, var = updated_running_moments(
    ...     jnp.zeros(1), jnp.ones(1), jnp.array([2.0]), jnp.array([1.0]),
    ...     count=jnp.array(2.0), momentum=0.9)
    >>> print(mean, var)
    [0.2] [1.1]
  """
  if unbiased_running_var:
    batch_var = batch_var * count / jnp.maximum(count - 1.0, 1.0)
  new_mean = momentum * running_mean + (1.0 - momentum) * batch_mean
  new_var = momentum * running_var + (1.0 - momentum) * batch_var
  has_examples = count > 0
  return (
      jnp.where(has_examples, new_mean, running_mean),
      jnp.where(has_examples, new_var, running_var),
  )


class BatchNorm(nn.Module):
  """Batch normalisation with a per-example mask that also works across devices.

  A drop-in for ``flax.linen.BatchNorm`` over the last (channel) axis with the
  same variable names (params ``scale`` and ``bias``, batch_stats ``mean`` and
  ``var``) and the same momentum convention, whose batch statistics come from
  :func:`batch_moments` (correct with ``mask`` and ``axis_name`` together) and
  whose running variance is unbiased as in PyTorch. Parameters and statistics
  are float32; the output has dtype ``dtype``. Running statistics are not
  updated during ``init``.

  Attributes:
    momentum: weight of the old running value (0.9 is PyTorch's 0.1).
    epsilon: added to the variance (PyTorch's default 1e-5).
    dtype: dtype of the output.
    axis_name: optional ``pmap`` / ``shard_map`` axis to share statistics over.
    unbiased_running_var: keep the running variance unbiased, as PyTorch does.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> bn = BatchNorm()
    >>> x = jnp.arange(6.0).reshape(3, 2)
    >>> variables = bn.init(jax.random.key(0), x, use_running_average=False)
    >>> y, updates = bn.apply(variables, x, use_running_average=False,
    ...                       mask=jnp.array([True, True, False]),
    ...                       mutable=['batch_stats'])
    >>> print(updates['batch_stats']['mean'])
    [0.1 0.2]
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  unbiased_running_var: bool = True

  @nn.compact
  def __call__(
      self,
      x: Array,
      *,
      use_running_average: bool,
      mask: Array | None = None,
  ) -> Array:
    """Normalises ``x`` of shape (B, ..., C); see the class docstring.

    Args:
      x: activations, channels last.
      use_running_average: normalise with the running statistics (evaluation)
        instead of the batch statistics (training, which also updates the
        running statistics: ``batch_stats`` must then be mutable).
      mask: optional bool array of shape (B,) marking the real examples; only
        they enter the batch statistics. Ignored with ``use_running_average``.

    Returns:
      The normalised, scaled and shifted activations, of dtype ``dtype``.
    """
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), STATS_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (channels,), STATS_DTYPE)
    running_mean = self.variable(
        "batch_stats", "mean", jnp.zeros, (channels,), STATS_DTYPE)
    running_var = self.variable(
        "batch_stats", "var", jnp.ones, (channels,), STATS_DTYPE)
    if use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      mean, var, count = batch_moments(x, mask, self.axis_name)
      if not self.is_initializing():
        running_mean.value, running_var.value = updated_running_moments(
            running_mean.value, running_var.value, mean, var, count,
            self.momentum, self.unbiased_running_var)
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    offset = bias - mean * multiplier
    return (x.astype(STATS_DTYPE) * multiplier + offset).astype(self.dtype)
