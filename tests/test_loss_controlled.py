"""Tests of `optax_lcam.loss_controlled`: LCAM's rule for any optimizer."""

import functools

import chex
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest
from test_lcam import _pmap_train
from test_lcam import _replicas_identical
from test_lcam import numpy_phases

import optax_lcam

inject = optax.inject_hyperparams


def _momentum_controlled(lr, beta_below, beta_above, beta_init, **options):
  return optax_lcam.loss_controlled(
      inject(optax.sgd)(lr, momentum=beta_init),
      below={"momentum": beta_below}, above={"momentum": beta_above},
      **options)


def _random_data(num_steps, seed=0):
  """Gradients of a small tree, and training-like losses with a NaN."""
  rng = np.random.default_rng(seed)
  grads = {"w": rng.normal(size=(num_steps, 3, 2)).astype(np.float32),
           "b": rng.normal(size=(num_steps, 2)).astype(np.float32)}
  losses = (np.exp(-np.arange(num_steps) / 15)
            + 0.3 * rng.random(num_steps)).astype(np.float32)
  losses[7] = np.nan  # ignored by the rule; the update still happens
  params = {"w": rng.normal(size=(3, 2)).astype(np.float32),
            "b": np.zeros(2, np.float32)}
  return jax.tree.map(jnp.asarray, (params, grads, losses))


def _train(opt, params, grads, losses):
  """All steps in one `lax.scan`; returns the final params and state."""
  def step(carry, batch):
    params, state = carry
    g, loss = batch
    updates, state = opt.update(g, state, params, value=loss)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.jit(
      lambda p, s, g, x: jax.lax.scan(step, (p, s), (g, x)))(
          params, opt.init(params), grads, losses)
  return params, state


@pytest.mark.parametrize(
    "options",
    [{}, {"averaging": "ema", "ema_decay": 0.8}, {"lag": False},
     {"start_step": 9}, {"start_step": 9, "lag": False}],
    ids=["reference", "ema", "no-lag", "start-step", "start-step-no-lag"])
def test_controlled_sgd_momentum_is_lcam(options):
  lr, wd, steps_per_epoch = 0.05, 1e-3, 5
  betas = {"beta_below": 0.95, "beta_above": 0.6, "beta_init": 0.8}
  params, grads, losses = _random_data(4 * steps_per_epoch + 2)
  controlled = optax.chain(
      optax.add_decayed_weights(wd),
      _momentum_controlled(lr, steps_per_epoch=steps_per_epoch, **betas,
                           **options))
  reference = optax_lcam.lcam(lr, weight_decay=wd,
                              steps_per_epoch=steps_per_epoch, **betas,
                              **options)
  got, state = _train(controlled, params, grads, losses)
  expected, ref_state = _train(reference, params, grads, losses)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  info = optax_lcam.loss_control_info(state)
  ref_info = optax_lcam.loss_control_info(ref_state)
  assert int(info.step) == int(ref_info.step) == len(losses)
  assert bool(info.below_mean) == bool(ref_info.below_mean)
  np.testing.assert_allclose(info.mean_loss, ref_info.mean_loss)
  np.testing.assert_allclose(info.hyperparams["momentum"],
                             ref_info.hyperparams["beta"])


def numpy_adamw(params, grads, losses, *, lr, b1_below, b1_above, b1_init,
                b2, eps, weight_decay, steps_per_epoch):
  """optax.adamw in float64 NumPy, its b1 switched by the float64 phases."""
  phases = numpy_phases(losses, steps_per_epoch=steps_per_epoch)
  theta = np.asarray(params, np.float64)
  mu, nu, b1 = np.zeros_like(theta), np.zeros_like(theta), b1_init
  for t, (g, below) in enumerate(zip(grads, phases), start=1):
    g = np.asarray(g, np.float64)
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g * g
    mu_hat, nu_hat = mu / (1 - b1 ** t), nu / (1 - b2 ** t)
    theta = theta - lr * (mu_hat / (np.sqrt(nu_hat) + eps)
                          + weight_decay * theta)
    b1 = b1_below if below else b1_above  # used from the next step on
  return theta


