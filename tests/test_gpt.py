"""Tests of models/gpt.py, the character GPT, and of its PyTorch peer.

Everything that runs uses GPT-2-32 (2 layers, width 32, context 16) or
GPT-4-128 on a 65-character vocabulary (Tiny Shakespeare's); bigger models are
only traced abstractly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models

VOCAB = 65  # Tiny Shakespeare's characters
BATCH = 8
DEVICES = 8
AXIS = "batch"


def _expected_params(num_layers, width, context, vocab_size):
  """nanoGPT's count, position table included, head tied to the embedding.

  Per block: two LayerNorms (2 x 2C), c_attn (C x 3C + 3C), attention's c_proj
  (C x C + C), c_fc (C x 4C + 4C) and the MLP's c_proj (4C x C + C):
  12 C^2 + 13 C. Then the final LayerNorm (2C) and the embeddings.
  """
  block = 12 * width**2 + 13 * width
  return (vocab_size * width + context * width + num_layers * block
          + 2 * width)


def _abstract_params(model, length):
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  return jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, train=False), tokens)["params"]


@pytest.fixture(scope="module")
def tiny_model():
  return models.create_model("gpt-2-32", VOCAB)


@pytest.fixture(scope="module")
def tokens():
  return jax.random.randint(jax.random.key(1), (BATCH, 16), 0, VOCAB)


@pytest.fixture(scope="module")
def tiny_params(tiny_model, tokens):
  init = jax.jit(lambda key, t: tiny_model.init(key, t, train=False))
  return init(jax.random.key(0), tokens)["params"]


@pytest.fixture(scope="module")
def eval_apply(tiny_model):
  return jax.jit(lambda params, t: tiny_model.apply(
      {"params": params}, t, train=False))


# --- Architecture -------------------------------------------------------------


@pytest.mark.parametrize("name, layers, width, context", [
    ("gpt-4-128", 4, 128, 64), ("gpt-6-384", 6, 384, 256),
    ("gpt-2-32", 2, 32, 16)])
def test_parameter_count_follows_the_formula(name, layers, width, context):
  params = _abstract_params(models.create_model(name, VOCAB), context)
  assert models.count_params(params) == _expected_params(
      layers, width, context, VOCAB)


def test_gpt_4_128_on_65_characters_has_809_856_parameters():
  assert _expected_params(4, 128, 64, VOCAB) == 809_856
  params = _abstract_params(models.create_model("gpt-4-128", VOCAB), 64)
  assert models.count_params(params) == 809_856


def test_layers_and_shapes_follow_nanogpt():
  params = _abstract_params(models.GPT_4_128(vocab_size=VOCAB), 64)
  assert set(params) == {"wte", "wpe", "ln_f"} | {f"h_{i}" for i in range(4)}
  assert params["wte"]["embedding"].shape == (VOCAB, 128)  # also the head
  assert params["wpe"]["embedding"].shape == (64, 128)
  shapes = jax.tree.map(lambda leaf: leaf.shape, params["h_3"])
  assert shapes == {
      "ln_1": {"scale": (128,), "bias": (128,)},
      "attn": {"c_attn": {"kernel": (128, 384), "bias": (384,)},
               "c_proj": {"kernel": (128, 128), "bias": (128,)}},
      "ln_2": {"scale": (128,), "bias": (128,)},
      "mlp": {"c_fc": {"kernel": (128, 512), "bias": (512,)},
              "c_proj": {"kernel": (512, 128), "bias": (128,)}}}
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(params))


def test_initialisation_is_nanogpts():
  params = jax.jit(lambda key: models.GPT_4_128(vocab_size=VOCAB).init(
      key, jnp.zeros((1, 64), jnp.int32), train=False))(
          jax.random.key(0))["params"]
  residual_std = 0.02 / math.sqrt(2 * 4)
  block = params["h_1"]
  for leaf, std in [
      (params["wte"]["embedding"], 0.02), (params["wpe"]["embedding"], 0.02),
      (block["attn"]["c_attn"]["kernel"], 0.02),
      (block["mlp"]["c_fc"]["kernel"], 0.02),
      (block["attn"]["c_proj"]["kernel"], residual_std),
      (block["mlp"]["c_proj"]["kernel"], residual_std)]:
    assert abs(float(jnp.mean(leaf))) < 0.1 * std
    assert float(jnp.std(leaf)) == pytest.approx(std, rel=0.05)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if "bias" in name:
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
    if "scale" in name:
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)


def test_logits_shape_and_dtype(tiny_params, eval_apply, tokens):
  logits = eval_apply(tiny_params, tokens)
  assert logits.shape == (BATCH, 16, VOCAB) and logits.dtype == jnp.float32
  shorter = eval_apply(tiny_params, tokens[:, :5])
  assert shorter.shape == (BATCH, 5, VOCAB)
  # Positions do not see the future, so a prefix gives the same logits.
  np.testing.assert_allclose(shorter, logits[:, :5], rtol=1e-5, atol=1e-5)


def test_more_tokens_than_the_context_raise(tiny_model, tiny_params):
  with pytest.raises(ValueError, match="context of 16"):
    tiny_model.apply({"params": tiny_params}, jnp.zeros((1, 17), jnp.int32),
                     train=False)


def test_changing_token_t_changes_no_earlier_logits(
    tiny_params, eval_apply, tokens):
  logits = eval_apply(tiny_params, tokens)
  for t in (0, 7, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    new_logits = eval_apply(tiny_params, changed)
    np.testing.assert_array_equal(new_logits[:, :t], logits[:, :t])
    assert not np.allclose(new_logits[:, t], logits[:, t], atol=1e-4)


def test_mask_is_accepted_and_unused(tiny_model, tiny_params, eval_apply,
                                     tokens):
  masked = tiny_model.apply({"params": tiny_params}, tokens, train=False,
                            mask=jnp.arange(BATCH) < 3)
  np.testing.assert_allclose(masked, eval_apply(tiny_params, tokens),
                             rtol=1e-6, atol=1e-6)


def test_bfloat16_computation_gives_float32_close_logits(
    tiny_params, eval_apply, tokens):
  model = models.create_model("gpt-2-32", VOCAB, dtype=jnp.bfloat16)
  logits = jax.jit(lambda p, t: model.apply({"params": p}, t, train=False))(
      tiny_params, tokens)
  assert logits.dtype == jnp.float32
  expected = eval_apply(tiny_params, tokens)
  scale = float(jnp.max(jnp.abs(expected)))
  assert float(jnp.max(jnp.abs(logits - expected))) < 0.02 * scale


@pytest.mark.parametrize("field, value", [
    ("num_layers", 0), ("width", 33), ("num_heads", 0), ("context", 0),
    ("vocab_size", 0), ("dropout_rate", 1.0)])
def test_invalid_fields_raise_at_construction(field, value):
  kwargs = dict(num_layers=2, width=32, num_heads=2, context=16,
                vocab_size=VOCAB)
  kwargs[field] = value
  with pytest.raises(ValueError, match=field):
    models.GPT(**kwargs)


# --- Dropout ------------------------------------------------------------------


def _dropout_logits(tiny_params, key, **fields):
  model = models.create_model("gpt-2-32", VOCAB, dropout_rate=0.2, **fields)
  return lambda t: model.apply({"params": tiny_params}, t, train=True,
                               rngs={"dropout": key})


def test_dropout_is_random_in_training_and_off_in_evaluation(
    tiny_params, eval_apply, tokens):
  first = jax.jit(_dropout_logits(tiny_params, jax.random.key(1)))(tokens)
  again = jax.jit(_dropout_logits(tiny_params, jax.random.key(1)))(tokens)
  other = jax.jit(_dropout_logits(tiny_params, jax.random.key(2)))(tokens)
  np.testing.assert_array_equal(again, first)
  assert not np.allclose(other, first, atol=1e-4)
  model = models.create_model("gpt-2-32", VOCAB, dropout_rate=0.2)
  np.testing.assert_allclose(
      model.apply({"params": tiny_params}, tokens, train=False),
      eval_apply(tiny_params, tokens), rtol=1e-6, atol=1e-6)


def test_dropout_gives_the_same_logits_on_1_2_and_8_devices(tiny_params,
                                                            tokens):
  key = jax.random.key(5)
  expected = jax.jit(_dropout_logits(tiny_params, key))(tokens)
  for devices in (2, DEVICES):
    mapped = jax.pmap(_dropout_logits(tiny_params, key, bn_axis_name=AXIS),
                      axis_name=AXIS, devices=jax.devices()[:devices])
    logits = mapped(tokens.reshape(devices, -1, tokens.shape[1]))
    np.testing.assert_allclose(logits.reshape(expected.shape), expected,
                               rtol=1e-5, atol=1e-5, err_msg=str(devices))


# --- Names --------------------------------------------------------------------


@pytest.mark.parametrize("name, layers, width, heads, context", [
    ("gpt-4-128", 4, 128, 4, 64), ("GPT_6_384", 6, 384, 6, 256),
    ("Gpt-2-32", 2, 32, 2, 16)])
def test_create_model_builds_named_gpts(name, layers, width, heads, context):
  model = models.create_model(name, VOCAB, dropout_rate=0.2,
                              dtype=jnp.bfloat16, bn_axis_name=AXIS)
  assert isinstance(model, models.GPT)
  assert (model.num_layers, model.width, model.num_heads, model.context,
          model.vocab_size) == (layers, width, heads, context, VOCAB)
  assert (model.dropout_rate, model.dtype, model.axis_name) == (
      0.2, jnp.bfloat16, AXIS)
  assert models.gpt_context(name) == context


def test_gpt_context_rejects_other_names():
  with pytest.raises(ValueError, match="not a GPT"):
    models.gpt_context("wrn-28-10")
  with pytest.raises(ValueError, match="known names"):
    models.gpt_context("gpt-99-1")


# --- The PyTorch peer (bench/torch_gpt.py) ------------------------------------


def _perturbed(params):
  """``params`` plus noise, so biases and LayerNorm scales are not 0 and 1."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      leaf + 0.05 * jax.random.normal(key, leaf.shape)
      for leaf, key in zip(leaves, keys)])


