"""The behaviour optax asks of its contrib optimizers, for both of ours.

The checks of optax's `optax/contrib/_common_test.py`, applied to `lcam` and
to `loss_controlled` (AdamW with its ``b1`` controlled): an unexpected keyword
argument without recompiling, convergence under `jax.lax.scan`, equal results
inside `optax.inject_hyperparams`, updates in the parameters' dtype (bfloat16
and float32), zero updates from `optax.MultiSteps` between emitting steps and
the plain optimizer's update when it emits (bfloat16 and float32), state shapes
and dtypes fixed under `jax.lax.cond`, and a schedule wherever a signature
allows one. Both optimizers take the loss as ``value``, so every step here
passes it.
"""

from collections.abc import Callable
import functools
import inspect
import typing
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lcam

inject = optax.inject_hyperparams


def _lcam(learning_rate: optax.ScalarOrSchedule = 1e-3, **rule):
  return optax_lcam.lcam(learning_rate, 0.95, 0.9,
                         **{"steps_per_epoch": 10, **rule})


def _injected_adamw(learning_rate: optax.ScalarOrSchedule = 1e-3):
  # AdamW's defaults, b2 = 0.999 included: inject_hyperparams alone would
  # round it to 1 in bfloat16, and loss_controlled keeps it in float32.
  return inject(optax.adamw)(learning_rate=learning_rate, b1=0.9)


def _controlled_adamw(learning_rate: optax.ScalarOrSchedule = 1e-3, **rule):
  return optax_lcam.loss_controlled(
      _injected_adamw(learning_rate),
      below={"b1": 0.95}, above={"b1": 0.8},
      **{"steps_per_epoch": 10, **rule})


class _Optimizer(NamedTuple):
  """An optimizer under test.

  Attributes:
    make: Builds it from a learning rate (a number or a schedule) and options
      of the loss rule.
    factory: A function that builds it and that `optax.inject_hyperparams`
      can wrap.
    hparams: The keyword arguments of ``factory``.
    learning_rate_of: The factory whose signature has the learning rate.
  """

  make: Callable[..., optax.GradientTransformationExtraArgs]
  factory: Callable[..., optax.GradientTransformationExtraArgs]
  hparams: dict[str, Any]
  learning_rate_of: Callable[..., Any]


OPTIMIZERS = {
    "lcam": _Optimizer(
        make=_lcam,
        factory=optax_lcam.lcam,
        hparams=dict(learning_rate=1e-3, beta_below=0.95, beta_above=0.9,
                     weight_decay=5e-4, steps_per_epoch=10),
        learning_rate_of=optax_lcam.lcam),
    "loss_controlled": _Optimizer(
        make=_controlled_adamw,
        factory=functools.partial(optax_lcam.loss_controlled,
                                  _injected_adamw()),
        hparams=dict(below={"b1": 0.95}, above={"b1": 0.8},
                     steps_per_epoch=10),
        learning_rate_of=optax.adamw),
}


# The problems of optax's tests: (initial params, solution, objective).


def _parabola(dtype):
  solution = jnp.array([1.0, -1.0, 1.0], dtype)
  objective = lambda p: jnp.sum((p - solution) ** 2)
  return jnp.array([-1.0, 10.0, 1.0], dtype), solution, objective


def _rosenbrock(dtype):
  a, b = 1.0, 100.0
  objective = lambda p: (a - p[0]) ** 2 + b * (p[1] - p[0] ** 2) ** 2
  return jnp.zeros(2, dtype), jnp.array([a, a ** 2], dtype), objective


def _matrix_parabola(dtype):
  solution = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  objective = lambda p: jnp.sum((p - solution) ** 2)
  return jnp.zeros((2, 2), dtype), solution, objective


def _step_fn(opt, objective, **extra_args):
  """One training step that passes the loss as ``value``."""
  def step(params, state):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = opt.update(grads, state, params, value=value,
                                **extra_args)
    return optax.apply_updates(params, updates), state
  return step


def _run(opt, params, grads, losses):
  """Jitted updates on fixed gradients and losses; the updates and states."""
  state = opt.init(params)
  update = jax.jit(opt.update)
  all_updates, states = [], []
  for g, loss in zip(grads, losses):
    updates, state = update(g, state, params, value=loss)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
    states.append(state)
  return all_updates, states


# Losses that put some steps below the running mean and some above it.
LOSSES = [2.0, 1.0, 3.0, 1.5, 0.8, 0.9, 2.5, 0.5]


