"""Property tests of the optimizer against a float64 NumPy reference.

The reference below is written from the spec (docs/lcam-spec.md in the shared
folder) and the README, not from the library: the epoch's running mean (or the
debiased moving average), the strict ``<``, the one-step lag, ``beta_init``
before the first finite loss and before ``start_step``, non-finite losses
left out of the statistics, the loss cast to float32, heavy-ball or Nesterov
momentum, coupled weight decay. Hypothesis draws the losses (ties with the
running mean, near ties, NaN and inf, magnitudes from 1e-30 to 2**100, given
as bf16, f16, f32 or f64), the options and the parameter trees (``None`` and
scalar leaves included), and each property compares the library with it.

The error bound. The library keeps the loss statistics in float32, so its
running mean ``m'`` can differ from the exact mean ``m`` of the float32
losses, and a loss within that difference of the mean can land in the other
phase. With ``n`` finite losses in the statistics and ``u = 2**-24``:

* ``averaging="epoch"``: the epoch's sum is a compensated (double-float32)
  sum, exact to about 48 bits, and each loss is compared with ``m' =
  (loss_sum + loss_sum_compensation) / loss_weight`` exactly (checked at
  every step). Each addition rounds only the compensation, by at most
  ``2 u**2`` times the sum of the absolute losses, so ``|m' - m| <= 2 n u**2
  mean(|l|)``; the properties use ``B = 4 n u**2 mean(|l|) + 2**-120`` (the
  last term for float32 underflow). A decision may differ from the exact one
  only for a loss between ``m`` and ``m'``: this needs losses that span more
  than about 2**48 within an epoch (e.g. 1, 1e18 and a near tie), or that
  cancel (2**100, 1, 1e-30, -1, 2**98).
* ``averaging="ema"``: the moving average and its weight are float32
  recursions, with ``ema_decay`` rounded to float32 (0 or in [0.01, 0.999]
  here), so ``|m' - m| <= B = (6 n + 8) u A + 2**-120``, with ``A`` the
  debiased moving average of ``|l|``. A decision may differ from the exact
  one for a loss within ``B`` of ``m``, ties included. (The mean that the
  loss is compared with can also differ by a rounding from the stored
  ``loss_sum / loss_weight``: XLA may fuse ``decay * s + (1 - decay) * l``
  into a multiply-add in one place and not in another.)

Everywhere else the decisions, hence the betas, must match the reference
exactly; the library's own mean must always be within ``B`` of the exact one.
The steps where a loss lies within ``B`` of the mean, or where the library
may decide otherwise, are counted (``make fuzz`` prints the counts), and where
it did decide otherwise the reference follows it from there. Parameters are
compared to float32 rounding (bf16 or f16 where those dtypes are used), and
the dtypes and shapes of the state at every step. Float32 subnormal losses
are not drawn: XLA flushes them to zero on CPU.

Compilation dominates: the numeric options (betas, learning rate, epoch
length, ...) are passed to one jitted ``lax.scan`` as traced values, and the
static ones (averaging, lag, nesterov, accumulator dtype, loss dtype, tree)
come from a pairwise-covering set of combinations under the CI profile (the
full product under a profile with many more examples).
"""

import collections
from collections.abc import Callable
import dataclasses
import fractions
import functools
import itertools
import math
from typing import Any, NamedTuple

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import optax_lcam

pytestmark = pytest.mark.campaign  # `make campaigns`; `make fuzz` runs it long

UNIT_ROUNDOFF = 2.0 ** -24  # float32
UNDERFLOW_SLACK = 2.0 ** -120
NUM_STEPS = 16
MAX_STEPS_PER_EPOCH = 6

LOSS_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16, "float16": np.float16,
    "float32": np.float32, "float64": np.float64}
EPSILON = {  # machine epsilon of each parameter or accumulator dtype
    "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10, "float32": 2.0 ** -23,
    "float64": 2.0 ** -23}  # float64 leaves: the float32 hyper-parameters

# Counts printed by `make fuzz` (with -s), per property and averaging mode;
# see `_print_counts`.
COUNTS = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
  yield
  if COUNTS:
    print("\nCounts per property and averaging mode: examples; steps; "
          "non-finite losses; losses equal to the exact mean (ties); other "
          "losses within the error bound of it; losses between the exact "
          "mean and the library's (where it may decide otherwise); decisions "
          "that differ from the exact ones.")
    for name, counts in sorted(COUNTS.items()):
      print(f"  {name}: " + " ".join(
          f"{key}={counts[key]}" for key in (
              "examples", "steps", "non_finite", "ties", "within_bound",
              "excused", "decided_otherwise")))


