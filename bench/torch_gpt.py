"""The PyTorch peer of the character GPT: nanoGPT's model and a train step.

Written in the layout of nanoGPT's ``model.py`` (Karpathy) with the shapes of
``models/gpt.py``: biases everywhere, LayerNorm epsilon 1e-5, exact GELU, the
head tied to the token embedding, normal(0.02) init with the residual output
projections (``c_proj``) at 0.02 / sqrt(2 L), zero biases. As in the Flax
model, dropout follows the embeddings and the residual projections, and the
attention weights are not dropped. ``load_flax_params`` copies the Flax GPT's
parameters in, so both networks can be checked to compute the same logits.

PyTorch is not a dependency of the package; ``pip install -e '.[bench]'``
installs it (the CPU build where the index offers one).
"""

import math

from flax import traverse_util
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# The fields of `models.GPT` that fix the architecture.
FIELDS = ("num_layers", "width", "num_heads", "context", "vocab_size",
          "dropout_rate")


class CausalSelfAttention(nn.Module):
  """Fused q, k, v projection, causal attention, output projection."""

  def __init__(self, width: int, num_heads: int, dropout_rate: float):
    super().__init__()
    self.num_heads = num_heads
    self.c_attn = nn.Linear(width, 3 * width)
    self.c_proj = nn.Linear(width, width)
    self.resid_dropout = nn.Dropout(dropout_rate)

  def forward(self, x):
    batch, length, width = x.shape
    heads = (batch, length, self.num_heads, width // self.num_heads)
    q, k, v = (part.view(heads).transpose(1, 2)
               for part in self.c_attn(x).split(width, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).contiguous().view(batch, length, width)
    return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
  """Linear to 4x the width, exact GELU, linear back, dropout."""

  def __init__(self, width: int, dropout_rate: float):
    super().__init__()
    self.c_fc = nn.Linear(width, 4 * width)
    self.gelu = nn.GELU()
    self.c_proj = nn.Linear(4 * width, width)
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x):
    return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  def __init__(self, width: int, num_heads: int, dropout_rate: float):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width)
    self.attn = CausalSelfAttention(width, num_heads, dropout_rate)
    self.ln_2 = nn.LayerNorm(width)
    self.mlp = MLP(width, dropout_rate)

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
  """nanoGPT's GPT, with the fields of `models.GPT`; returns all logits."""

  def __init__(self, num_layers: int, width: int, num_heads: int, context: int,
               vocab_size: int, dropout_rate: float = 0.0):
    super().__init__()
    self.transformer = nn.ModuleDict(dict(
        wte=nn.Embedding(vocab_size, width),
        wpe=nn.Embedding(context, width),
        drop=nn.Dropout(dropout_rate),
        h=nn.ModuleList([Block(width, num_heads, dropout_rate)
                         for _ in range(num_layers)]),
        ln_f=nn.LayerNorm(width)))
    self.lm_head = nn.Linear(width, vocab_size, bias=False)
    self.transformer.wte.weight = self.lm_head.weight  # tied
    for module in self.modules():
      if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
      if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    for name, parameter in self.named_parameters():
      if name.endswith("c_proj.weight"):
        nn.init.normal_(parameter, 0.0, 0.02 / math.sqrt(2 * num_layers))

  def forward(self, tokens):
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.transformer.drop(
        self.transformer.wte(tokens) + self.transformer.wpe(positions))
    for block in self.transformer.h:
      x = block(x)
    return self.lm_head(self.transformer.ln_f(x))


def from_flax_module(module) -> GPT:
  """A freshly initialised peer of the same shape as a Flax `models.GPT`."""
  return GPT(**{field: getattr(module, field) for field in FIELDS})


def load_flax_params(model: GPT, params) -> None:
  """Copies a Flax GPT's ``params`` into ``model`` (strict: all, same shapes).

  Flax names map to nanoGPT's (``h_0/attn/c_attn/kernel`` to
  ``transformer.h.0.attn.c_attn.weight``); Dense kernels are transposed.
  """
  state = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    *scopes, leaf_name = path
    scopes = [f"h.{scope[2:]}" if scope.startswith("h_") else scope
              for scope in scopes]
    value = np.asarray(leaf, np.float32)
    if leaf_name == "kernel":
      value = value.T
    name = "weight" if leaf_name != "bias" else "bias"
    state[".".join(["transformer", *scopes, name])] = torch.tensor(value)
  state["lm_head.weight"] = state["transformer.wte.weight"]
  model.load_state_dict(state, strict=True)


def make_train_step(model: nn.Module, *, optimizer: str = "adamw",
                    lr: float = 1e-3, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.99),
                    weight_decay: float = 0.1, autocast_dtype=None):
  """One optimizer step on next-token cross-entropy; returns the (detached)
  loss. ``optimizer``: ``"adamw"`` (decoupled weight decay, as the harness's
  Shakespeare config) or ``"sgd"`` (momentum, coupled weight decay)."""
  if optimizer == "adamw":
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas,
                                  weight_decay=weight_decay)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
  device_type = next(model.parameters()).device.type

  def step(tokens, targets):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
      logits = model(tokens)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def config_peer(config, module, vocab_size: int):
  """The peer of a harness config and its Flax `models.GPT` ``module``.

  Returns its train step with the config's AdamW, and one batch of random
  tokens and targets of the config's shape; torch's seed is 0 first.
  """
  torch.manual_seed(0)
  model = from_flax_module(module)
  shape = (config.batch_size, config.data.context)
  tokens = torch.randint(0, vocab_size, shape)
  targets = torch.randint(0, vocab_size, shape)
  step = make_train_step(
      model, lr=config.schedule.learning_rate,
      betas=(config.optimizer.b1, config.optimizer.b2),
      weight_decay=config.optimizer.weight_decay)
  return step, tokens, targets