def _compilations_of_two_steps(opt, objective, params):
  """How many times a jitted step has compiled after its first and second
  call, from a fresh state; the update gets an argument it does not know."""
  step = jax.jit(_step_fn(opt, objective, unexpected_extra_arg=1))
  params, state = step(params, opt.init(params))
  after_first = step._cache_size()  # pylint: disable=protected-access
  step(params, state)
  return after_first, step._cache_size()  # pylint: disable=protected-access


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_accepts_unexpected_extra_args_and_compiles_once(name):
  params, _, objective = _rosenbrock(jnp.float32)
  opt = OPTIMIZERS[name].make()
  assert _compilations_of_two_steps(opt, objective, params) == (1, 1)


def test_compilation_count_sees_a_state_that_changes_type():
  # What the test above would catch: an init whose state is weakly typed
  # while the update's is not compiles the step a second time.
  def update(updates, count, params=None, **extra_args):
    del params, extra_args
    return updates, count + jnp.float32(1)

  changes_type = optax.GradientTransformationExtraArgs(
      lambda params: jnp.asarray(0.0), update)
  params, _, objective = _rosenbrock(jnp.float32)
  assert _compilations_of_two_steps(changes_type, objective, params) == (1, 2)


@pytest.mark.parametrize("problem",
                         [_parabola, _rosenbrock, _matrix_parabola])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_under_scan(name, problem):
  opt = OPTIMIZERS[name].make()
  params, solution, objective = problem(jnp.float32)
  state = opt.init(params)
  state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op map
  step = _step_fn(opt, objective)

  def scanned(carry, _):
    return step(*carry), None

  (params, state), _ = jax.jit(
      lambda carry: jax.lax.scan(scanned, carry, length=30_000))(
          (params, state))
  chex.assert_trees_all_close(params, solution, rtol=3e-2, atol=3e-2)
  assert int(optax_lcam.loss_control_info(state).step) == 30_000


@pytest.mark.parametrize("static_args", [(), ("steps_per_epoch",)])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_gives_the_same_updates_and_state(name,
                                                             static_args):
  optimizer = OPTIMIZERS[name]
  opt = optimizer.factory(**optimizer.hparams)
  injected = inject(optimizer.factory,
                    static_args=static_args)(**optimizer.hparams)
  params = {"w": -jnp.ones((2, 3)), "b": jnp.ones((2, 5, 2))}
  grads = [jax.tree.map(lambda p, i=i: (-1.0) ** i * p, params)
           for i in range(len(LOSSES))]
  updates, states = _run(opt, params, grads, LOSSES)
  inj_updates, inj_states = _run(injected, params, grads, LOSSES)
  chex.assert_trees_all_close(inj_updates, updates, rtol=1e-5)
  chex.assert_trees_all_close([s.inner_state for s in inj_states], states,
                              rtol=1e-5, atol=1e-5)
  # Both phases were used, or the comparison proves little.
  phases = {bool(optax_lcam.loss_control_info(s).below_mean) for s in states}
  assert phases == {False, True}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_updates_keep_the_parameters_dtype(name, dtype):
  opt = OPTIMIZERS[name].make()
  params = jnp.array([1.0, 2.0], dtype)
  value, grads = jax.value_and_grad(lambda p: jnp.sum(p ** 2))(params)
  state = jax.jit(opt.init)(params)
  updates, _ = jax.jit(opt.update)(grads, state, params, value=value)
  assert updates.dtype == params.dtype
  assert bool(jnp.all((updates != 0) & jnp.isfinite(updates)))