# ----------------------------------------------------------------------------
# The reference, float64 NumPy, from the spec and the docs.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """Every option of the rule and of `lcam`, as Python values."""

  averaging: str = "epoch"
  lag: bool = True
  nesterov: bool = False
  accumulator_dtype: str | None = None
  steps_per_epoch: int = 4
  ema_decay: float = 0.99
  start_step: int = 0
  beta_below: float = 0.9
  beta_above: float = 0.95
  beta_init: float = 0.9
  learning_rate: float = 0.1
  weight_decay: float = 0.0
  phases: str = "loss"  # the reference's phase rule, a key of PHASE_RULES
  below_probability: float = 0.5  # phases="random"
  phase_seed: int = 0  # phases="random"


class Phase(NamedTuple):
  """The reference phase after one step.

  Attributes:
    below: The phase in force (True: below the mean), None before the first
      finite loss.
    exact_below: The exact decision for this step's finite loss, else None.
    mean: The exact running mean the loss was compared with (None for a
      non-finite loss).
    bound: The documented bound on the library's error in that mean.
    within_bound: Whether the loss lay within ``bound`` of ``mean`` without
      being equal to it.
    excused: Whether the loss lay between the exact mean and the library's
      (different) one, where the library may decide otherwise.
  """

  below: bool | None
  exact_below: bool | None = None
  mean: Any = None
  bound: float | None = None
  within_bound: bool = False
  excused: bool = False


class LibraryPhase(NamedTuple):
  """What the library decided at a step, and the mean it compared with."""

  below: bool  # the phase in force (with phases="random", the draw)
  mean: Any  # a Fraction (epoch mode) or a float; None for a non-finite loss
  loss_below: bool  # whether it found the loss below that mean


def loss_phases(losses: np.ndarray, options: Options,
                library: list[LibraryPhase]) -> list[Phase]:
  """The phase of each step by LCAM's loss rule, exact.

  Args:
    losses: The losses as the library sees them (float32 values, float64).
    options: The rule's options.
    library: The library's decisions and means: followed only where the loss
      lies between the exact mean and the library's.

  Returns:
    The `Phase` after each step.
  """
  phases, below = [], None
  epoch_losses = []  # epoch mode: the finite losses of the current epoch
  ema = ema_abs = ema_weight = 0.0  # ema mode: over all finite losses
  num_finite = 0
  decay = options.ema_decay
  for t, loss in enumerate(losses):
    if options.averaging == "epoch" and t % options.steps_per_epoch == 0:
      epoch_losses = []
    if not math.isfinite(loss):
      phases.append(Phase(below))
      continue
    num_finite += 1
    if options.averaging == "epoch":
      epoch_losses.append(fractions.Fraction(loss))
      n = len(epoch_losses)
      mean = sum(epoch_losses) / n
      bound = 4 * n * UNIT_ROUNDOFF ** 2 * float(
          sum(abs(x) for x in epoch_losses) / n)
    else:
      ema = decay * ema + (1 - decay) * loss
      ema_abs = decay * ema_abs + (1 - decay) * abs(loss)
      ema_weight = decay * ema_weight + (1 - decay)
      mean = ema / ema_weight
      bound = (6 * num_finite + 8) * UNIT_ROUNDOFF * ema_abs / ema_weight
    bound += UNDERFLOW_SLACK
    exact_below = loss < mean
    library_mean = library[t].mean
    if options.averaging == "epoch":
      # The library compares exactly with its own mean (checked apart), so it
      # can only decide otherwise for a loss between the two means.
      excused = library_mean != mean and (
          min(mean, library_mean) <= loss <= max(mean, library_mean))
    else:
      excused = abs(loss - mean) <= bound
    below = library[t].loss_below if excused else exact_below
    near_tie = loss != mean and abs(float(loss - mean)) <= bound
    phases.append(Phase(below, exact_below, mean, bound, near_tie, excused))
  return phases


@functools.cache
def _draws(num_steps: int):
  """The placebo's draws, as documented: step ``t`` is "below" when
  ``uniform(fold_in(key(phase_seed), t)) < below_probability``, a function of
  the seed and the step alone (jax.random is the spec of the bits)."""
  def draw(seed, probability):
    key = jax.random.key(jnp.asarray(seed, jnp.uint32))
    return jax.vmap(lambda t: jax.random.uniform(
        jax.random.fold_in(key, t), (), jnp.float32) < probability)(
            jnp.arange(num_steps, dtype=jnp.int32))
  return jax.jit(draw)


def random_phases(losses: np.ndarray, options: Options,
                  library: list[LibraryPhase]) -> list[Phase]:
  """``phases="random"``: each step's phase is its draw, whatever the loss;
  the loss statistics (and whether the loss was below the mean) are those of
  the loss rule."""
  draws = np.asarray(_draws(len(losses))(
      options.phase_seed, np.float32(options.below_probability)))
  return [phase._replace(below=bool(draw)) for phase, draw in
          zip(loss_phases(losses, options, library), draws)]


# A phase rule maps (losses, options, the library's phases) to the reference
# phases, keyed by `Options.phases` (passed on to the library by `make_lcam`).
PHASE_RULES: dict[str, Callable[..., list[Phase]]] = {
    "loss": loss_phases, "random": random_phases}