def test_controlled_adamw_b1_matches_numpy_adamw():
  steps_per_epoch = 6
  params, grads, losses = _random_data(3 * steps_per_epoch + 1, seed=1)
  losses = losses.at[7].set(1.0)  # no NaN here: the mirror has no NaN rule
  hparams = dict(lr=0.01, b2=0.999, eps=1e-8, weight_decay=1e-2)
  opt = optax_lcam.loss_controlled(
      inject(optax.adamw)(learning_rate=hparams["lr"], b1=0.9,
                          b2=hparams["b2"], eps=hparams["eps"],
                          weight_decay=hparams["weight_decay"]),
      below={"b1": 0.95}, above={"b1": 0.5}, steps_per_epoch=steps_per_epoch)
  got, _ = _train(opt, params["b"], grads["b"], losses)
  expected = numpy_adamw(params["b"], grads["b"], losses, b1_below=0.95,
                         b1_above=0.5, b1_init=0.9,
                         steps_per_epoch=steps_per_epoch, **hparams)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  phases = numpy_phases(losses, steps_per_epoch=steps_per_epoch)
  assert 0 < sum(phases) < len(phases)  # both values of b1 were used


def test_values_before_start_step_and_lag():
  opt = _momentum_controlled(0.1, 0.95, 0.5, 0.8, steps_per_epoch=4,
                             start_step=2)
  params = jnp.zeros(())
  state = opt.init(params)
  seen = []
  for loss in [2.0, 1.0, 3.0, 0.5]:
    _, state = opt.update(jnp.ones(()), state, params, value=loss)
    seen.append(round(float(state.controlled_state.hyperparams["momentum"]),
                      2))
  # After step 0 the next step still uses the inner's own 0.8; from step 1 on,
  # the state holds what the loss decided for the next step.
  assert seen == [0.8, 0.95, 0.5, 0.95]


# ----------------------------------------------------------------------------
# With optax, jax and flax, as for `lcam` in test_lcam.py. The checks optax
# asks of every contrib optimizer are in test_optax_contrib.py.


def _adamw_controlled(**options):
  return optax_lcam.loss_controlled(
      inject(optax.adamw)(learning_rate=1e-2), below={"b1": 0.95},
      above={"b1": 0.8}, **{"steps_per_epoch": 3, **options})


def test_init_on_abstract_parameters():
  abstract = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16),
              "b": jax.ShapeDtypeStruct((4,), jnp.bfloat16)}
  state = jax.eval_shape(_adamw_controlled().init, abstract)
  assert optax.tree.get(state, "mu")["w"].shape == (3, 4)
  # Float hyper-parameters are kept in float32, not in the parameters' dtype.
  assert state.controlled_state.hyperparams["b1"].dtype == jnp.float32
  assert optax.tree.get(state, "nu")["w"].dtype == jnp.bfloat16
  assert state.loss_phase.phase_step.dtype == jnp.int32


@pytest.mark.parametrize("hyperparam_dtype", [None, jnp.float32])
def test_adamw_in_bfloat16_is_plain_adamw(hyperparam_dtype):
  # inject_hyperparams alone keeps AdamW's numbers in bfloat16: b2 = 0.999
  # rounds to 1, the bias correction divides by zero and the update is NaN.
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]], jnp.bfloat16),
            "b": jnp.array([0.25, -1.0], jnp.bfloat16)}
  objective = lambda p: jnp.sum((p["w"] @ p["b"] - 1.0) ** 2)
  inner = inject(optax.adamw, hyperparam_dtype=hyperparam_dtype)(1e-3)
  opt = optax_lcam.loss_controlled(inner, below={"b1": 0.95},
                                   above={"b1": 0.8}, steps_per_epoch=3)
  plain = optax.adamw(1e-3)
  state, plain_state = jax.jit(opt.init)(params), plain.init(params)
  dtypes = jax.tree.map(lambda x: x.dtype, state)
  update = jax.jit(opt.update)
  for step in range(3):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = update(grads, state, params, value=value)
    plain_updates, plain_state = plain.update(grads, plain_state, params)
    assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(
        lambda x: x.dtype, params)
    assert jax.tree.map(lambda x: x.dtype, state) == dtypes
    assert all(bool(jnp.all(jnp.isfinite(u)))
               for u in jax.tree.leaves(updates))
    if step == 0:  # The inner's own b1 = 0.9: AdamW's step.
      chex.assert_trees_all_close(
          jax.tree.map(lambda u: u.astype(jnp.float32), updates),
          jax.tree.map(lambda u: u.astype(jnp.float32), plain_updates),
          rtol=1e-2, atol=1e-5)
    params = optax.apply_updates(params, updates)
  hyperparams = state.controlled_state.hyperparams
  assert hyperparams["b2"].dtype == jnp.float32
  assert float(hyperparams["b2"]) == pytest.approx(0.999)


