"""Every output of `lcam` and `loss_controlled` over many options, to compare
two versions of the code bit for bit.

Runs 64 LCAM configurations (lag, start_step, loss or random phases, Nesterov,
beta_init, epoch or EMA averaging) and 48 `loss_controlled` ones (over SGD,
SGD with a static learning rate and Adam), each under jit and under vmap, for
13 steps whose losses include a NaN, on a float32 and a bfloat16 leaf; and
LCAM with injected betas changed at every step. Saves every parameter and state
array to an ``.npz``; ``--compare`` says how many arrays of two such files
differ in any byte.

  python bench/optimizer_outputs.py OUT.npz
  python bench/optimizer_outputs.py --compare BEFORE.npz AFTER.npz

To compare with an older commit, run the first command in a worktree of it
(``git worktree add /tmp/old COMMIT``) with this file copied there.
"""

import argparse
import itertools
import os
import sys

# The package is imported from the checkout, as in the other benchmarks.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lcam

_LOSSES = (2.0, 1.0, 3.0, 1.5, 0.8, float("nan"), 0.7, 2.2, 0.5, 1.1, 0.9,
           3.0, 0.1)


def _params():
  return {"a": jnp.linspace(-1, 1, 7, dtype=jnp.float32),
          "b": jnp.ones((3, 5), jnp.bfloat16)}


def _phase_options(phases, averaging):
  options = {"phases": phases}
  if phases == "random":
    options.update(below_probability=0.4, phase_seed=3)
  if averaging == "ema":
    options.update(averaging="ema", ema_decay=0.7)
  else:
    options.update(steps_per_epoch=4)
  return options


def lcam_optimizers():
  """The LCAM configurations, by name."""
  for lag, start, phases, nesterov, beta_init, averaging in itertools.product(
      (True, False), (0, 4), ("loss", "random"), (False, True), (0.9, 0.5),
      ("epoch", "ema")):
    name = f"lcam-{lag}-{start}-{phases}-{nesterov}-{beta_init}-{averaging}"
    yield name, optax_lcam.lcam(
        0.1, 0.95, 0.85, weight_decay=1e-3, lag=lag, start_step=start,
        nesterov=nesterov, beta_init=beta_init,
        **_phase_options(phases, averaging))


def loss_controlled_optimizers():
  """The `loss_controlled` configurations, by name."""
  inners = {
      "sgd": (lambda: optax.inject_hyperparams(optax.sgd)(0.1, momentum=0.9),
              {"momentum": 0.95}, {"momentum": 0.85}),
      "sgd-static-lr": (
          lambda: optax.inject_hyperparams(
              optax.sgd, static_args=("learning_rate",))(0.1, momentum=0.8),
          {"momentum": 0.95}, {"momentum": 0.85}),
      "adam": (lambda: optax.inject_hyperparams(optax.adam)(1e-2, b1=0.9),
               {"b1": 0.95, "learning_rate": 0.02},
               {"b1": 0.85, "learning_rate": 0.01}),
  }
  for inner, lag, start, phases, averaging in itertools.product(
      inners, (True, False), (0, 4), ("loss", "random"), ("epoch", "ema")):
    make_inner, below, above = inners[inner]
    name = f"lc-{inner}-{lag}-{start}-{phases}-{averaging}"
    yield name, optax.chain(
        optax.add_decayed_weights(1e-3),
        optax_lcam.loss_controlled(
            make_inner(), below=below, above=above, lag=lag, start_step=start,
            **_phase_options(phases, averaging)))


def _as_saved(leaf):
  array = np.asarray(leaf)
  return array.astype(np.float64) if leaf.dtype == jnp.bfloat16 else array


def run(optimizer, vmapped: bool) -> list[np.ndarray]:
  """Every parameter and state array after each of the steps."""
  params = _params()
  if vmapped:
    params = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
  init = jax.vmap(optimizer.init) if vmapped else optimizer.init
  state = init(params)

  def step(params, state, loss):
    grads = jax.tree.map(
        lambda x: jnp.sin(x * 3) + loss.astype(x.dtype) * 0.1, params)
    updates, state = optimizer.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.vmap(step) if vmapped else step)
  outputs = []
  for loss in _LOSSES:
    if vmapped:
      loss = jnp.array([loss, 2 * loss if loss == loss else 1.0], jnp.float32)
    else:
      loss = jnp.float32(loss)
    params, state = step(params, state, loss)
    outputs += [_as_saved(x) for x in jax.tree.leaves((params, state))]
  return outputs


def run_injected_betas() -> list[np.ndarray]:
  """LCAM under inject_hyperparams, its beta_below changed at every step."""
  optimizer = optax.inject_hyperparams(optax_lcam.lcam)(
      0.1, 0.95, 0.85, steps_per_epoch=4)
  params = _params()
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  outputs = []
  for t, loss in enumerate(_LOSSES):
    state.hyperparams["beta_below"] = jnp.float32(0.95 - 0.01 * t)
    grads = jax.tree.map(jnp.cos, params)
    updates, state = update(grads, state, params, value=jnp.float32(loss))
    params = optax.apply_updates(params, updates)
    outputs += [_as_saved(x) for x in jax.tree.leaves(params)]
  return outputs


def all_outputs() -> dict[str, np.ndarray]:
  outputs = {}
  for name, optimizer in [*lcam_optimizers(), *loss_controlled_optimizers()]:
    for vmapped in (False, True):
      mode = "vmap" if vmapped else "jit"
      for i, array in enumerate(run(optimizer, vmapped)):
        outputs[f"{name}/{mode}/{i}"] = array
  for i, array in enumerate(run_injected_betas()):
    outputs[f"lcam-injected-betas/{i}"] = array
  return outputs


def compare(before_path: str, after_path: str) -> int:
  before, after = np.load(before_path), np.load(after_path)
  if set(before) != set(after):
    print(f"the files hold different arrays: {len(set(before) ^ set(after))} "
          "names in one only")
    return 1
  differ = [k for k in before
            if before[k].dtype != after[k].dtype
            or before[k].tobytes() != after[k].tobytes()]
  print(f"{len(before):,} arrays compared; {len(differ):,} differ"
        + (f", e.g. {differ[:3]}" if differ else ""))
  return 1 if differ else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="+", metavar="NPZ")
  parser.add_argument("--compare", action="store_true",
                      help="compare two saved files instead of writing one")
  args = parser.parse_args(argv)
  if args.compare:
    if len(args.paths) != 2:
      parser.error("--compare takes two .npz files")
    for path in args.paths:
      if not os.path.isfile(path):
        parser.error(f"no such file: {path} (write it first: "
                     "python bench/optimizer_outputs.py OUT.npz)")
    return compare(*args.paths)
  if len(args.paths) != 1:
    parser.error("give one output .npz file")
  outputs = all_outputs()
  np.savez(args.paths[0], **outputs)
  print(f"{len(outputs):,} arrays written to {args.paths[0]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