def values_in_force(phases: list[Phase], below: float, above: float,
                    initial: float, lag: bool,
                    start_step: int) -> tuple[list[float], list[float]]:
  """The value each step uses, and the value decided after each step.

  Before any decision the decided value is ``initial``; with the lag a step
  uses the value decided after the previous step, without it its own; before
  ``start_step`` every step uses ``initial``.
  """
  used, decided = [], []
  pending = initial
  for t, phase in enumerate(phases):
    value = initial if phase.below is None else (below if phase.below
                                                 else above)
    in_force = pending if lag else value
    used.append(initial if t < start_step else in_force)
    decided.append(value)
    pending = value
  return used, decided


def reference_sgd(params: list[np.ndarray], grads: list[np.ndarray],
                  betas: list[float], options: Options):
  """Coupled weight decay, heavy-ball (or Nesterov) momentum, learning rate.

  Args:
    params: The initial parameters, one array per leaf.
    grads: Per leaf, the gradients of every step (leading axis: steps).
    betas: The momentum used at each step.
    options: The learning rate, weight decay and nesterov.

  Returns:
    Per step, the parameters after it and their error scale: the same
    recursion on absolute values, so that float rounding at step t stays
    below a few epsilons times t times the scale.
  """
  theta = [np.asarray(p, np.float64) for p in params]
  scale = [np.abs(p) for p in theta]
  buf = [np.zeros_like(p) for p in theta]
  buf_scale = [np.zeros_like(p) for p in theta]
  history = []
  lr, wd = options.learning_rate, options.weight_decay
  for t, beta in enumerate(betas):
    for i, g in enumerate(grads):
      g = np.asarray(g[t], np.float64)
      d = g + wd * theta[i]
      d_scale = np.abs(g) + wd * scale[i]
      buf[i] = beta * buf[i] + d
      buf_scale[i] = beta * buf_scale[i] + d_scale
      if options.nesterov:
        direction = beta * buf[i] + d
        direction_scale = beta * buf_scale[i] + d_scale
      else:
        direction, direction_scale = buf[i], buf_scale[i]
      theta[i] = theta[i] - lr * direction
      scale[i] = scale[i] + abs(lr) * direction_scale
    history.append(([x.copy() for x in theta], [x.copy() for x in scale]))
  return history


# ----------------------------------------------------------------------------
# The library, run in one jitted scan per static configuration.
# ----------------------------------------------------------------------------


class Static(NamedTuple):
  """The options that change the traced program."""

  averaging: str
  lag: bool
  nesterov: bool
  accumulator_dtype: str | None
  phases: str = "loss"


def _numeric(options: Options) -> dict[str, Any]:
  """The options passed to the jitted run as (traced) Python numbers."""
  return {name: getattr(options, name) for name in (
      "steps_per_epoch", "ema_decay", "start_step", "beta_below",
      "beta_above", "beta_init", "learning_rate", "weight_decay",
      "below_probability", "phase_seed")}


def _rule_kwargs(static: Static, numeric: dict[str, Any]) -> dict[str, Any]:
  epoch = static.averaging == "epoch"
  return dict(
      steps_per_epoch=numeric["steps_per_epoch"] if epoch else None,
      averaging=static.averaging, ema_decay=numeric["ema_decay"],
      lag=static.lag, start_step=numeric["start_step"], phases=static.phases,
      below_probability=numeric["below_probability"],
      phase_seed=numeric["phase_seed"])


def make_lcam(static: Static, numeric: dict[str, Any]):
  return optax_lcam.lcam(
      numeric["learning_rate"], numeric["beta_below"], numeric["beta_above"],
      weight_decay=numeric["weight_decay"], beta_init=numeric["beta_init"],
      nesterov=static.nesterov, accumulator_dtype=static.accumulator_dtype,
      **_rule_kwargs(static, numeric))


def make_controlled_sgd(static: Static, numeric: dict[str, Any]):
  sgd = optax.inject_hyperparams(optax.sgd)(
      learning_rate=numeric["learning_rate"], momentum=numeric["beta_init"],
      nesterov=static.nesterov, accumulator_dtype=static.accumulator_dtype)
  return optax.chain(
      optax.add_decayed_weights(numeric["weight_decay"]),
      optax_lcam.loss_controlled(
          sgd, below={"momentum": numeric["beta_below"]},
          above={"momentum": numeric["beta_above"]},
          **_rule_kwargs(static, numeric)))


@functools.cache  # one function per k, so that `compiled_run` reuses it
def make_multi_steps(every_k: int):
  def make(static, numeric):
    return optax_lcam.multi_steps_with_mean_loss(
        make_lcam(static, numeric), every_k)
  return make


