"""Overhead of LCAM over SGD with momentum, on a WRN-28-10-sized parameter tree.

Times one jit-compiled optimizer step (update + apply, buffers donated) of
`optax_lcam.lcam` against `optax.chain(optax.add_decayed_weights,
optax.sgd(momentum))`, with the repetitions of the two interleaved so that
drifts of the machine hit both alike, and prints the median time of each, their
ratio, and the optimizer state's bytes against the parameters' bytes.

  python bench/lcam_overhead.py [--repeats 15] [--steps 5] [--model wrn-28-10]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import models
import optax_lcam


def parameter_tree(model_name: str, num_classes: int = 10):
  """Float32 parameters with the shapes of a named Wide-ResNet."""
  model = models.create_model(model_name, num_classes)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False))["params"]
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(treedef, [
      0.01 * jax.random.normal(k, x.shape, jnp.float32)
      for k, x in zip(keys, leaves)])


def make_step(optimizer):
  """A jitted step: update and apply, parameters and state donated."""
  def step(params, opt_state, grads, loss):
    updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state
  return jax.jit(step, donate_argnums=(0, 1))


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wrn-28-10")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--steps", type=int, default=5,
                      help="steps timed together in each repeat")
  args = parser.parse_args()

  params = parameter_tree(args.model)
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  optimizers = {
      "lcam": optax_lcam.lcam(0.1, 0.95, 0.9, weight_decay=5e-4,
                              steps_per_epoch=391),
      "sgd+momentum": optax.chain(optax.add_decayed_weights(5e-4),
                                  optax.sgd(0.1, momentum=0.9)),
  }
  runs = {}
  for name, optimizer in optimizers.items():
    p = jax.tree.map(jnp.copy, params)
    state = optimizer.init(p)
    step = make_step(optimizer)
    p, state = step(p, state, grads, 1.0)  # compile
    jax.block_until_ready(p)
    runs[name] = [step, p, state, []]

  losses = [2.0, 1.0, 3.0, 1.5, 0.8]
  for _ in range(args.repeats):
    for name, run in runs.items():
      step, p, state, times = run
      start = time.perf_counter()
      for i in range(args.steps):
        p, state = step(p, state, grads, losses[i % len(losses)])
      jax.block_until_ready((p, state))
      times.append((time.perf_counter() - start) / args.steps)
      run[1], run[2] = p, state

  print(f"devices: {jax.devices()[0].platform} x {jax.device_count()}, "
        f"jax {jax.__version__}, optax {optax.__version__}")
  print(f"parameters: {args.model}, {num_params:,} float32 "
        f"({tree_bytes(params) / 2**20:.1f} MiB)")
  medians = {name: statistics.median(run[3]) for name, run in runs.items()}
  for name, run in runs.items():
    state_bytes = tree_bytes(run[2])
    extra = state_bytes - tree_bytes(params)
    print(f"{name:>13}: median step {medians[name] * 1e3:8.2f} ms over "
          f"{args.repeats} x {args.steps} steps; state {state_bytes:,} bytes "
          f"= params + {extra:,} bytes")
  print(f"ratio lcam / sgd+momentum: "
        f"{medians['lcam'] / medians['sgd+momentum']:.3f}")


if __name__ == "__main__":
  main()