def test_inner_that_narrows_float32_hyperparameters_is_refused():
  # Before optax 0.2.8, inject_hyperparams' update cast every float
  # hyper-parameter to the parameters' dtype; this inner does the same.
  inner = inject(optax.adamw)(1e-3)

  def narrowing_update(updates, state, params=None, **extra_args):
    updates, state = inner.update(updates, state, params, **extra_args)
    return updates, state._replace(
        hyperparams=optax.tree.cast(state.hyperparams, jnp.bfloat16))

  opt = optax_lcam.loss_controlled(
      optax.GradientTransformationExtraArgs(inner.init, narrowing_update),
      below={"b1": 0.95}, above={"b1": 0.8}, steps_per_epoch=3)
  params = jnp.ones(2, jnp.bfloat16)
  with pytest.raises(ValueError, match=r"hyperparam_dtype=jnp.float32"):
    opt.update(params, opt.init(params), params, value=1.0)


def _sgd_of_vectors(learning_rate, momentum):
  """SGD whose init refuses scalar parameters."""
  sgd = optax.sgd(learning_rate, momentum)

  def init(params):
    if any(jnp.ndim(p) == 0 for p in jax.tree.leaves(params)):
      raise ValueError("vectors only")
    return sgd.init(params)

  return optax.GradientTransformation(init, sgd.update)


def test_inner_that_cannot_init_on_scalars_needs_float32_hyperparameters():
  # The float32 values are made by the inner's init on scalars; an inner that
  # refuses them must be built with float32 hyper-parameters.
  params = jnp.ones(2, jnp.bfloat16)
  for hyperparam_dtype in (None, jnp.float32):
    opt = optax_lcam.loss_controlled(
        inject(_sgd_of_vectors, hyperparam_dtype=hyperparam_dtype)(
            0.1, momentum=0.9),
        below={"momentum": 0.95}, above={"momentum": 0.5}, steps_per_epoch=3)
    if hyperparam_dtype is None:
      with pytest.raises(ValueError, match=r"hyperparam_dtype=jnp.float32"):
        opt.init(params)
    else:
      updates, _ = opt.update(params, opt.init(params), params, value=1.0)
      assert updates.dtype == jnp.bfloat16


def test_buffer_donation_under_jit():
  opt = _adamw_controlled()
  params = jnp.arange(1000.0)
  state = opt.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, loss):
    updates, state = opt.update(params, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  mu = optax.tree.get(state, "mu")
  new_params, new_state = step(params, state, 1.0)
  assert params.is_deleted() and mu.is_deleted()
  step(new_params, new_state, 2.0)


def test_pmap_with_axis_name_keeps_replicas_identical():
  opt = _momentum_controlled(0.1, 0.95, 0.5, 0.9, steps_per_epoch=10,
                             axis_name="batch")
  params, state = _pmap_train(opt)
  assert _replicas_identical((params, state))
  # Without the shared loss, the same data makes the replicas drift apart.
  params, state = _pmap_train(_momentum_controlled(
      0.1, 0.95, 0.5, 0.9, steps_per_epoch=10))
  assert not _replicas_identical(params)


def test_jit_with_named_sharding_matches_single_device():
  mesh = jax.make_mesh((8,), ("batch",))
  opt = _adamw_controlled()
  x = jax.random.normal(jax.random.key(0), (4, 64, 6))
  y = jnp.sin(x.sum(-1))

  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((x @ p - y) ** 2))(params)
    updates, state = opt.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  replicated = NamedSharding(mesh, P())
  sharded_step = jax.jit(step, out_shardings=replicated)
  params = jax.device_put(jnp.zeros(6), replicated)
  state = jax.device_put(opt.init(params), replicated)
  ref_params, ref_state = jnp.zeros(6), opt.init(jnp.zeros(6))
  for i in range(4):
    params, state = sharded_step(
        params, state, jax.device_put(x[i], NamedSharding(mesh, P("batch"))),
        jax.device_put(y[i], NamedSharding(mesh, P("batch"))))
    ref_params, ref_state = jax.jit(step)(ref_params, ref_state, x[i], y[i])
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5)
  chex.assert_trees_all_close(state, ref_state, rtol=1e-5, atol=1e-6)


def test_with_multi_steps_with_mean_loss():
  opt = optax_lcam.multi_steps_with_mean_loss(
      _momentum_controlled(0.1, 0.95, 0.5, 0.9, steps_per_epoch=4), 2)
  params = jnp.zeros(2)
  state = opt.init(params)
  for loss in [1.0, 3.0, 0.5, 0.5]:  # updates see 2.0, then 0.5 < 1.25
    _, state = jax.jit(opt.update)(jnp.ones(2), state, params, value=loss)
  info = optax_lcam.loss_control_info(state)
  assert int(info.step) == 2 and float(info.mean_loss) == 1.25
  assert float(info.hyperparams["momentum"]) == pytest.approx(0.95)