# The plain optimizers that `OPTIMIZERS` stand for, for the emitted update.
PLAIN = {
    "lcam": lambda: optax.chain(optax.add_decayed_weights(0.0),
                                optax.sgd(1e-3, momentum=0.9)),
    "loss_controlled": lambda: optax.adamw(1e-3, b1=0.9),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize(
    "wrapper", [optax.MultiSteps, optax_lcam.multi_steps_with_mean_loss],
    ids=["MultiSteps", "multi_steps_with_mean_loss"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multi_steps_emit_zero_updates_between_steps(name, wrapper, dtype):
  opt = wrapper(OPTIMIZERS[name].make(), every_k_schedule=3)
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda p: jnp.sum(p ** 2)
  state = jax.jit(opt.init)(params)
  update = jax.jit(opt.update)
  for micro_step in range(3):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = update(grads, state, params, value=value)
    assert updates.dtype == params.dtype
    if micro_step < 2:
      chex.assert_trees_all_equal(updates, jnp.zeros_like(params))
  # The third micro-step emits the plain optimizer's first update (on the
  # same gradient three times), finite in bfloat16 too.
  assert bool(jnp.all((updates != 0) & jnp.isfinite(updates)))
  plain = PLAIN[name]()
  expected, _ = plain.update(grads, plain.init(params), params)
  chex.assert_trees_all_close(updates.astype(jnp.float32),
                              expected.astype(jnp.float32), rtol=1e-2)


@pytest.mark.parametrize(
    "dtype, x64",
    [("float16", False), ("bfloat16", False), ("float32", False),
     ("bfloat16", True), ("float32", True), ("float64", True)])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_shapes_and_dtypes_are_stable_under_cond(name, dtype, x64):
  with jax.enable_x64(x64):
    dtype = jnp.dtype(dtype)
    opt = OPTIMIZERS[name].make()
    params, _, objective = _parabola(dtype)
    # The loss in another dtype than the parameters, on purpose.
    loss_dtype = jnp.bfloat16 if dtype == jnp.float16 else jnp.float16

    @jax.jit
    def step(params, state):
      value, grads = jax.value_and_grad(objective)(params)
      update = lambda: opt.update(grads, state, params,
                                  value=value.astype(loss_dtype))
      # A condition the compiler cannot fold: both branches must return the
      # same shapes and dtypes, the parameters' for the updates.
      condition = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(condition, update,
                                    lambda: (params, state))
      return optax.apply_updates(params, updates), state

    state = opt.init(params)
    shapes_and_dtypes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
      params, new_state = step(params, state)
      assert params.dtype == dtype
      condition = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      state = jax.lax.cond(condition, lambda s=state: s,
                           lambda s=new_state: s)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == (
        shapes_and_dtypes)
    loss_phase = optax.tree.get(state, "loss_phase")
    assert loss_phase.loss_sum.dtype == jnp.float32
    assert loss_phase.phase_step.dtype == jnp.int32


def _allows_a_schedule(annotation: Any) -> bool:
  return optax.Schedule in (annotation, *typing.get_args(annotation))


def test_schedule_arguments_are_the_ones_tested_here():
  # Every argument of the package's factories typed as taking a schedule is
  # tested with one below; a new one must be added there.
  found = set()
  for name in optax_lcam.__all__:
    obj = getattr(optax_lcam, name)
    if inspect.isfunction(obj):
      for arg in inspect.signature(obj).parameters.values():
        if _allows_a_schedule(arg.annotation):
          found.add((name, arg.name))
  assert found == {("lcam", "learning_rate"),
                   ("multi_steps_with_mean_loss", "every_k_schedule"),
                   ("lcam", "below_probability"),
                   ("scale_by_lcam", "below_probability"),
                   ("loss_controlled", "below_probability")}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_below_probability_schedule_equals_its_constant(name):
  # The placebo rule's probability (phases="random"), in every factory that
  # takes it: lcam and loss_controlled here, scale_by_lcam through lcam.
  params, _, objective = _parabola(jnp.float32)
  results = []
  for probability in (optax.constant_schedule(0.3), 0.3):
    opt = OPTIMIZERS[name].make(phases="random",
                                below_probability=probability)
    step = jax.jit(_step_fn(opt, objective))
    p, state = params, opt.init(params)
    below = []
    for _ in range(12):
      p, state = step(p, state)
      below.append(bool(optax_lcam.loss_control_info(state).below_mean))
    results.append((p, below))
  chex.assert_trees_all_close(results[0][0], results[1][0])
  assert results[0][1] == results[1][1]
  assert 0 < sum(results[0][1]) < 12  # Both phases occurred.


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_learning_rate_schedule_equals_its_constant(name):
  # loss_controlled passes a scheduled hyper-parameter of its inner on.
  optimizer = OPTIMIZERS[name]
  learning_rate = inspect.signature(
      optimizer.learning_rate_of).parameters["learning_rate"]
  assert _allows_a_schedule(learning_rate.annotation)
  params, _, objective = _parabola(jnp.float32)
  results = []
  for rate in (optax.constant_schedule(1e-2), 1e-2):
    opt = optimizer.make(rate)
    step = jax.jit(_step_fn(opt, objective))
    p, state = params, opt.init(params)
    for _ in range(10):
      p, state = step(p, state)
    results.append(p)
  chex.assert_trees_all_close(*results)
  assert not np.allclose(results[0], params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multi_steps_schedule_equals_its_constant(name):
  params, _, objective = _parabola(jnp.float32)
  results = []
  for every_k in (optax.constant_schedule(2), 2):
    opt = optax_lcam.multi_steps_with_mean_loss(OPTIMIZERS[name].make(),
                                                every_k_schedule=every_k)
    step = jax.jit(_step_fn(opt, objective))
    p, state = params, opt.init(params)
    for _ in range(6):
      p, state = step(p, state)
    results.append((p, optax_lcam.loss_control_info(state)))
  chex.assert_trees_all_close(*results)
  assert int(results[0][1].step) == 3