def test_torch_peer_computes_the_same_logits(tiny_model, tiny_params,
                                             eval_apply, tokens):
  torch = pytest.importorskip("torch")
  from bench import torch_gpt  # pylint: disable=g-import-not-at-top
  params = _perturbed(tiny_params)
  peer = torch_gpt.from_flax_module(tiny_model)
  torch_gpt.load_flax_params(peer, params)
  peer.eval()
  with torch.no_grad():
    logits = peer(torch.from_numpy(np.asarray(tokens, np.int64))).numpy()
  np.testing.assert_allclose(logits, eval_apply(params, tokens), rtol=0,
                             atol=1e-5)


def test_torch_peer_has_the_shapes_and_init_of_the_flax_model():
  torch = pytest.importorskip("torch")
  from bench import torch_gpt  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  peer = torch_gpt.from_flax_module(models.GPT_4_128(vocab_size=VOCAB))
  assert sum(p.numel() for p in peer.parameters()) == 809_856  # tied once
  assert peer.lm_head.weight is peer.transformer.wte.weight
  block = peer.transformer.h[1]
  for weight, std in [(block.attn.c_attn.weight, 0.02),
                      (block.attn.c_proj.weight, 0.02 / math.sqrt(8)),
                      (block.mlp.c_proj.weight, 0.02 / math.sqrt(8))]:
    assert float(weight.detach().std()) == pytest.approx(std, rel=0.05)
  assert float(block.mlp.c_fc.bias.detach().abs().max()) == 0.0


def test_torch_peer_train_step_learns_and_is_timed():
  torch = pytest.importorskip("torch")
  from bench import peer_timing  # pylint: disable=g-import-not-at-top
  from bench import torch_gpt  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  peer = torch_gpt.from_flax_module(models.GPT_2_32(vocab_size=VOCAB))
  step = torch_gpt.make_train_step(peer, optimizer="sgd", lr=0.5,
                                   weight_decay=0.0)
  tokens = torch.randint(0, VOCAB, (4, 16))
  targets = torch.roll(tokens, -1, dims=1)
  first = float(step(tokens, targets))
  assert first == pytest.approx(math.log(VOCAB), rel=0.1)
  rate = peer_timing.rate(step, tokens, targets, 5, tokens.numel())
  assert rate > 0 and float(step(tokens, targets)) < first