@functools.cache
def compiled_run(make: Callable[..., Any], static: Static):
  """A jitted run of the optimizer over all steps: (init state, per step).

  Its arguments: the numeric options (traced), the parameters, the
  gradients and the losses of every step (leading axis). It returns the
  initial state, and the parameters and the state after every step.
  """
  def run(numeric, params, grads, losses):
    opt = make(static, numeric)
    state = opt.init(params)

    def step(carry, batch):
      params, state = carry
      g, loss = batch
      updates, state = opt.update(g, state, params, value=loss)
      params = optax.apply_updates(params, updates)
      return (params, state), (params, state)

    _, (params_seq, state_seq) = jax.lax.scan(
        step, (params, state), (grads, losses))
    return state, params_seq, state_seq
  return jax.jit(run)


# ----------------------------------------------------------------------------
# Strategies.
# ----------------------------------------------------------------------------

# Parameter trees: (dtype, shape) leaves, None leaves, nested containers.
# One tree holds every leaf dtype, scalars and None, so that a compilation
# covers them all; test_random_trees_match_reference draws random ones.
MIXED_TREE = {
    "w": ("float32", (3,)), "b": ("float32", ()), "frozen": None,
    "layers": [("bfloat16", (2, 2)), None, ("bfloat16", ())],
    "conv": {"kernel": ("float16", (2, 1, 2))}}
FLOAT32_TREE = {"w": ("float32", (2, 3)), "b": ("float32", ()), "n": None}
X64_TREE = {"w": ("float64", (3,)), "s": ("float32", ()), "n": None,
            "v": [("float32", (2,)), ("float64", ())]}


def _pairwise(factors: dict[str, tuple]) -> list[dict[str, Any]]:
  """A small set of combinations that holds every pair of values (greedy)."""
  names = list(factors)
  rows = [dict(zip(names, values))
          for values in itertools.product(*factors.values())]
  pairs = [{((a, row[a]), (b, row[b]))
            for a, b in itertools.combinations(names, 2)} for row in rows]
  uncovered = set().union(*pairs)
  chosen = []
  while uncovered:
    best = max(range(len(rows)), key=lambda i: len(pairs[i] & uncovered))
    chosen.append(rows[best])
    uncovered -= pairs[best]
  return chosen


def _static_combinations(factors: dict[str, tuple]) -> list[dict[str, Any]]:
  """The full product when the profile affords compiling each, else pairs."""
  product = [dict(zip(factors, values))
             for values in itertools.product(*factors.values())]
  if hypothesis.settings().max_examples >= 10 * len(product):
    return product
  return _pairwise(factors)


# "float32" losses are drawn as float32 or float64 (without x64, jax gets
# both as float32, so they share a compilation).
STATIC_FACTORS = {
    "averaging": ("epoch", "ema"), "lag": (True, False),
    "nesterov": (False, True),
    "accumulator_dtype": (None, "float32", "bfloat16"),
    "loss_dtype": ("bfloat16", "float16", "float32"),
    "phases": ("loss", "random")}


def _options(draw, static: dict[str, Any]) -> Options:
  unit = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99]),
                   st.floats(0.0, 0.999))
  # A decay below float32's range would round to zero in the float32
  # statistics; the bound assumes a decay of 0 or a sensible one.
  decay = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99]),
                    st.floats(0.01, 0.999))
  beta_below = draw(unit)
  beta_above = draw(st.one_of(st.just(beta_below), unit))
  return Options(
      averaging=static["averaging"], lag=static["lag"],
      nesterov=static["nesterov"],
      accumulator_dtype=static["accumulator_dtype"],
      steps_per_epoch=draw(st.integers(1, MAX_STEPS_PER_EPOCH)),
      ema_decay=draw(decay), start_step=draw(st.integers(0, NUM_STEPS + 1)),
      beta_below=beta_below, beta_above=beta_above, beta_init=draw(unit),
      learning_rate=draw(st.sampled_from([0.1, 1.0, 1e-3]) | st.floats(
          1e-4, 1.0)),
      weight_decay=draw(st.sampled_from([0.0, 5e-4]) | st.floats(0.0, 0.1)),
      phases=static.get("phases", "loss"),
      below_probability=draw(st.sampled_from([0.0, 0.5, 1.0])
                             | st.floats(0.0, 1.0)),
      phase_seed=draw(st.integers(0, 2 ** 31 - 1)))


def _running_mean_so_far(values: list[float], options: Options) -> float:
  """The mean the next loss would be compared with (float64), or 1.0."""
  t = len(values)
  if options.averaging == "epoch":
    start = t - t % options.steps_per_epoch
    finite = [x for x in values[start:] if math.isfinite(x)]
    return math.fsum(finite) / len(finite) if finite else 1.0
  ema = weight = 0.0
  for x in values:
    if math.isfinite(x):
      ema = options.ema_decay * ema + (1 - options.ema_decay) * x
      weight = options.ema_decay * weight + (1 - options.ema_decay)
  return ema / weight if weight else 1.0


