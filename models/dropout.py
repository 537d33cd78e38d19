"""Dropout whose masks do not depend on how the batch is split over devices.

`flax.linen.Dropout` draws one mask for the array it is given. Under
`jax.pmap` that array is one device's part of the batch, so every device
draws from the same key and the masks depend on the device count and differ
from `jax.jit`'s. `ExampleDropout` draws the mask of example ``i`` of the
global batch from the layer's key folded with ``i``: the same for every
device count, with `jax.pmap`, `jax.shard_map` or `jax.jit`.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


class ExampleDropout(nn.Module):
  """Dropout with each example's mask drawn from its own key.

  Example ``i`` of the global batch is masked with
  ``bernoulli(fold_in(key, i), 1 - rate)``, where ``key`` is the layer's
  ``'dropout'`` key, and kept values are scaled by ``1 / (1 - rate)``. With
  ``axis_name``, the batch is split into equal parts over that mapped axis
  (`jax.pmap` or `jax.shard_map`), device ``d`` holding the ``d``-th part.

  Attributes:
    rate: the probability of dropping a value, in [0, 1).
    axis_name: the mapped axis the batch is split over, or None (one device,
      or `jax.jit` with a sharded batch).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = ExampleDropout(rate=0.5)
    >>> x = jnp.ones((4, 3))
    >>> y = layer.apply({}, x, deterministic=False,
    ...                 rngs={"dropout": jax.random.key(0)})
    >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
    True
  """

  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """Drops values of ``x`` (batch first) unless ``deterministic``."""
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    local_batch = x.shape[0]
    first = 0
    if self.axis_name is not None:
      first = lax.axis_index(self.axis_name) * local_batch
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        self.make_rng("dropout"), first + jnp.arange(local_batch))
    mask = jax.vmap(
        lambda key: jax.random.bernoulli(key, keep, x.shape[1:]))(keys)
    return lax.select(mask, x / keep, jnp.zeros_like(x))