def test_with_flax_nnx_optimizer():
  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _adamw_controlled(), wrt=nnx.Param)
  x, y = jnp.ones((8, 3)), jnp.zeros(8)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(x)[:, 0] - y) ** 2))(model)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(4)]
  assert losses[-1] < losses[0]
  # The state's arrays are nnx Variables; the info holds their values.
  info = optax_lcam.loss_control_info(optimizer.opt_state)
  assert int(info.step) == 4
  assert float(info.mean_loss) == pytest.approx(np.mean(losses[3:]))
  assert isinstance(info.hyperparams["b1"], jax.Array)
  assert float(info.hyperparams["b1"]) == pytest.approx(0.8)


def test_flax_train_state_without_the_loss_names_train_state():
  train_state = pytest.importorskip("flax.training.train_state")
  params = {"w": jnp.zeros(2)}
  state = train_state.TrainState.create(apply_fn=None, params=params,
                                        tx=_adamw_controlled())
  with pytest.raises(TypeError,
                     match=r"value=loss.*TrainState.*Flax linen `TrainState`"):
    state.apply_gradients(grads={"w": jnp.ones(2)}, value=1.0)


def test_loss_control_info_needs_exactly_one_state():
  params = jnp.zeros(2)
  with pytest.raises(ValueError, match="found 0"):
    optax_lcam.loss_control_info(optax.sgd(0.1).init(params))
  both = (optax_lcam.lcam(0.1, steps_per_epoch=3).init(params),
          _adamw_controlled().init(params))
  with pytest.raises(ValueError, match="found 2"):
    optax_lcam.loss_control_info(both)