@st.composite
def loss_sequences(draw, options: Options, loss_dtype: str, num_steps: int):
  """Losses in ``loss_dtype``: ties, near ties, non-finite, huge and tiny."""
  dtype = LOSS_DTYPES[loss_dtype]
  magnitude = st.floats(-30, 30).map(lambda e: 10.0 ** e)
  values, as_seen = [], []
  for _ in range(num_steps):
    kind = draw(st.sampled_from(
        ["tie", "tie", "near_tie", "magnitude", "small_integer", "special",
         "non_finite", "negative"]))
    mean = _running_mean_so_far(as_seen, options)
    if kind == "tie":
      value = mean
    elif kind == "near_tie":
      value = mean
      for _ in range(draw(st.integers(1, 3))):
        value = np.nextafter(dtype(value), dtype(
            draw(st.sampled_from([-np.inf, np.inf]))))
      value = float(value)
    elif kind == "magnitude":
      value = draw(magnitude)
    elif kind == "small_integer":
      value = float(draw(st.integers(0, 4))) / 2
    elif kind == "special":
      value = draw(st.sampled_from(
          [1e-30, 1e30, 2.0 ** 100, 2.0 ** 99, 0.0, 2.3]))
    elif kind == "non_finite":
      value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
      value = -draw(magnitude)
    with np.errstate(over="ignore"):
      value = dtype(value)
    if 0 < abs(np.float32(value)) < np.finfo(np.float32).smallest_normal:
      # XLA flushes float32 subnormals to zero on CPU: out of scope.
      value = dtype(0.0)
    values.append(value)
    as_seen.append(float(np.float32(value)))
  return np.asarray(values, dtype)


def _tree_arrays(rng: np.random.Generator, tree: Any, leading: tuple = (),
                 scale: float = 1.0) -> Any:
  """Random arrays for a tree of (dtype, shape) specs; None stays None."""
  def make(spec):
    if spec is None:
      return None
    dtype, shape = spec
    value = scale * rng.standard_normal(leading + shape)
    return np.asarray(value, LOSS_DTYPES[dtype])
  return jax.tree.map(make, tree, is_leaf=_is_spec)


def _is_spec(x) -> bool:
  return x is None or (isinstance(x, tuple) and len(x) == 2
                       and isinstance(x[0], str))


def _leaves(tree: Any) -> list:
  return jax.tree.leaves(tree)


# ----------------------------------------------------------------------------
# Checks.
# ----------------------------------------------------------------------------


def check_phase_dtypes_and_shapes(phase, lead: tuple):
  """The documented dtypes and shapes of `LossPhaseState` (and of the
  `RandomPhaseState` of phases="random", with ``loss_below_mean``)."""
  expected = {"phase_step": np.int32, "loss_sum": np.float32,
              "loss_sum_compensation": np.float32, "loss_weight": np.float32,
              "below_mean": np.bool_, "phase_decided": np.bool_}
  if isinstance(phase, optax_lcam.RandomPhaseState):
    expected["loss_below_mean"] = np.bool_
  for name, dtype in expected.items():
    value = getattr(phase, name)
    assert value.dtype == dtype, (name, value.dtype)
    assert value.shape == lead, (name, value.shape)


def check_state_dtypes_and_shapes(lcam_state, spec_tree, options: Options,
                                  num_steps: int | None):
  """The documented dtypes and shapes of `ScaleByLCAMState`."""
  lead = () if num_steps is None else (num_steps,)
  check_phase_dtypes_and_shapes(lcam_state.loss_phase, lead)
  assert lcam_state.beta.dtype == np.float32
  assert lcam_state.beta.shape == lead
  specs = jax.tree.leaves(spec_tree, is_leaf=_is_spec)
  momentum = jax.tree.leaves(lcam_state.momentum, is_leaf=lambda x: x is None)
  assert len(momentum) == len(specs)
  for buffer, spec in zip(momentum, specs):
    if spec is None:
      assert buffer is None
      continue
    dtype = options.accumulator_dtype or spec[0]
    assert buffer.dtype == jnp.dtype(dtype), (buffer.dtype, spec)
    assert buffer.shape == lead + spec[1], (buffer.shape, spec)


def library_phases(phase_seq, losses: np.ndarray,
                   options: Options) -> list[LibraryPhase]:
  """The library's decision at each step and the mean it compared with.

  In epoch mode that mean is ``(loss_sum + loss_sum_compensation) /
  loss_weight``, exactly (a Fraction); in EMA mode, the float32 quotient.
  """
  phases = []
  loss_below_seq = getattr(phase_seq, "loss_below_mean", phase_seq.below_mean)
  for t, loss in enumerate(losses):
    below, loss_below = bool(phase_seq.below_mean[t]), bool(loss_below_seq[t])
    weight = phase_seq.loss_weight[t]
    if not math.isfinite(loss) or weight == 0:
      phases.append(LibraryPhase(below, None, loss_below))
    elif options.averaging == "epoch":
      exact_sum = (fractions.Fraction(float(phase_seq.loss_sum[t]))
                   + fractions.Fraction(
                       float(phase_seq.loss_sum_compensation[t])))
      phases.append(LibraryPhase(below, exact_sum / int(weight), loss_below))
    else:
      quotient = np.float32(phase_seq.loss_sum[t]) / np.float32(weight)
      phases.append(LibraryPhase(below, float(quotient), loss_below))
  return phases


