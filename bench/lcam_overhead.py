"""Overhead of LCAM over SGD with momentum, on a WRN-28-10-sized parameter tree.

Times one jit-compiled optimizer step (update + apply, buffers donated) of
`optax_lcam.lcam` against `optax.chain(optax.add_decayed_weights,
optax.sgd(momentum))` (momentum a compile-time constant), the same SGD with
its momentum injected (`optax.inject_hyperparams`, a runtime value), and
`optax_lcam.loss_controlled` over that injected SGD. The repetitions are
interleaved so that drifts of the machine hit all alike; it prints the median
time of each, its ratio to SGD's, and the optimizer state's bytes against the
parameters' bytes.

The tree is a model's parameters (``--tree model``) or ``--leaves`` equal
1-D leaves of about the same total size (``--tree equal``, ``--leaf-size`` to
set their length). ``--seeds K`` runs K independent copies in one program
(`jax.vmap` over a leading axis of the parameters, the state and the loss).
``--schedule`` gives every optimizer a cosine learning-rate schedule instead
of a constant learning rate.

  python bench/lcam_overhead.py [--tree model|equal] [--seeds 1]
    [--schedule] [--repeats 15] [--steps 5] [--model wrn-28-10]
"""

import argparse
import math
import os
import statistics
import sys
import time

# The models are imported from the checkout, as in the other benchmarks.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import optax

import models
import optax_lcam

_WEIGHT_DECAY = 5e-4
_LOSSES = (2.0, 1.0, 3.0, 1.5, 0.8)


def model_shapes(model_name: str, num_classes: int = 10):
  """The tree structure and the leaves' shapes of a named Wide-ResNet."""
  model = models.create_model(model_name, num_classes)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False))["params"]
  leaves, treedef = jax.tree.flatten(abstract)
  return treedef, [x.shape for x in leaves]


def equal_leaf_shapes(num_leaves: int, leaf_size: int):
  """The structure and shapes of ``num_leaves`` vectors of ``leaf_size``."""
  treedef = jax.tree.structure({f"leaf_{i:02d}": 0 for i in range(num_leaves)})
  return treedef, [(leaf_size,)] * num_leaves


def random_tree(treedef, shapes):
  """Float32 parameters of the given structure and shapes."""
  keys = jax.random.split(jax.random.key(1), len(shapes))
  return jax.tree.unflatten(treedef, [
      0.01 * jax.random.normal(k, shape, jnp.float32)
      for k, shape in zip(keys, shapes)])


def optimizers(steps_per_epoch: int,
               learning_rate: optax.ScalarOrSchedule = 0.1) -> dict:
  """The optimizers compared, by the name of their row."""
  def with_decay(optimizer):
    return optax.chain(optax.add_decayed_weights(_WEIGHT_DECAY), optimizer)
  # Only the momentum is injected, so that it is the one runtime value: an
  # injected learning rate would be another, which XLA's CPU code handles as
  # slowly (see docs/benchmarks.md).
  injected_sgd = optax.inject_hyperparams(
      optax.sgd, static_args=("learning_rate",))(learning_rate, momentum=0.9)
  return {
      "lcam": optax_lcam.lcam(learning_rate, 0.95, 0.9,
                              weight_decay=_WEIGHT_DECAY,
                              steps_per_epoch=steps_per_epoch),
      "sgd+momentum": with_decay(optax.sgd(learning_rate, momentum=0.9)),
      "injected sgd": with_decay(injected_sgd),
      "loss_controlled": with_decay(optax_lcam.loss_controlled(
          injected_sgd, below={"momentum": 0.95}, above={"momentum": 0.9},
          steps_per_epoch=steps_per_epoch)),
  }


def make_step(optimizer, vmapped: bool):
  """A jitted step: update and apply, parameters and state donated."""
  def step(params, opt_state, grads, loss):
    updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state
  if vmapped:
    step = jax.vmap(step)
  return jax.jit(step, donate_argnums=(0, 1))


def seed_losses(step_index: int, num_seeds: int):
  """The step's loss, or one loss per seed (each seed's sequence shifted)."""
  if num_seeds == 1:
    return _LOSSES[step_index % len(_LOSSES)]
  return jnp.array([_LOSSES[(step_index + s) % len(_LOSSES)]
                    for s in range(num_seeds)])


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wrn-28-10")
  parser.add_argument("--tree", choices=("model", "equal"), default="model",
                      help="the model's parameter shapes, or equal 1-D leaves")
  parser.add_argument("--leaves", type=int, default=30,
                      help="number of leaves with --tree equal")
  parser.add_argument("--leaf-size", type=int, default=None,
                      help="elements per leaf with --tree equal (default: "
                      "the model's parameter count / --leaves)")
  parser.add_argument("--seeds", type=int, default=1,
                      help="independent copies in one program (jax.vmap)")
  parser.add_argument("--schedule", action="store_true",
                      help="a cosine learning-rate schedule, not a constant")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--steps", type=int, default=5,
                      help="steps timed together in each repeat")
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.error("--seeds must be at least 1")

  treedef, shapes = model_shapes(args.model)
  tree_name = args.model
  if args.tree == "equal":
    num_params = sum(math.prod(shape) for shape in shapes)
    leaf_size = args.leaf_size or num_params // args.leaves
    treedef, shapes = equal_leaf_shapes(args.leaves, leaf_size)
    tree_name = f"{args.leaves} equal leaves of {leaf_size:,}"
  params = random_tree(treedef, shapes)
  if args.seeds > 1:
    params = jax.tree.map(lambda x: jnp.stack([x] * args.seeds), params)
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  runs = {}
  learning_rate = (optax.cosine_decay_schedule(0.1, 100_000) if args.schedule
                   else 0.1)
  for name, optimizer in optimizers(391, learning_rate).items():
    p = jax.tree.map(jnp.copy, params)
    init = jax.vmap(optimizer.init) if args.seeds > 1 else optimizer.init
    state = init(p)
    step = make_step(optimizer, vmapped=args.seeds > 1)
    p, state = step(p, state, grads, seed_losses(0, args.seeds))  # compile
    jax.block_until_ready(p)
    runs[name] = [step, p, state, []]

  for _ in range(args.repeats):
    for run in runs.values():
      step, p, state, times = run
      start = time.perf_counter()
      for i in range(args.steps):
        p, state = step(p, state, grads, seed_losses(i, args.seeds))
      jax.block_until_ready((p, state))
      times.append((time.perf_counter() - start) / args.steps)
      run[1], run[2] = p, state

  print(f"devices: {jax.devices()[0].platform} x {jax.device_count()}, "
        f"jax {jax.__version__}, optax {optax.__version__}")
  seeds = f", {args.seeds} seeds (vmap)" if args.seeds > 1 else ""
  schedule = ", cosine learning-rate schedule" if args.schedule else ""
  print(f"parameters: {tree_name}{seeds}{schedule}, {num_params:,} float32 "
        f"({tree_bytes(params) / 2**20:.1f} MiB)")
  medians = {name: statistics.median(run[3]) for name, run in runs.items()}
  for name, run in runs.items():
    state_bytes = tree_bytes(run[2])
    extra = state_bytes - tree_bytes(params)
    print(f"{name:>15}: median step {medians[name] * 1e3:8.2f} ms over "
          f"{args.repeats} x {args.steps} steps, "
          f"{medians[name] / medians['sgd+momentum']:.3f} x sgd+momentum; "
          f"state = params + {extra:,} bytes")


if __name__ == "__main__":
  main()