# ----------------------------------------------------------------------------
# Construction errors.


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: optax_lcam.loss_controlled(
            optax.adamw(1e-3), {"b1": 0.95}, {"b1": 0.9}, steps_per_epoch=3),
         TypeError, r"made by `optax.inject_hyperparams`.*tuple of \(Scale"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw), {"b1": 0.95}, {"b1": 0.9}, steps_per_epoch=3),
         TypeError, "call it"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"beta1": 0.95}, {"beta1": 0.9},
            steps_per_epoch=3),
         ValueError, r"no injected hyper-parameter `beta1`.*'b1', 'b2'"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.sgd, static_args="momentum")(0.1, momentum=0.9),
            {"momentum": 0.95}, {"momentum": 0.9}, steps_per_epoch=3),
         ValueError, "kept it static.*static_args"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(optax.linear_schedule(1.0, 0.0, 10)),
            {"learning_rate": 0.1}, {"learning_rate": 0.2}, steps_per_epoch=3),
         ValueError, "`learning_rate` is a schedule"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95, "b2": 0.99}, {"b1": 0.9},
            steps_per_epoch=3),
         ValueError, r"same hyper-parameters.*Only in `below`: \['b2'\]"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {}, {}, steps_per_epoch=3),
         ValueError, "at least one hyper-parameter"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), [("b1", 0.9)], {"b1": 0.9},
            steps_per_epoch=3),
         TypeError, "`below` must be a dict"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": optax.constant_schedule(0.9)},
            {"b1": 0.9}, steps_per_epoch=3),
         TypeError, "must be a number or an array"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": jnp.ones(3)}, {"b1": 0.9},
            steps_per_epoch=3),
         ValueError, "has shape"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95}, {"b1": 0.9}),
         ValueError, "needs `steps_per_epoch`"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95}, {"b1": 0.9},
            steps_per_epoch="8"),
         ValueError, "`steps_per_epoch` must be a positive integer"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95}, {"b1": 0.9},
            steps_per_epoch=3, averaging="median"),
         ValueError, "Unknown `averaging`"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95}, {"b1": 0.9},
            steps_per_epoch=3, phases="shuffled"),
         ValueError, "Unknown `phases`"),
        (lambda: optax_lcam.loss_controlled(
            inject(optax.adamw)(1e-3), {"b1": 0.95}, {"b1": 0.9},
            steps_per_epoch=3, phases="random", below_probability=2.0),
         ValueError, "`below_probability` must be in"),
    ],
    ids=["not-injected", "factory", "unknown-name", "static", "scheduled",
         "different-keys", "empty", "not-a-dict", "schedule-value", "shape",
         "no-epoch-length", "epoch-length-string", "bad-averaging",
         "bad-phases", "bad-probability"],
)
def test_construction_errors_are_clear(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_checks_at_init_when_init_needs_the_parameters():
  # A mask shaped like the parameters: init cannot run on a dummy scalar, so
  # the name is checked by init, with the same message.
  params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
  inner = inject(optax.adamw)(1e-3, mask={"w": True, "b": False})
  opt = optax_lcam.loss_controlled(inner, {"beta1": 0.9}, {"beta1": 0.8},
                                   steps_per_epoch=3)
  with pytest.raises(ValueError, match="no injected hyper-parameter `beta1`"):
    opt.init(params)
  opt = optax_lcam.loss_controlled(inner, {"b1": 0.95}, {"b1": 0.8},
                                   steps_per_epoch=3)
  updates, _ = opt.update(params, opt.init(params), params, value=1.0)
  assert float(jnp.abs(updates["w"]).sum()) > 0


def test_missing_loss_is_a_clear_type_error():
  opt = _adamw_controlled()
  params = jnp.zeros(2)
  with pytest.raises(TypeError, match="value=loss"):
    opt.update(jnp.ones(2), opt.init(params), params)


def test_complex_loss_is_a_clear_type_error():
  opt = _adamw_controlled()
  params = jnp.zeros(2)
  with pytest.raises(TypeError, match="complex"):
    opt.update(jnp.ones(2), opt.init(params), params, value=1.0 + 0.5j)


def test_state_field_names_are_distinct_inside_a_chain():
  opt = optax.chain(optax.add_decayed_weights(1e-4),
                    _momentum_controlled(0.1, 0.95, 0.5, 0.9,
                                         steps_per_epoch=3))
  state = opt.init({"w": jnp.zeros(2)})
  names = (optax_lcam.LossControlledState._fields
           + optax_lcam.LossPhaseState._fields + ("momentum", "trace"))
  for name in names:
    assert len(optax.tree.get_all_with_path(state, name)) == 1, name


# ----------------------------------------------------------------------------
# The placebo rule: phases="random".


@pytest.mark.parametrize(
    "options",
    [{}, {"lag": False, "start_step": 9},
     {"below_probability": optax.linear_schedule(0.0, 1.0, 20)}],
    ids=["reference", "start-step-no-lag", "scheduled"])
def test_random_controlled_sgd_momentum_is_random_lcam(options):
  lr, wd, steps_per_epoch = 0.05, 1e-3, 5
  betas = {"beta_below": 0.95, "beta_above": 0.6, "beta_init": 0.8}
  options = {"phases": "random", "phase_seed": 2,
             "steps_per_epoch": steps_per_epoch, **options}
  params, grads, losses = _random_data(4 * steps_per_epoch + 2)
  controlled = optax.chain(
      optax.add_decayed_weights(wd),
      _momentum_controlled(lr, **betas, **options))
  reference = optax_lcam.lcam(lr, weight_decay=wd, **betas, **options)
  got, state = _train(controlled, params, grads, losses)
  expected, ref_state = _train(reference, params, grads, losses)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(state[1].loss_phase, ref_state[1].loss_phase)


def test_loss_control_info_reports_the_loss_phase_beside_the_draw():
  losses = [2.0, 1.0, 3.0, 0.5, 0.7, 0.9, 0.1, 2.0]
  seen = {}
  for phases in ("loss", "random"):
    opt = _momentum_controlled(0.1, 0.95, 0.5, 0.8, steps_per_epoch=4,
                               phases=phases, below_probability=0.5)
    params = jnp.zeros(())
    state = opt.init(params)
    infos = []
    for loss in losses:
      _, state = opt.update(jnp.ones(()), state, params, value=loss)
      infos.append(optax_lcam.loss_control_info(state))
    seen[phases] = infos
  loss_phases = numpy_phases(losses, steps_per_epoch=4)
  for info, random_info, expected in zip(seen["loss"], seen["random"],
                                         loss_phases):
    assert bool(info.below_mean) == bool(info.loss_below_mean) == expected
    assert bool(random_info.loss_below_mean) == expected
    assert float(random_info.hyperparams["momentum"]) == pytest.approx(
        0.95 if random_info.below_mean else 0.5)
  draws = [bool(info.below_mean) for info in seen["random"]]
  assert draws != loss_phases


def test_random_phases_agree_across_pmap_replicas():
  options = {"steps_per_epoch": 10, "phases": "random", "phase_seed": 4}
  opt = _momentum_controlled(0.1, 0.95, 0.5, 0.9, axis_name="batch",
                             **options)
  assert _replicas_identical(_pmap_train(opt))
  # Without the shared loss, the draws still keep the replicas together.
  params, state = _pmap_train(_momentum_controlled(0.1, 0.95, 0.5, 0.9,
                                                   **options))
  assert _replicas_identical((params, state.loss_phase.below_mean,
                              state.controlled_state.hyperparams))