def check_phase_statistics(phase_seq, losses: np.ndarray, phases: list[Phase],
                           library: list[LibraryPhase], options: Options,
                           counts: collections.Counter):
  """The library's statistics against the exact ones, at every step."""
  finite_seen = False
  for t, (loss, phase, mine) in enumerate(zip(losses, phases, library)):
    counts["steps"] += 1
    assert int(phase_seq.phase_step[t]) == t + 1
    finite_seen |= math.isfinite(loss)
    # The placebo decides from the first step on, whatever the loss.
    assert bool(phase_seq.phase_decided[t]) == (
        finite_seen or options.phases == "random")
    if options.phases == "random":
      assert mine.below == phase.below, (t, "the draw")
    if phase.mean is None:
      counts["non_finite"] += 1
      continue
    counts["ties"] += loss == phase.mean
    if options.averaging == "ema":
      assert float(phase_seq.loss_sum_compensation[t]) == 0.0
      # Not checked: that below_mean agrees with the stored loss_sum /
      # loss_weight. XLA may contract `decay * s + (1 - decay) * l` into a
      # fused multiply-add in one fusion and not in another, so the mean the
      # loss was compared with can differ by a rounding from the stored one
      # (seen under multi_steps_with_mean_loss); both are within the bound.
    else:
      # The documented comparison: exact, with the compensated epoch sum.
      assert mine.loss_below == (loss < mine.mean), (t, loss, mine)
    assert abs(float(mine.mean - phase.mean)) <= phase.bound, (
        t, float(mine.mean), float(phase.mean), phase.bound)
    counts["within_bound"] += phase.within_bound
    counts["excused"] += phase.excused
    counts["decided_otherwise"] += mine.loss_below != phase.exact_below
    assert phase.excused or mine.loss_below == phase.exact_below, (
        t, loss, phase)


def check_params(params_seq, history, spec_tree, options: Options):
  """The parameters after every step, to the rounding of their dtypes."""
  specs = [s for s in jax.tree.leaves(spec_tree, is_leaf=_is_spec)
           if s is not None]
  leaves = _leaves(params_seq)
  assert len(leaves) == len(specs)
  for i, (leaf, spec) in enumerate(zip(leaves, specs)):
    assert leaf.dtype == jnp.dtype(spec[0])
    eps = max(EPSILON[spec[0]], EPSILON[options.accumulator_dtype or spec[0]])
    for t, (theta, scale) in enumerate(history):
      actual = np.asarray(leaf[t], np.float64)
      tolerance = 4 * (t + 2) * eps * scale[i] + 1e-30
      error = np.abs(actual - theta[i])
      assert np.all(error <= tolerance), (
          f"leaf {i} step {t}: max error {error.max()} vs {tolerance.max()}")


def check_rule(name: str, options: Options, phase_seq,
               losses: np.ndarray) -> tuple[list[float], list[float]]:
  """Checks the phase state of every step; returns the betas used/decided.

  Args:
    name: The property's name, for the counts.
    options: The options of the run.
    phase_seq: The library's `LossPhaseState` after every step (NumPy).
    losses: The losses passed to the library, in their dtypes.

  Returns:
    The momentum each step used and the one decided after each step, by the
    reference.
  """
  counts = COUNTS[f"{name}, {options.averaging}"]
  counts["examples"] += 1
  seen = np.asarray(losses.astype(np.float32), np.float64)
  library = library_phases(phase_seq, seen, options)
  phases = PHASE_RULES[options.phases](seen, options, library)
  check_phase_statistics(phase_seq, seen, phases, library, options, counts)
  return values_in_force(
      phases, options.beta_below, options.beta_above, options.beta_init,
      options.lag, options.start_step)


def check_lcam_run(name, options, spec_tree, params, grads, losses,
                   init_state, params_seq, state_seq):
  """Everything the reference says about one run of `lcam`.

  Returns:
    The momentum each step used and the reference's parameter history.
  """
  init_state, params_seq, state_seq = jax.device_get(
      (init_state, params_seq, state_seq))
  lcam_init = optax_lcam.find_lcam_state(init_state)
  lcam_seq = optax_lcam.find_lcam_state(state_seq)
  check_state_dtypes_and_shapes(lcam_init, spec_tree, options, None)
  check_state_dtypes_and_shapes(lcam_seq, spec_tree, options, len(losses))
  used, decided = check_rule(name, options, lcam_seq.loss_phase, losses)
  np.testing.assert_array_equal(lcam_seq.beta,
                                np.asarray(decided, np.float32))
  history = reference_sgd(_leaves(params), _leaves(grads), used, options)
  check_params(params_seq, history, spec_tree, options)
  return used, history


