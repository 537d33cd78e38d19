"""bench/lm_step_profile.py: each executed operation assigned to a part."""

import collections

import jax
import jax.numpy as jnp
import optax

from bench import lm_step_profile as profile
import models


def _compiled_gradient_text():
  model = models.create_model("gpt-2-32", 11)
  tokens = jnp.zeros((2, 16), jnp.int32)
  params = model.init(jax.random.key(0), tokens, train=False)["params"]

  def loss(params):
    logits = model.apply({"params": params}, tokens, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           tokens).mean()

  return jax.jit(jax.grad(loss)).lower(params).compile().as_text()


def test_every_part_of_a_compiled_gpt_gradient_is_found():
  parts = profile.hlo_parts(_compiled_gradient_text())
  counts = collections.Counter(parts.values())
  for part in (profile.MATMUL, profile.ATTENTION, profile.MLP,
               profile.LAYER_NORM, profile.REST):
    assert counts[part] > 0, (part, counts)


def test_an_operation_goes_to_its_part_by_metadata_then_by_opcode():
  part = profile.hlo_part
  assert part({"dot"}, "jit(f)/h_0/attn/c_attn/dot_general") == profile.MATMUL
  assert part({"dot"}, "jit(f)/h_1/attn/vmap(BNTS)/dot_general") == (
      profile.ATTENTION)
  assert part({"exponential", "select"}, "jit(f)/h_0/attn/softmax") == (
      profile.ATTENTION)
  assert part({"copy", "transpose", "bitcast"}, "jit(f)/h_0/mlp/add_any") == (
      profile.LAYOUT)
  assert part({"erf", "multiply"}, "jit(f)/h_3/mlp/erfc") == profile.MLP
  assert part({"rsqrt", "multiply"}, "jit(f)/ln_f/mul") == profile.LAYER_NORM
  assert part({"rsqrt", "multiply"}, "jit(f)/h_2/ln_1/mul") == (
      profile.LAYER_NORM)
  assert part({"add"}, "jit(f)/adamw/add") == profile.REST


def test_a_fusion_that_calls_a_dot_is_a_matrix_product():
  hlo = """HloModule m

%fused_computation.1 (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, \
rhs_contracting_dims={0}
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> f32[4,2] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  ROOT %ynn_fusion = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, \
calls=%fused_computation.1, metadata={op_name="jit(f)/h_0/mlp/c_fc/dot_general"}
}
"""
  parts = profile.hlo_parts(hlo)
  assert parts["ynn_fusion"] == profile.MATMUL
  assert parts["a"] == profile.LAYOUT  # a parameter moves nothing either


def test_torch_operations_go_to_the_same_parts():
  assert profile.torch_part("aten::addmm") == profile.MATMUL
  assert profile.torch_part(
      "aten::_scaled_dot_product_flash_attention_for_cpu") == profile.ATTENTION
  assert profile.torch_part("aten::gelu_backward") == profile.MLP
  assert profile.torch_part("aten::native_layer_norm") == profile.LAYER_NORM
  assert profile.torch_part("aten::copy_") == profile.LAYOUT
  assert profile.torch_part("Optimizer.step#AdamW.step") == profile.REST
