"""Tests of the LCAM transformation (optax_lcam)."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import optax_lcam

# The golden vector of ../shared/docs/lcam-spec.md.
GOLDEN_GRADS = [1.0, -0.5, 2.0, 0.25, 1.0, -1.0]
GOLDEN_LOSSES = [2.0, 1.0, 3.0, 1.5, 0.8, 0.9]
GOLDEN_BETAS_USED_AT_STEPS_1_TO_5 = [0.9, 0.95, 0.9, 0.95, 0.9]


def _run(opt, params, grads, losses, **update_kwargs):
  """Runs `opt` on fixed gradients and losses; returns params and states."""
  state = opt.init(params)
  update = jax.jit(functools.partial(opt.update, **update_kwargs))
  params_seen, states_seen = [], []
  for g, loss in zip(grads, losses):
    updates, state = update(g, state, params, value=loss)
    params = optax.apply_updates(params, updates)
    params_seen.append(params)
    states_seen.append(state)
  return params_seen, states_seen


@pytest.mark.parametrize(
    "weight_decay, theta0, expected",
    [
        (0.0, 0.0, [-0.1, -0.14, -0.378, -0.6172, -0.94444, -1.138956]),
        (5e-4, 1.0, [0.89995, 0.85986, 0.62173151, 0.38238478, 0.05498627,
                     -0.13967514]),
    ],
)
def test_golden_vector(weight_decay, theta0, expected):
  opt = optax_lcam.lcam(0.1, beta_below=0.95, beta_above=0.9,
                        weight_decay=weight_decay, steps_per_epoch=4,
                        beta_init=0.9)
  params, states = _run(opt, jnp.array(theta0), GOLDEN_GRADS, GOLDEN_LOSSES)
  np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)
  pending = [float(optax_lcam.lcam_info(s).beta) for s in states[:5]]
  np.testing.assert_allclose(pending, GOLDEN_BETAS_USED_AT_STEPS_1_TO_5,
                             rtol=1e-6)


def _random_tree(key, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4), dtype)},
      "dense": [jax.random.normal(k2, (5,), dtype),
                jax.random.normal(k3, (2, 3), dtype)],
  }


@pytest.mark.parametrize("nesterov", [False, True])
def test_equal_betas_is_sgd_with_momentum(nesterov):
  lr, wd, beta = 0.05, 5e-4, 0.9
  opt = optax_lcam.lcam(lr, beta, beta, weight_decay=wd, steps_per_epoch=7,
                        nesterov=nesterov)
  ref = optax.chain(optax.add_decayed_weights(wd),
                    optax.sgd(lr, momentum=beta, nesterov=nesterov))
  key = jax.random.key(0)
  params = ref_params = _random_tree(key)
  state, ref_state = opt.init(params), ref.init(params)
  for _ in range(100):
    key, gkey, lkey = jax.random.split(key, 3)
    grads = _random_tree(gkey)
    loss = jax.random.uniform(lkey) * 3
    updates, state = opt.update(grads, state, params, value=loss)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = ref.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_updates)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-6)
  assert int(optax_lcam.lcam_info(state).step) == 100


def numpy_phases(losses, *, steps_per_epoch=None, averaging="epoch",
                 ema_decay=0.99):
  """The float64 NumPy mirror of the phase rule: one bool a step, True when
  the loss was strictly below the running mean (its epoch's mean so far, or
  the debiased moving average with ``averaging="ema"``).

  Like the reference's Python floats, the statistics are float64 whatever the
  dtype of ``losses`` (NumPy 2 would keep ``0.0 + np.float32`` in float32).
  """
  loss_sum, loss_weight = 0.0, 0.0
  below = []
  for t, loss in enumerate(losses):
    loss = float(loss)
    if averaging == "epoch":
      if t % steps_per_epoch == 0:
        loss_sum, loss_weight = 0.0, 0.0
      loss_sum += loss
      loss_weight += 1
    else:
      loss_sum = ema_decay * loss_sum + (1 - ema_decay) * loss
      loss_weight = ema_decay * loss_weight + (1 - ema_decay)
    below.append(loss < loss_sum / loss_weight)
  return below


def numpy_reference(grads, losses, *, lr, wd, theta0, beta_below, beta_above,
                    steps_per_epoch=None, beta_init=0.9, averaging="epoch",
                    ema_decay=0.99, lag=True, start_step=0, phases=None):
  """A line-by-line NumPy mirror of the reference training loop.

  The reference (PyTorch) keeps a Python running sum and count of the epoch's
  losses, resets them at the start of each epoch, and sets the optimizer's
  momentum for the next step after `optimizer.step()`. The ablation options
  follow `scale_by_lcam`'s documentation. ``phases`` (one bool a step) replace
  the loss's phases when given.
  """
  if phases is None:
    phases = numpy_phases(losses, steps_per_epoch=steps_per_epoch,
                          averaging=averaging, ema_decay=ema_decay)
  theta = np.array(theta0, np.float64)
  buf = None
  beta = beta_init
  thetas, betas_used = [], []
  for t, (g, below) in enumerate(zip(grads, phases)):
    decided = beta_below if below else beta_above
    used = beta if lag else decided
    if t < start_step:
      used = beta_init
    d = np.asarray(g) + wd * theta
    buf = d if buf is None else used * buf + d
    theta = theta - lr * buf
    beta = decided
    thetas.append(theta.copy())
    betas_used.append(used)
  return np.array(thetas), betas_used


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"lag": False},
        {"averaging": "ema", "ema_decay": 0.9},
        {"start_step": 9},
        {"beta_below": 0.9, "beta_above": 0.99},
    ],
    ids=["reference", "no-lag", "ema", "start-step", "swapped"],
)
def test_matches_numpy_mirror_of_reference_loop(options):
  rng = np.random.default_rng(1)
  steps_per_epoch, num_epochs = 7, 5
  num_steps = steps_per_epoch * num_epochs + 3  # ends mid-epoch
  grads = rng.normal(size=(num_steps, 4)).astype(np.float32)
  # Losses trend down with noise, like training.
  losses = (np.exp(-np.arange(num_steps) / 20)
            + 0.3 * rng.random(num_steps)).astype(np.float32)
  kwargs = {"beta_below": 0.95, "beta_above": 0.8, **options}
  theta0 = rng.normal(size=4).astype(np.float32)
  expected, betas_used = numpy_reference(
      grads, losses, lr=0.05, wd=1e-3, theta0=theta0,
      steps_per_epoch=steps_per_epoch, **kwargs)
  opt = optax_lcam.lcam(0.05, weight_decay=1e-3,
                        steps_per_epoch=steps_per_epoch, **kwargs)
  params, _ = _run(opt, jnp.asarray(theta0), grads, losses)
  np.testing.assert_allclose(np.stack(params), expected, rtol=2e-4, atol=2e-5)
  # The mirror must exercise both momenta, or it proves little.
  assert {kwargs["beta_below"], kwargs["beta_above"]} <= set(betas_used[1:])


def test_steps_per_epoch_resets_only_statistics():
  opt = optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=3)
  state = opt.init(jnp.zeros(()))
  for loss in [3.0, 2.0, 1.0]:  # Every loss below the mean after the first.
    _, state = opt.update(jnp.ones(()), state, value=loss)
  assert float(state.beta) == pytest.approx(0.95)
  assert float(optax_lcam.lcam_info(state).mean_loss) == pytest.approx(2.0)
  _, state = opt.update(jnp.ones(()), state, value=0.5)  # new epoch
  info = optax_lcam.lcam_info(state)
  assert float(info.mean_loss) == pytest.approx(0.5)
  assert not bool(info.below_mean)
  assert float(info.beta) == pytest.approx(0.9)


# ----------------------------------------------------------------------------
# With optax: dtypes, wrappers, schedules, jit. The checks optax asks of every
# contrib optimizer are in test_optax_contrib.py.


def _parabola(dtype=jnp.float32):
  initial = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
  target = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
  return initial, lambda p: jnp.sum((p - target) ** 2)


def test_injected_hyperparameters_can_be_changed_on_the_fly():
  injected = optax.inject_hyperparams(optax_lcam.lcam)(
      learning_rate=0.1, beta_below=0.95, beta_above=0.9, steps_per_epoch=4)
  params, states = _run(injected, jnp.array(1.0), GOLDEN_GRADS, GOLDEN_LOSSES)
  state = states[-1]
  state.hyperparams["beta_below"] = jnp.asarray(0.5)
  state.hyperparams["beta_above"] = jnp.asarray(0.5)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  updates, state = injected.update(jnp.array(1.0), state, params[-1],
                                   value=1.0)
  assert float(updates) == 0.0
  assert float(optax_lcam.lcam_info(state).beta) == 0.5


def test_learning_rate_schedule_follows_the_update_count():
  decaying = optax.exponential_decay(0.1, 1, 0.5)
  params, _ = _run(optax_lcam.lcam(decaying, steps_per_epoch=4),
                   jnp.array(0.0), [1.0, 0.0], [1.0, 1.0])
  # Step 1 applies lr 0.05 to the momentum buffer 0.95 * 1 + 0.
  np.testing.assert_allclose(params, [-0.1, -0.1 - 0.05 * 0.95], rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_updates_keep_the_parameters_dtype(dtype):
  params, objective = _parabola(dtype)
  for opt in (optax_lcam.lcam(0.1, steps_per_epoch=3),
              optax_lcam.lcam(0.1, steps_per_epoch=3,
                              accumulator_dtype=jnp.float32),
              optax_lcam.lcam(0.1, steps_per_epoch=3, nesterov=True)):
    state = jax.jit(opt.init)(params)
    for _ in range(2):
      value, grads = jax.value_and_grad(objective)(params)
      updates, state = jax.jit(opt.update)(grads, state, params, value=value)
      assert updates.dtype == dtype
      params = optax.apply_updates(params, updates)
      assert params.dtype == dtype


def test_inject_hyperparams_in_float32_with_bfloat16_parameters():
  # inject_hyperparams keeps its numbers in the parameters' dtype unless told:
  # in bfloat16, 0.95 becomes 0.94921875. With hyperparam_dtype=jnp.float32
  # the betas are exact and the state keeps its dtypes.
  params, objective = _parabola(jnp.bfloat16)
  plain = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=3)
  injected = optax.inject_hyperparams(
      optax_lcam.lcam, static_args=("steps_per_epoch",),
      hyperparam_dtype=jnp.float32)(0.1, 0.95, 0.9, steps_per_epoch=3)
  rounded = optax.inject_hyperparams(
      optax_lcam.lcam, static_args=("steps_per_epoch",))(
          0.1, 0.95, 0.9, steps_per_epoch=3)
  assert float(rounded.init(params).hyperparams["beta_below"]) == 0.94921875
  state, plain_state = injected.init(params), plain.init(params)
  dtypes = jax.tree.map(lambda x: x.dtype, state)
  assert state.hyperparams["beta_below"] == np.float32(0.95)
  for _ in range(4):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = jax.jit(injected.update)(grads, state, params,
                                              value=value)
    plain_updates, plain_state = plain.update(grads, plain_state, params,
                                              value=value)
    assert jax.tree.map(lambda x: x.dtype, state) == dtypes
    np.testing.assert_allclose(np.asarray(updates, np.float32),
                               np.asarray(plain_updates, np.float32),
                               rtol=2e-2, atol=1e-3)
    params = optax.apply_updates(params, updates)
    assert params.dtype == jnp.bfloat16


def test_inside_optax_multi_steps():
  opt = optax.MultiSteps(optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=4),
                         every_k_schedule=2)
  params = jnp.array([1.0, 2.0])
  state = jax.jit(opt.init)(params)
  update = jax.jit(opt.update)
  _, state = update(jnp.ones(2), state, params, value=1.0)
  updates, state = update(jnp.ones(2), state, params, value=3.0)
  np.testing.assert_allclose(updates, [-0.1, -0.1])
  info = optax_lcam.lcam_info(state)
  # optax.MultiSteps shows LCAM only the last micro-batch's loss ...
  assert int(info.step) == 1 and float(info.mean_loss) == 3.0


def test_multi_steps_with_mean_loss_averages_micro_batches():
  inner = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=4)
  opt = optax_lcam.multi_steps_with_mean_loss(inner, every_k_schedule=2)
  params = jnp.array([1.0, 2.0])
  state = opt.init(params)
  update = jax.jit(opt.update)
  micro_losses = [1.0, 3.0, 4.0, 0.0, 5.0, 6.0]
  for loss in micro_losses:
    _, state = update(jnp.ones(2), state, params, value=loss)
  # ... this wrapper the mean of the accumulated micro-batches: 2, 2, 5.5.
  info = optax_lcam.lcam_info(state)
  assert int(info.step) == 3
  assert float(info.mean_loss) == pytest.approx((2.0 + 2.0 + 5.5) / 3)
  with pytest.raises(TypeError, match="value=loss"):
    opt.update(jnp.ones(2), state, params)


def test_init_on_abstract_parameters():
  abstract = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16),
              "b": jax.ShapeDtypeStruct((4,), jnp.float32)}
  opt = optax_lcam.lcam(0.1, steps_per_epoch=10)
  abstract_state = jax.eval_shape(opt.init, abstract)
  lcam_state = optax_lcam.find_lcam_state(abstract_state)
  assert lcam_state.momentum["w"].shape == (3, 4)
  assert lcam_state.momentum["w"].dtype == jnp.bfloat16
  concrete = opt.init(abstract)
  assert optax_lcam.find_lcam_state(concrete).momentum["b"].dtype == (
      jnp.float32)


def test_buffer_donation_under_jit():
  opt = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=10)
  params = jnp.arange(1000.0)
  state = opt.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, loss):
    updates, state = opt.update(params, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  momentum = optax_lcam.find_lcam_state(state).momentum
  new_params, new_state = step(params, state, 1.0)
  assert params.is_deleted() and momentum.is_deleted()
  step(new_params, new_state, 2.0)


def _elementwise_fusions(hlo_text: str, shape: str) -> list[str]:
  """The fused computations of optimized HLO text whose result is ``shape``."""
  computations = re.findall(r"^%fused\S* \((.*?)\) -> (\S+) \{", hlo_text,
                            flags=re.MULTILINE)
  return [params for params, result in computations if result == shape]


def _loss_controlled_sgd():
  sgd = optax.inject_hyperparams(optax.sgd, static_args=("learning_rate",))(
      0.1, momentum=0.9)
  return optax.chain(
      optax.add_decayed_weights(5e-4),
      optax_lcam.loss_controlled(sgd, below={"momentum": 0.95},
                                 above={"momentum": 0.9}, steps_per_epoch=10))


@pytest.mark.parametrize("leaf_size", [1001, 1000])
@pytest.mark.parametrize("make_optimizer", [
    lambda: optax_lcam.lcam(0.1, 0.95, 0.9, weight_decay=5e-4,
                            steps_per_epoch=10),
    _loss_controlled_sgd], ids=["lcam", "loss_controlled"])
def test_momentum_update_multiplies_by_constants(make_optimizer, leaf_size):
  """The compiled update chooses its beta among constants, by the state's
  phase flags (boolean scalars) inside the element-wise loop.

  XLA's CPU code does not vectorize a loop that multiplies by a float scalar
  read from memory, on 1-D leaves of odd length (bench/lcam_overhead.py
  --tree equal measured 1.5 times SGD's step). Given a choice by flags, LLVM
  makes one loop per choice, each multiplying by a constant. LCAM's loop
  reads no float scalar; `loss_controlled`'s reads the inner's own value,
  which only the undecided first step uses."""
  opt = make_optimizer()
  params = {"w": jnp.ones(leaf_size)}
  state = opt.init(params)

  def step(params, state, loss):
    updates, state = opt.update(params, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, 1.0).compile().as_text()
  fusions = _elementwise_fusions(hlo, f"f32[{leaf_size}]")
  assert any("pred[]" in parameters for parameters in fusions), hlo
  for parameters in fusions:
    assert "f32[]" not in parameters or "pred[]" in parameters, hlo


def test_beta_in_force_follows_the_phase_flags_and_injected_betas_the_state():
  """With constant betas the step reads the beta decided at the last step
  from the phase flags; with injected betas, from ``state.beta``. Both are
  the same value unless the state was edited by hand."""
  params = jnp.ones(3)
  grads = jnp.ones(3)
  for opt, follows_flags in (
      (optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=5), True),
      (optax.inject_hyperparams(optax_lcam.scale_by_lcam)(
          0.95, 0.9, steps_per_epoch=5), False)):
    state = opt.init(params)
    for loss in (2.0, 1.0):
      _, state = opt.update(grads, state, value=loss)
    lcam_state = optax_lcam.find_lcam_state(state)
    edited = optax.tree.set(state, beta=jnp.asarray(0.5, lcam_state.beta.dtype))
    plain, _ = opt.update(grads, state, value=3.0)
    from_edited, _ = opt.update(grads, edited, value=3.0)
    assert np.array_equal(plain, from_edited) == follows_flags


# ----------------------------------------------------------------------------
# Several devices.


def _per_device_data(num_devices, key):
  grads = jax.random.normal(key, (num_devices, 6))
  # Device-dependent losses: some replicas see theirs below their own running
  # mean, some above, so replicas without a shared loss pick different betas.
  losses = jnp.stack([jnp.linspace(1.0, 3.0, num_devices),
                      jnp.linspace(3.0, 1.0, num_devices),
                      jnp.full((num_devices,), 2.0)])
  return grads, losses


def _pmap_train(opt, pmean_loss_in_caller=False):
  """Three steps under pmap, each replica keeping its own params and state."""
  num_devices = jax.local_device_count()
  assert num_devices == 8, "tests/conftest.py asks for 8 CPU devices"

  @functools.partial(jax.pmap, axis_name="batch")
  def step(params, state, grads, loss):
    grads = jax.lax.pmean(grads, "batch")
    if pmean_loss_in_caller:
      loss = jax.lax.pmean(loss, "batch")
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  replicate = lambda x: jnp.broadcast_to(x, (num_devices,) + x.shape)
  params = jnp.zeros(6)
  params, state = jax.tree.map(replicate, (params, opt.init(params)))
  grads, losses = _per_device_data(num_devices, jax.random.key(3))
  for loss in losses:
    params, state = step(params, state, grads, loss)
  return params, state


def _replicas_identical(tree):
  return all(bool(jnp.all(x == x[:1])) for x in jax.tree.leaves(tree))


def test_pmap_with_axis_name_keeps_replicas_identical():
  opt = optax_lcam.lcam(0.1, 0.95, 0.5, steps_per_epoch=10, axis_name="batch")
  assert _replicas_identical(_pmap_train(opt))


def test_pmap_with_loss_averaged_by_caller_keeps_replicas_identical():
  opt = optax_lcam.lcam(0.1, 0.95, 0.5, steps_per_epoch=10)
  assert _replicas_identical(_pmap_train(opt, pmean_loss_in_caller=True))


def test_pmap_without_shared_loss_lets_replicas_drift():
  # The trap of the spec: this is what the test above would catch.
  opt = optax_lcam.lcam(0.1, 0.95, 0.5, steps_per_epoch=10)
  params, state = _pmap_train(opt)
  assert not _replicas_identical(state)
  assert not _replicas_identical(params)


def test_jit_with_named_sharding_matches_single_device():
  mesh = jax.make_mesh((8,), ("batch",))
  data_sharding = NamedSharding(mesh, P("batch"))
  replicated = NamedSharding(mesh, P())
  opt = optax_lcam.lcam(0.1, 0.95, 0.5, steps_per_epoch=3)
  key_x, key_y = jax.random.split(jax.random.key(0))
  inputs = jax.random.normal(key_x, (64, 6))
  targets = jax.random.normal(key_y, (64,))

  def loss_fn(params, x, y):
    return jnp.mean((x @ params - y) ** 2)

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  sharded_step = jax.jit(step, out_shardings=replicated)
  params = jax.device_put(jnp.zeros(6), replicated)
  state = jax.device_put(opt.init(params), replicated)
  ref_params, ref_state = jnp.zeros(6), opt.init(jnp.zeros(6))
  for i in range(5):
    x = inputs[(i % 4) * 16:(i % 4 + 1) * 16].repeat(4, axis=0)
    y = targets[(i % 4) * 16:(i % 4 + 1) * 16].repeat(4, axis=0)
    params, state = sharded_step(params, state,
                                 jax.device_put(x, data_sharding),
                                 jax.device_put(y, data_sharding))
    ref_params, ref_state = jax.jit(step)(ref_params, ref_state, x, y)
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5)
  # atol: loss_sum_compensation is a remainder near zero, and the sharded
  # loss differs from the single-device one in its last bits.
  chex.assert_trees_all_close(state, ref_state, rtol=1e-5, atol=1e-6)
  for leaf in jax.tree.leaves(state):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 8
    assert all(np.array_equal(s, shards[0]) for s in shards)


# ----------------------------------------------------------------------------
# Bad input.


def test_non_finite_loss_leaves_statistics_and_beta_untouched():
  opt = optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=5)
  state = opt.init(jnp.zeros(2))
  for loss in [3.0, 1.0]:
    _, state = opt.update(jnp.ones(2), state, value=loss)
  for bad in [jnp.nan, jnp.inf, -jnp.inf]:
    _, after = jax.jit(opt.update)(jnp.ones(2), state, value=bad)
    for field in ("beta", "loss_sum", "loss_weight", "below_mean"):
      assert getattr(after, field) == getattr(state, field), field
    assert int(after.lcam_step) == int(state.lcam_step) + 1
  # The next finite loss is compared with the mean of the finite ones.
  _, after = opt.update(jnp.ones(2), after, value=2.5)
  assert float(optax_lcam.lcam_info(after).mean_loss) == pytest.approx(6.5 / 3)


def test_non_finite_loss_at_epoch_start_still_resets():
  opt = optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=2)
  state = opt.init(jnp.zeros(()))
  for loss in [3.0, 1.0, jnp.nan, 5.0]:
    _, state = opt.update(jnp.ones(()), state, value=loss)
  info = optax_lcam.lcam_info(state)
  assert float(info.mean_loss) == 5.0 and float(info.beta) == pytest.approx(0.9)


def test_missing_value_is_a_clear_type_error():
  opt = optax_lcam.lcam(0.1, steps_per_epoch=5)
  params = jnp.zeros(2)
  state = opt.init(params)
  with pytest.raises(TypeError, match=r"value=loss"):
    opt.update(jnp.ones(2), state, params)
  with pytest.raises(TypeError, match=r"value=loss"):
    opt.update(jnp.ones(2), state, params, value=None)
  with pytest.raises(ValueError, match="scalar"):
    opt.update(jnp.ones(2), state, params, value=jnp.ones(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_below": 1.0}, "beta_below"),
        ({"beta_above": -0.1}, "beta_above"),
        ({"beta_init": 1.5}, "beta_init"),
        ({"ema_decay": 1.0, "averaging": "ema"}, "ema_decay"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"steps_per_epoch": -3}, "steps_per_epoch"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch"),
        ({"steps_per_epoch": "8"}, "steps_per_epoch"),
        ({"steps_per_epoch": True}, "steps_per_epoch"),
        ({"steps_per_epoch": jnp.array(0)}, "steps_per_epoch"),
        ({"beta_below": jnp.array(1.5)}, "beta_below"),
        ({"beta_below": np.float32(1.5)}, "beta_below"),
        ({"beta_above": np.array(-0.1)}, "beta_above"),
        ({"beta_init": jnp.array(1.0, jnp.bfloat16)}, "beta_init"),
        ({"ema_decay": jnp.array(1.0), "averaging": "ema"}, "ema_decay"),
        ({"steps_per_epoch": None}, "needs `steps_per_epoch`"),
        ({"averaging": "median"}, "Unknown `averaging`"),
        ({"start_step": -1}, "start_step"),
    ],
)
def test_bad_hyperparameters_are_clear_value_errors(kwargs, match):
  kwargs = {"steps_per_epoch": 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    optax_lcam.scale_by_lcam(**kwargs)
  with pytest.raises(ValueError, match=match):
    optax_lcam.lcam(0.1, **kwargs)


def test_concrete_arrays_are_accepted_and_traced_values_not_checked():
  # Concrete 0-d arrays in range are used as numbers are; a traced value
  # (inject_hyperparams' steps_per_epoch and betas under jit) cannot be
  # checked and must not be concretized.
  opt = optax_lcam.lcam(0.1, jnp.array(0.95), np.float32(0.9),
                        steps_per_epoch=np.int64(4))
  _, states = _run(opt, jnp.array(0.0), GOLDEN_GRADS, GOLDEN_LOSSES)
  assert int(optax_lcam.lcam_info(states[-1]).step) == 6
  injected = optax.inject_hyperparams(optax_lcam.lcam)(
      0.1, 0.95, 0.9, steps_per_epoch=4)
  _, states = _run(injected, jnp.array(0.0), GOLDEN_GRADS, GOLDEN_LOSSES)
  pending = [float(optax_lcam.lcam_info(s).beta) for s in states[:5]]
  np.testing.assert_allclose(pending, GOLDEN_BETAS_USED_AT_STEPS_1_TO_5,
                             rtol=1e-6)


def test_complex_loss_is_a_clear_type_error():
  opt = optax_lcam.lcam(0.1, steps_per_epoch=5)
  params = jnp.zeros(2)
  state = opt.init(params)
  for loss in (1.0 + 0.0j, jnp.array(2.0 + 1.0j), np.complex64(1.0)):
    with pytest.raises(TypeError, match="complex"):
      opt.update(jnp.ones(2), state, params, value=loss)
  with pytest.raises(TypeError, match="complex"):
    jax.jit(opt.update)(jnp.ones(2), state, params, value=1.0j)


def test_ema_averaging_needs_no_epoch_length():
  opt = optax_lcam.scale_by_lcam(0.95, 0.9, averaging="ema", ema_decay=0.5)
  state = opt.init(jnp.zeros(()))
  for loss in [2.0, 1.0]:
    _, state = opt.update(jnp.zeros(()), state, value=loss)
  # Debiased EMA of [2, 1] with decay 0.5: (0.25 * 2 + 0.5 * 1) / 0.75.
  info = optax_lcam.lcam_info(state)
  assert float(info.mean_loss) == pytest.approx(4.0 / 3)
  assert bool(info.below_mean)


def test_lcam_info_finds_the_state_anywhere():
  lcam = optax_lcam.lcam(0.1, steps_per_epoch=4)
  params = jnp.zeros(2)
  wrapped = [
      optax.chain(optax.clip_by_global_norm(1.0), lcam),
      optax.inject_hyperparams(optax_lcam.lcam)(0.1, steps_per_epoch=4),
      optax.MultiSteps(lcam, 2),
      optax.apply_if_finite(lcam, 3),
  ]
  for opt in wrapped:
    state = opt.init(params)
    assert int(optax_lcam.lcam_info(state).step) == 0
    assert math.isnan(float(optax_lcam.lcam_info(state).mean_loss))
  with pytest.raises(ValueError, match="exactly one LCAM state"):
    optax_lcam.lcam_info(optax.sgd(0.1).init(params))
  with pytest.raises(ValueError, match="found 2"):
    optax_lcam.lcam_info((lcam.init(params), lcam.init(params)))


def test_info_reads_a_flax_nnx_optimizer_state():
  # nnx.Optimizer keeps its state's arrays in nnx Variables (OptArray).
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=4),
      wrt=nnx.Param)
  x = jnp.ones((8, 3))

  @nnx.jit
  def step(model, optimizer, target):
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(x)[:, 0] - target) ** 2))(model)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(step(model, optimizer, jnp.full(8, t)))
            for t in (5.0, 0.0)]
  info = optax_lcam.lcam_info(optimizer.opt_state)
  assert int(info.step) == 2
  assert float(info.mean_loss) == pytest.approx(np.mean(losses), rel=1e-6)
  assert bool(info.below_mean) and float(info.beta) == pytest.approx(0.95)
  control = optax_lcam.loss_control_info(optimizer.opt_state)
  assert isinstance(control.hyperparams["beta"], jax.Array)
  assert float(control.hyperparams["beta"]) == pytest.approx(0.95)
  assert isinstance(optax_lcam.find_lcam_state(optimizer.opt_state).beta,
                    jax.Array)


def test_flax_train_state_without_the_loss_names_train_state():
  # Flax's TrainState.apply_gradients passes `value` to `replace`, not to
  # the optimizer: the error says so.
  train_state = pytest.importorskip("flax.training.train_state")
  params = {"w": jnp.zeros(2)}
  lcam = optax_lcam.lcam(0.1, steps_per_epoch=4)
  for tx in (lcam, optax_lcam.multi_steps_with_mean_loss(lcam, 2)):
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    with pytest.raises(
        TypeError, match=r"value=loss.*TrainState.*Flax linen `TrainState`"):
      state.apply_gradients(grads={"w": jnp.ones(2)}, value=1.0)


def test_multi_steps_with_mean_loss_ignores_skipped_micro_steps():
  # optax.MultiSteps drops a micro-step its `should_skip_update_fn` rejects, as
  # if it never happened; its loss must not enter the mean either.
  inner = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=4)
  opt = optax_lcam.multi_steps_with_mean_loss(
      inner, every_k_schedule=2, should_skip_update_fn=optax.skip_not_finite)
  params = jnp.zeros(2)
  state = opt.init(params)
  update = jax.jit(opt.update)
  micro_steps = [(jnp.ones(2), 1.0),
                 (jnp.array([jnp.nan, 1.0]), 100.0),  # skipped by MultiSteps
                 (jnp.ones(2), 3.0)]
  for grads, loss in micro_steps:
    _, state = update(grads, state, params, value=loss)
  info = optax_lcam.lcam_info(state)
  assert int(info.step) == 1
  assert float(info.mean_loss) == 2.0


def near_tie_losses(num_steps, seed=0):
  """Losses of 2.3 give or take three float32 ulps (~2.4e-7 each).

  The epoch's mean is then always within a few ulps of the losses, where a
  float32 running sum (error ~1e-6 on the mean over 391 steps) or even a
  rounded float32 mean flips the comparison with the float64 reference.
  """
  rng = np.random.default_rng(seed)
  ulp = np.spacing(np.float32(2.3))
  return (np.float32(2.3)
          + rng.integers(-3, 4, size=num_steps).astype(np.float32) * ulp
          ).astype(np.float32)


def _naive_float32_phases(losses, steps_per_epoch):
  """The rule with a plain float32 running sum: what must NOT be done."""
  below = []
  for t, loss in enumerate(losses):
    if t % steps_per_epoch == 0:
      loss_sum, count = np.float32(0), np.float32(0)
    loss_sum, count = np.float32(loss_sum + loss), np.float32(count + 1)
    below.append(bool(loss < loss_sum / count))
  return below


def test_epoch_mean_matches_float64_on_near_ties():
  steps_per_epoch, num_epochs = 391, 3
  losses = near_tie_losses(steps_per_epoch * num_epochs)
  expected = numpy_phases(losses, steps_per_epoch=steps_per_epoch)
  # The data is meaningful: a float32 running sum gets many decisions wrong.
  naive = _naive_float32_phases(losses, steps_per_epoch)
  assert sum(a != b for a, b in zip(naive, expected)) > 100
  assert 0.2 < np.mean(expected) < 0.8

  opt = optax_lcam.scale_by_lcam(0.95, 0.9, steps_per_epoch=steps_per_epoch)

  def step(state, loss):
    _, state = opt.update(jnp.zeros(()), state, value=loss)
    info = optax_lcam.lcam_info(state)
    return state, (info.below_mean, info.mean_loss)

  state, (below, means) = jax.jit(lambda s, x: jax.lax.scan(step, s, x))(
      opt.init(jnp.zeros(())), jnp.asarray(losses))
  np.testing.assert_array_equal(np.asarray(below), expected)
  # The mean lcam_info reports is the float64 mean, rounded to float32.
  epoch_start = np.arange(len(losses)) // steps_per_epoch * steps_per_epoch
  epoch_means = [np.mean(losses[start:t + 1], dtype=np.float64)
                 for t, start in enumerate(epoch_start)]
  np.testing.assert_allclose(np.asarray(means), epoch_means, rtol=1e-7)
  assert state.loss_sum.dtype == jnp.float32


def test_apply_if_finite_freezes_the_step_but_selecting_old_values_does_not():
  # What the docstrings of lcam / scale_by_lcam warn about, and their advice.
  lcam = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=3)
  params = jnp.zeros(2)
  steps = [(jnp.ones(2), 1.0), (jnp.full(2, jnp.nan), jnp.nan),
           (jnp.ones(2), 2.0)]

  guarded = optax.apply_if_finite(lcam, max_consecutive_errors=5)
  state = guarded.init(params)
  for grads, loss in steps:
    _, state = guarded.update(grads, state, params, value=loss)
  assert int(optax_lcam.lcam_info(state).step) == 2  # one step behind

  state = lcam.init(params)
  for grads, loss in steps:
    updates, new_state = lcam.update(grads, state, params, value=loss)
    ok = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grads))
    params = jnp.where(ok, optax.apply_updates(params, updates), params)
    state = optax.tree.set(new_state, momentum=jnp.where(
        ok, optax.tree.get(new_state, "momentum"),
        optax.tree.get(state, "momentum")))
  info = optax_lcam.lcam_info(state)
  assert int(info.step) == 3 and float(info.mean_loss) == 1.5
  # Step 2 uses the beta decided at step 0: b = 0.9 * 1 + 1.
  np.testing.assert_allclose(params, [-0.1 - 0.1 * 1.9] * 2, rtol=1e-6)


# ----------------------------------------------------------------------------
# The placebo rule: phases="random".


def _random_phases(num_steps, losses=None, **options):
  """The phases (``below_mean``) and loss flags of ``num_steps`` steps."""
  options = {"steps_per_epoch": 5, "phases": "random", **options}
  opt = optax_lcam.scale_by_lcam(0.95, 0.9, **options)
  if losses is None:
    losses = jnp.linspace(3.0, 1.0, num_steps)

  def step(state, loss):
    _, state = opt.update(jnp.zeros(()), state, value=loss)
    return state, (state.below_mean, state.loss_below_mean)

  _, (below, loss_below) = jax.jit(
      lambda s, x: jax.lax.scan(step, s, x))(opt.init(jnp.zeros(())),
                                             jnp.asarray(losses))
  return np.asarray(below), np.asarray(loss_below)


@pytest.mark.parametrize("probability", [0.0, 0.2, 0.7, 1.0])
def test_random_phases_follow_a_constant_probability(probability):
  num_steps = 4000
  below, _ = _random_phases(num_steps, below_probability=probability)
  # Four standard deviations of the fraction of 4000 draws.
  tolerance = 4 * math.sqrt(probability * (1 - probability) / num_steps)
  assert abs(below.mean() - probability) <= tolerance


def test_random_phases_follow_a_scheduled_probability():
  schedule = optax.piecewise_constant_schedule(0.1, {2000: 9.0})  # then 0.9
  below, _ = _random_phases(4000, below_probability=schedule)
  tolerance = 4 * math.sqrt(0.1 * 0.9 / 2000)
  assert abs(below[:2000].mean() - 0.1) <= tolerance
  assert abs(below[2000:].mean() - 0.9) <= tolerance


def test_random_phases_ignore_the_losses_and_come_from_the_seed():
  rng = np.random.default_rng(0)
  losses = rng.random(60).astype(np.float32)
  other_losses = 10 * rng.random(60).astype(np.float32)
  other_losses[[0, 7]] = np.nan
  below, loss_below = _random_phases(60, losses, phase_seed=3)
  again, _ = _random_phases(60, losses, phase_seed=3)
  with_other_losses, other_loss_below = _random_phases(60, other_losses,
                                                       phase_seed=3)
  other_seed, _ = _random_phases(60, losses, phase_seed=4)
  np.testing.assert_array_equal(below, again)
  np.testing.assert_array_equal(below, with_other_losses)
  assert not np.array_equal(below, other_seed)
  # The loss's own phase is still recorded, and it does depend on the losses.
  np.testing.assert_array_equal(
      loss_below, numpy_phases(losses, steps_per_epoch=5))
  assert not np.array_equal(loss_below, other_loss_below)
  assert not np.array_equal(below, loss_below)


def test_random_phases_keep_the_loss_statistics_of_the_loss_rule():
  losses = np.random.default_rng(1).random(13).astype(np.float32)
  loss_rule = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=5)
  random_rule = optax_lcam.lcam(0.1, 0.95, 0.9, steps_per_epoch=5,
                                phases="random", below_probability=0.5)
  _, loss_states = _run(loss_rule, jnp.zeros(()), np.ones(13), losses)
  _, random_states = _run(random_rule, jnp.zeros(()), np.ones(13), losses)
  for loss_state, random_state in zip(loss_states, random_states):
    info = optax_lcam.lcam_info(loss_state)
    random_info = optax_lcam.lcam_info(random_state)
    assert info.loss_below_mean == info.below_mean
    assert random_info.loss_below_mean == info.below_mean
    assert random_info.mean_loss == info.mean_loss
    assert random_info.step == info.step
    # The pending beta follows the draw.
    expected = 0.95 if random_info.below_mean else 0.9
    assert float(random_info.beta) == pytest.approx(expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"lag": False}, {"start_step": 9},
     {"start_step": 9, "lag": False, "averaging": "ema"}],
    ids=["lag", "no-lag", "start-step", "start-step-no-lag-ema"])
def test_random_phases_use_the_lag_and_start_step_of_the_loss_rule(options):
  rng = np.random.default_rng(2)
  num_steps = 30
  grads = rng.normal(size=(num_steps, 3)).astype(np.float32)
  losses = rng.random(num_steps).astype(np.float32)
  options = {"beta_below": 0.95, "beta_above": 0.6, "beta_init": 0.8,
             **options}
  opt = optax_lcam.lcam(0.05, weight_decay=1e-3, steps_per_epoch=7,
                        phases="random", phase_seed=5, **options)
  theta0 = rng.normal(size=3).astype(np.float32)
  params, states = _run(opt, jnp.asarray(theta0), grads, losses)
  draws = [bool(optax_lcam.lcam_info(s).below_mean) for s in states]
  expected, betas_used = numpy_reference(
      grads, losses, lr=0.05, wd=1e-3, theta0=theta0, phases=draws,
      **{k: v for k, v in options.items() if k != "averaging"})
  np.testing.assert_allclose(np.stack(params), expected, rtol=2e-4,
                             atol=2e-5)
  assert {0.95, 0.6} <= set(betas_used[1:])


def test_random_phases_under_inject_hyperparams():
  hparams = dict(learning_rate=0.1, beta_below=0.95, beta_above=0.5,
                 steps_per_epoch=4, phases="random", below_probability=0.3,
                 phase_seed=7)
  grads, losses = np.ones(40, np.float32), np.linspace(2, 1, 40)
  params, states = _run(optax_lcam.lcam(**hparams), jnp.array(1.0), grads,
                        losses)
  injected = optax.inject_hyperparams(optax_lcam.lcam)(**hparams)
  inj_params, inj_states = _run(injected, jnp.array(1.0), grads, losses)
  np.testing.assert_allclose(inj_params, params, rtol=1e-6)
  chex.assert_trees_all_equal(
      [s.inner_state[1].loss_phase for s in inj_states],
      [s[1].loss_phase for s in states])


def test_random_phases_agree_across_pmap_replicas():
  options = {"steps_per_epoch": 10, "phases": "random",
             "below_probability": 0.5, "phase_seed": 1}
  opt = optax_lcam.lcam(0.1, 0.95, 0.5, axis_name="batch", **options)
  assert _replicas_identical(_pmap_train(opt))
  # Without the shared loss the replicas' statistics differ, but not their
  # phases, betas or parameters: the draws do not depend on the loss.
  params, state = _pmap_train(optax_lcam.lcam(0.1, 0.95, 0.5, **options))
  lcam_state = state[1]
  assert _replicas_identical((params, lcam_state.beta,
                              lcam_state.loss_phase.below_mean))
  assert not _replicas_identical(lcam_state.loss_phase.loss_below_mean)


def test_default_rule_state_is_unchanged():
  # Checkpoints of the default rule keep their tree: no leaf was added.
  state = optax_lcam.scale_by_lcam(steps_per_epoch=3).init(jnp.zeros(()))
  assert type(state.loss_phase) is optax_lcam.LossPhaseState
  assert optax_lcam.LossPhaseState._fields == (
      "phase_step", "loss_sum", "loss_sum_compensation", "loss_weight",
      "below_mean", "phase_decided")
  assert len(jax.tree.leaves(state)) == 8
  random_state = optax_lcam.scale_by_lcam(
      steps_per_epoch=3, phases="random").init(jnp.zeros(()))
  assert len(jax.tree.leaves(random_state)) == 9


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"phases": "coin"}, ValueError, "Unknown `phases`"),
        ({"phases": "random", "below_probability": 1.5}, ValueError,
         r"`below_probability` must be in \[0, 1\]"),
        ({"below_probability": -0.1}, ValueError, "below_probability"),
        ({"below_probability": "half"}, TypeError, "below_probability"),
        ({"phase_seed": -1}, ValueError, "phase_seed"),
        ({"phase_seed": 2.5}, ValueError, "phase_seed"),
        ({"phase_seed": 2 ** 31}, ValueError, "phase_seed"),
    ],
)
def test_bad_phase_options_are_clear_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    optax_lcam.scale_by_lcam(steps_per_epoch=10, **kwargs)
  with pytest.raises(error, match=match):
    optax_lcam.lcam(0.1, steps_per_epoch=10, **kwargs)