def _inputs(seed: int, spec_tree, num_steps: int):
  rng = np.random.default_rng(seed)
  params = _tree_arrays(rng, spec_tree)
  grads = _tree_arrays(rng, spec_tree, (num_steps,))
  return params, grads


def _static_of(options: Options) -> Static:
  return Static(options.averaging, options.lag, options.nesterov,
                options.accumulator_dtype, options.phases)


# ----------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------


def _share_of_profile(divisor: int) -> int:
  """A share of the profile's examples, for properties that compile more."""
  return max(5, hypothesis.settings().max_examples // divisor)


def _loss_dtype(draw, static: dict[str, Any]) -> str:
  if static["loss_dtype"] == "float32":
    return draw(st.sampled_from(["float32", "float64"]))
  return static["loss_dtype"]


@st.composite
def lcam_examples(draw, factors=STATIC_FACTORS, tree=MIXED_TREE,
                  num_steps=NUM_STEPS):
  static = draw(st.sampled_from(_static_combinations(factors)))
  options = _options(draw, static)
  losses = draw(loss_sequences(options, _loss_dtype(draw, static),
                               num_steps))
  seed = draw(st.integers(0, 2 ** 32 - 1))
  return options, tree, losses, seed


@hypothesis.given(lcam_examples())
def test_lcam_matches_reference(example):
  options, tree, losses, seed = example
  params, grads = _inputs(seed, tree, NUM_STEPS)
  outputs = compiled_run(make_lcam, _static_of(options))(
      _numeric(options), params, grads, losses)
  check_lcam_run("lcam", options, tree, params, grads, losses, *outputs)


def _scale_by_lcam_alone(static: Static, numeric: dict[str, Any]):
  return optax_lcam.scale_by_lcam(
      numeric["beta_below"], numeric["beta_above"],
      beta_init=numeric["beta_init"], nesterov=static.nesterov,
      accumulator_dtype=static.accumulator_dtype,
      **_rule_kwargs(static, numeric))


@hypothesis.given(lcam_examples())
def test_scale_by_lcam_matches_reference(example):
  """`scale_by_lcam` alone: its output is the momentum direction."""
  options, tree, losses, seed = example
  params, grads = _inputs(seed, tree, NUM_STEPS)
  outputs = compiled_run(_scale_by_lcam_alone, _static_of(options))(
      _numeric(options), params, grads, losses)
  # apply_updates adds the direction: theta - lr * direction with lr = -1.
  options = dataclasses.replace(options, learning_rate=-1.0,
                                weight_decay=0.0)
  check_lcam_run("scale_by_lcam", options, tree, params, grads, losses,
                 *outputs)


def _random_spec_trees():
  leaf = st.one_of(
      st.none(),
      st.tuples(st.sampled_from(["float32", "bfloat16", "float16"]),
                st.lists(st.integers(1, 3), max_size=3).map(tuple)))
  return st.recursive(
      leaf,
      lambda children: st.one_of(
          st.lists(children, min_size=1, max_size=3),
          st.dictionaries(st.sampled_from("abcd"), children, min_size=1,
                          max_size=3)),
      max_leaves=6).filter(
          lambda tree: any(s is not None for s in
                           jax.tree.leaves(tree, is_leaf=_is_spec)))


@hypothesis.settings(max_examples=_share_of_profile(20))
@hypothesis.given(st.data())
def test_random_trees_match_reference(data):
  """Random tree shapes (None and scalar leaves), every option drawn.

  Each tree compiles afresh, so this property runs a 20th of the examples.
  """
  tree = data.draw(_random_spec_trees())
  static = {name: data.draw(st.sampled_from(values))
            for name, values in STATIC_FACTORS.items()}
  options = _options(data.draw, static)
  num_steps = 4
  losses = data.draw(loss_sequences(options, _loss_dtype(data.draw, static),
                                    num_steps))
  params, grads = _inputs(data.draw(st.integers(0, 2 ** 32 - 1)), tree,
                          num_steps)
  outputs = compiled_run(make_lcam, _static_of(options))(
      _numeric(options), params, grads, losses)
  check_lcam_run("random_trees", options, tree, params, grads, losses,
                 *outputs)


@hypothesis.settings(max_examples=_share_of_profile(2))
@hypothesis.given(lcam_examples(
    factors={**STATIC_FACTORS, "accumulator_dtype": (None, "float32"),
             "loss_dtype": ("float32",)},
    tree=FLOAT32_TREE))
def test_loss_controlled_sgd_is_lcam(example):
  """`loss_controlled` over injected SGD is LCAM, for every option."""
  options, tree, losses, seed = example
  params, grads = _inputs(seed, tree, NUM_STEPS)
  static, numeric = _static_of(options), _numeric(options)
  check_lcam_run("loss_controlled: lcam", options, tree, params, grads,
                 losses, *compiled_run(make_lcam, static)(
                     numeric, params, grads, losses))
  _, params_seq, state_seq = jax.device_get(compiled_run(
      make_controlled_sgd, static)(numeric, params, grads, losses))
  controlled = optax_lcam.find_loss_control_state(state_seq)
  check_phase_dtypes_and_shapes(controlled.loss_phase, (len(losses),))
  used, decided = check_rule("loss_controlled", options,
                             controlled.loss_phase, losses)
  # The inner's momentum: the decided one, the inner's own before
  # start_step - 1 (see `LossControlledState`).
  expected = [options.beta_init if t + 1 < options.start_step else value
              for t, value in enumerate(decided)]
  np.testing.assert_array_equal(
      controlled.controlled_state.hyperparams["momentum"],
      np.asarray(expected, np.float32))
  history = reference_sgd(_leaves(params), _leaves(grads), used, options)
  check_params(params_seq, history, tree, options)


@hypothesis.settings(max_examples=_share_of_profile(4))
@hypothesis.given(st.data())
def test_multi_steps_with_mean_loss_is_the_mean_loss_by_hand(data):
  """The wrapper's inner LCAM sees what feeding it the mean loss would."""
  every_k = data.draw(st.integers(2, 3))
  factors = {**STATIC_FACTORS, "accumulator_dtype": (None,),
             "nesterov": (False,), "lag": (True,), "loss_dtype": ("float32",),
             "phases": ("loss",)}
  static = data.draw(st.sampled_from(_static_combinations(factors)))
  options = _options(data.draw, static)
  num_updates = NUM_STEPS // 2
  micro_losses = data.draw(loss_sequences(
      options, _loss_dtype(data.draw, static), num_updates * every_k))
  params, micro_grads = _inputs(data.draw(st.integers(0, 2 ** 32 - 1)),
                                FLOAT32_TREE, num_updates * every_k)
  # By hand: float32 mean of each group of k losses, exact mean of the grads.
  as_float32 = micro_losses.astype(np.float32).reshape(num_updates, every_k)
  mean_losses = np.zeros(num_updates, np.float32)
  with np.errstate(invalid="ignore"):  # inf - inf
    for i in range(every_k):
      mean_losses = mean_losses + as_float32[:, i]
  mean_losses = mean_losses / np.float32(every_k)
  mean_grads = jax.tree.map(
      lambda g: g.astype(np.float64).reshape(
          (num_updates, every_k) + g.shape[1:]).mean(axis=1).astype(
              np.float32), micro_grads)
  static_, numeric = _static_of(options), _numeric(options)
  check_lcam_run("multi_steps: by hand", options, FLOAT32_TREE, params,
                 mean_grads, mean_losses, *compiled_run(make_lcam, static_)(
                     numeric, params, mean_grads, mean_losses))
  init_state, params_seq, state_seq = compiled_run(
      make_multi_steps(every_k), static_)(
          numeric, params, micro_grads, micro_losses)
  emitted = slice(every_k - 1, None, every_k)
  check_lcam_run("multi_steps: wrapped", options, FLOAT32_TREE, params,
                 mean_grads, mean_losses, init_state,
                 jax.tree.map(lambda x: x[emitted], params_seq),
                 jax.tree.map(lambda x: x[emitted], state_seq))


@hypothesis.settings(max_examples=_share_of_profile(4))
@hypothesis.given(lcam_examples(
    factors={**STATIC_FACTORS, "loss_dtype": ("float64",),
             "accumulator_dtype": (None, "float64"), "phases": ("loss",)},
    tree=X64_TREE))
def test_x64_losses_and_parameters(example):
  """With jax_enable_x64: float64 losses are cast to float32, the state's
  statistics stay float32, and float64 parameters stay float64."""
  options, tree, losses, seed = example
  params, grads = _inputs(seed, tree, NUM_STEPS)
  with jax.enable_x64(True):
    outputs = compiled_run(make_lcam, _static_of(options))(
        _numeric(options), params, grads, losses)
    check_lcam_run("x64", options, tree, params, grads, losses, *outputs)


def test_the_bound_is_needed_only_for_cancelling_losses():
  """A known case inside the bound: the compensated sum drops 1e-30 between
  losses that cancel, so the library calls a loss 2e-31 below the mean a
  tie. The reference counts it as within the bound."""
  options = Options(steps_per_epoch=8)
  losses = np.asarray([2.0 ** 100, 1.0, 1e-30, -1.0, 2.0 ** 98], np.float32)
  tree = {"w": ("float32", (1,))}
  params, grads = _inputs(0, tree, len(losses))
  outputs = compiled_run(make_lcam, _static_of(options))(
      _numeric(options), params, grads, losses)
  counts = COUNTS["known_case, epoch"]
  before = counts["decided_otherwise"]
  check_lcam_run("known_case", options, tree, params, grads, losses,
                 *outputs)
  assert counts["decided_otherwise"] == before + 1
