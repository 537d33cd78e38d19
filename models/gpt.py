"""A decoder-only character Transformer in nanoGPT's layout (Karpathy, 2022).

Token embedding plus a learned position embedding, dropout, ``num_layers``
pre-LayerNorm blocks ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, a final
LayerNorm and an output head tied to the token embedding. Attention is causal
multi-head self-attention with one fused q, k, v Dense and an output
projection; the MLP is 4x wide with exact GELU (torch's ``nn.GELU()``). Dense
layers have biases, LayerNorm epsilon is torch's 1e-5, and the initialisation
is nanoGPT's: normal(0.02) for kernels and embeddings, normal(0.02 / sqrt(2 L))
for the two residual output projections of each block, zero biases. Parameter
names follow nanoGPT's (``wte``, ``wpe``, ``h_0/attn/c_attn``, ``h_0/mlp/c_fc``,
``ln_f``, ...), so ``bench/torch_gpt.py`` loads them one to one.

Dropout sits where nanoGPT's does, after the embeddings and after each residual
output projection, and is ``dropout.ExampleDropout``, whose masks do not depend
on the device layout. Unlike nanoGPT, the attention weights are not dropped.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import dropout

Array = jax.Array
Dtype = Any

PARAM_DTYPE = jnp.float32
LAYER_NORM_EPSILON = 1e-5  # torch's default
normal_init = nn.initializers.normal(0.02)


def residual_init(num_layers: int) -> nn.initializers.Initializer:
  """nanoGPT's init of residual output projections, normal(0.02/sqrt(2 L))."""
  return nn.initializers.normal(0.02 / math.sqrt(2 * num_layers))


class CausalSelfAttention(nn.Module):
  """Causal multi-head self-attention: fused q, k, v Dense, then c_proj."""

  num_heads: int
  out_init: nn.initializers.Initializer
  dtype: Dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, length, width = x.shape
    qkv = nn.Dense(3 * width, dtype=self.dtype, param_dtype=PARAM_DTYPE,
                   kernel_init=normal_init, name="c_attn")(x)
    heads = (batch, length, self.num_heads, width // self.num_heads)
    q, k, v = (part.reshape(heads) for part in jnp.split(qkv, 3, axis=-1))
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return nn.Dense(width, dtype=self.dtype, param_dtype=PARAM_DTYPE,
                    kernel_init=self.out_init, name="c_proj")(
                        y.reshape(batch, length, width))


class Mlp(nn.Module):
  """Dense to 4x the width, exact GELU, Dense back (c_fc, c_proj)."""

  out_init: nn.initializers.Initializer
  dtype: Dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    y = nn.Dense(4 * width, dtype=self.dtype, param_dtype=PARAM_DTYPE,
                 kernel_init=normal_init, name="c_fc")(x)
    return nn.Dense(width, dtype=self.dtype, param_dtype=PARAM_DTYPE,
                    kernel_init=self.out_init, name="c_proj")(
                        nn.gelu(y, approximate=False))


class Block(nn.Module):
  """Pre-LayerNorm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

  num_layers: int
  num_heads: int
  dropout_rate: float
  dtype: Dtype
  axis_name: str | None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPSILON,
                             dtype=self.dtype, param_dtype=PARAM_DTYPE)
    drop = functools.partial(dropout.ExampleDropout, self.dropout_rate,
                             axis_name=self.axis_name)
    out_init = residual_init(self.num_layers)
    y = CausalSelfAttention(self.num_heads, out_init, self.dtype, name="attn")(
        norm(name="ln_1")(x))
    x = x + drop()(y, deterministic=not train)
    y = Mlp(out_init, self.dtype, name="mlp")(norm(name="ln_2")(x))
    return x + drop()(y, deterministic=not train)


class GPT(nn.Module):
  """nanoGPT's decoder-only Transformer, for character language modelling.

  Precision: parameters are float32, and so are the residual stream (the
  embeddings and the block outputs added to them), the final LayerNorm, the
  tied head and the logits. Inside the blocks, LayerNorm outputs, Dense layers
  and attention run in ``dtype`` (attention's logits and softmax in float32),
  so with ``jnp.bfloat16`` the residual additions stay float32, as under
  ``torch.autocast``.

  Attributes:
    num_layers: number of Transformer blocks.
    width: embedding width, a multiple of ``num_heads``.
    num_heads: attention heads per block.
    context: the longest sequence, the size of the position table.
    vocab_size: number of tokens, and of logits.
    dropout_rate: dropout after the embeddings and the residual projections
      (training only; the attention weights are not dropped).
    dtype: computation dtype of the blocks.
    axis_name: a mapped axis the batch is split over (``jax.pmap``,
      ``shard_map``), along which dropout numbers the examples; None otherwise.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = GPT_2_32(vocab_size=65)
    >>> tokens = jnp.zeros((2, 16), jnp.int32)
    >>> variables = model.init(jax.random.key(0), tokens, train=False)
    >>> logits = model.apply(variables, tokens, train=False)
    >>> logits.shape, logits.dtype
    ((2, 16, 65), dtype('float32'))
  """

  num_layers: int
  width: int
  num_heads: int
  context: int
  vocab_size: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def __post_init__(self):
    for field in ("num_layers", "width", "num_heads", "context", "vocab_size"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}.")
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not a multiple of num_heads "
                       f"{self.num_heads}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(
          f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, tokens: Array, *, train: bool,
               mask: Array | None = None) -> Array:
    """Computes next-token logits at every position.

    Args:
      tokens: int array of shape (B, T), ``T <= context``.
      train: training mode (dropout) or evaluation mode.
      mask: unused; accepted so that a GPT is called as a Wide-ResNet is.

    Returns:
      float32 logits of shape (B, T, vocab_size); position t sees tokens up
      to t only.
    """
    del mask
    length = tokens.shape[1]
    if length > self.context:
      raise ValueError(f"{length} tokens exceed the context of {self.context}.")
    embed = functools.partial(nn.Embed, features=self.width,
                              param_dtype=PARAM_DTYPE,
                              embedding_init=normal_init)
    wte = embed(self.vocab_size, name="wte")
    x = wte(tokens) + embed(self.context, name="wpe")(jnp.arange(length))
    x = dropout.ExampleDropout(self.dropout_rate, axis_name=self.axis_name)(
        x, deterministic=not train)
    for index in range(self.num_layers):
      x = Block(self.num_layers, self.num_heads, self.dropout_rate, self.dtype,
                self.axis_name, name=f"h_{index}")(x, train=train)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=jnp.float32,
                     param_dtype=PARAM_DTYPE, name="ln_f")(x)
    return wte.attend(x)


GPT_2_32 = functools.partial(GPT, num_layers=2, width=32, num_heads=2,
                             context=16)  # tiny, for tests
GPT_4_128 = functools.partial(GPT, num_layers=4, width=128, num_heads=4,
                              context=64)
# nanoGPT's config/train_shakespeare_char.py.
GPT_6_384 = functools.partial(GPT, num_layers=6, width=384, num_heads=6,
                              context=256)

VARIANTS = {"gpt-6-384": GPT_6_384, "gpt-4-128": GPT_4_128,
            "gpt-2-32": GPT_2_32}
MODEL_NAMES = tuple(VARIANTS)
