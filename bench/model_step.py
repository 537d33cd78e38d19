"""Throughput of one jit-compiled Wide-ResNet train step.

For each named model and compute dtype, times a full train step (forward,
backward, BatchNorm statistics update, weight decay and SGD with momentum, as
in the LCAM reference runs) on one device of the default backend, and reports
images per second, XLA's own FLOP count of the compiled step and the FLOP/s
achieved. Defaults are small on a CPU and realistic on an accelerator.

Usage:
  .venv/bin/python bench/model_step.py
  .venv/bin/python bench/model_step.py --models wrn-28-10 --batch 128 --steps 50
  .venv/bin/python bench/model_step.py --models wrn-16-4 tiny --dtypes float32
"""

import argparse
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import models

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DEFAULT_MODELS = ('wrn-28-10', 'wrn-16-8', 'wrn-40-4', 'wrn-16-4', 'wrn-10-1')
# (batch, timed steps) by default: tiny on a CPU, the reference batch elsewhere.
CPU_DEFAULTS = (4, 2)
ACCELERATOR_DEFAULTS = (128, 20)


def reference_optimizer() -> optax.GradientTransformation:
  """Weight decay 5e-4 and SGD with momentum 0.9, as the reference trains."""
  return optax.chain(optax.add_decayed_weights(5e-4),
                     optax.sgd(0.1, momentum=0.9))


def make_train_step(model, optimizer: optax.GradientTransformation) -> Callable:
  """A train step ``(state, images, labels) -> (state, loss)``.

  Args:
    model: a ``models.WideResNet``.
    optimizer: the optax transformation applied to the gradients.

  Returns:
    The (not yet jitted) step, where ``state`` is
    ``(params, batch_stats, opt_state)``.
  """

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates['batch_stats']

  def train_step(state, images, labels):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state), loss

  return train_step


def xla_flops(compiled) -> float | None:
  """FLOPs of a compiled computation as XLA counts them, if it reports them.

  ``cost_analysis()`` returns a dict in recent jax versions and a list with
  one dict per computation in older ones.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend has it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def initial_state(
    name: str, optimizer: optax.GradientTransformation, image_size: int,
    num_classes: int, device: Any,
) -> tuple[Any, Any, Any]:
  """``(params, batch_stats, opt_state)`` of a freshly initialised model.

  Parameters are float32 whatever the compute dtype, so one initialisation
  serves every dtype.
  """
  model = models.create_model(name, num_classes)
  images = jnp.zeros((1, image_size, image_size, 3))

  def init(key):
    variables = model.init(key, images, train=False)
    params = variables['params']
    return params, variables['batch_stats'], optimizer.init(params)

  return jax.device_put(jax.jit(init)(jax.random.key(0)), device)


def benchmark_one(
    name: str, dtype_name: str, state: Any,
    optimizer: optax.GradientTransformation, batch: int, steps: int,
    warmup: int, image_size: int, num_classes: int, device: Any,
) -> dict[str, Any]:
  """Compiles and times the train step of one model in one dtype.

  Args:
    name: model name, see ``models.MODEL_NAMES``.
    dtype_name: compute dtype, a key of ``DTYPES``.
    state: ``(params, batch_stats, opt_state)`` to start from (not consumed).
    optimizer: the optax transformation of the step.
    batch: images per step.
    steps: number of timed steps.
    warmup: number of untimed steps before them.
    image_size: height and width of the random images.
    num_classes: number of logits.
    device: where to run.

  Returns:
    A dict with the row of the results table.
  """
  model = models.create_model(name, num_classes, dtype=DTYPES[dtype_name])
  image_key, label_key = jax.random.split(jax.random.key(1))
  images = jax.device_put(jax.random.normal(
      image_key, (batch, image_size, image_size, 3)), device)
  labels = jax.device_put(jax.random.randint(
      label_key, (batch,), 0, num_classes), device)
  state = jax.tree.map(jnp.copy, state)  # the step donates its input state
  jitted = jax.jit(make_train_step(model, optimizer), donate_argnums=0)
  start = time.perf_counter()
  compiled = jitted.lower(state, images, labels).compile()
  compile_s = time.perf_counter() - start
  flops = xla_flops(compiled)

  for _ in range(warmup):
    state, loss = compiled(state, images, labels)
  jax.block_until_ready((state, loss))
  start = time.perf_counter()
  for _ in range(steps):
    state, loss = compiled(state, images, labels)
  jax.block_until_ready((state, loss))
  step_s = (time.perf_counter() - start) / steps
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f'{name} {dtype_name}: loss is {float(loss)}')
  return {
      'model': name, 'dtype': dtype_name, 'batch': batch,
      'params': models.count_params(state[0]), 'compile_s': compile_s,
      'step_ms': 1e3 * step_s, 'images_per_s': batch / step_s,
      'flops': flops, 'flops_per_s': None if flops is None else flops / step_s,
  }


HEADER = (f"{'model':<10} {'dtype':<8} {'batch':>5} {'params':>8} "
          f"{'compile s':>9} {'step ms':>9} {'img/s':>8} "
          f"{'GFLOP/img':>9} {'GFLOP/s':>9}")


def format_row(row: dict[str, Any]) -> str:
  """One line of the results table."""
  if row['flops'] is None:
    per_image, rate = 'n/a', 'n/a'
  else:
    per_image = f"{row['flops'] / row['batch'] / 1e9:.2f}"
    rate = f"{row['flops_per_s'] / 1e9:.1f}"
  return (f"{row['model']:<10} {row['dtype']:<8} {row['batch']:>5} "
          f"{row['params'] / 1e6:>7.2f}M {row['compile_s']:>9.1f} "
          f"{row['step_ms']:>9.1f} {row['images_per_s']:>8.1f} "
          f"{per_image:>9} {rate:>9}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  """Command-line flags; batch and steps default by backend."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                      help=f'names among {", ".join(models.MODEL_NAMES)}')
  parser.add_argument('--dtypes', nargs='+', default=list(DTYPES),
                      choices=list(DTYPES))
  parser.add_argument('--batch', type=int, default=None,
                      help='images per step (default: 4 on CPU, 128 otherwise)')
  parser.add_argument('--steps', type=int, default=None,
                      help='timed steps (default: 2 on CPU, 20 otherwise)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed steps after compiling')
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--num-classes', type=int, default=10)
  args = parser.parse_args(argv)
  default_batch, default_steps = (
      CPU_DEFAULTS if jax.default_backend() == 'cpu' else ACCELERATOR_DEFAULTS)
  args.batch = args.batch or default_batch
  args.steps = args.steps or default_steps
  for name in args.models:
    try:
      models.create_model(name, args.num_classes)
    except ValueError as error:
      parser.error(str(error))
  return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  """Runs the benchmark, prints the table, returns its rows."""
  args = parse_args(argv)
  device = jax.devices()[0]
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, device '
        f'{device.device_kind} (1 of {jax.device_count()}), '
        f'batch {args.batch}, '
        f'{args.image_size}x{args.image_size} images, {args.steps} timed steps '
        f'after {args.warmup} warm-up', flush=True)
  print('train step = forward + backward + BN update + weight decay + SGD '
        'momentum; FLOPs as counted by XLA for the compiled step', flush=True)
  print(HEADER, flush=True)
  optimizer = reference_optimizer()
  rows = []
  for name in args.models:
    state = initial_state(name, optimizer, args.image_size, args.num_classes,
                          device)
    for dtype_name in args.dtypes:
      try:
        row = benchmark_one(name, dtype_name, state, optimizer, args.batch,
                            args.steps, args.warmup, args.image_size,
                            args.num_classes, device)
      except Exception as error:  # pylint: disable=broad-except
        print(f'{name:<10} {dtype_name:<8} failed: {type(error).__name__}: '
              f'{str(error)[:200]}', flush=True)
        continue
      rows.append(row)
      print(format_row(row), flush=True)
  return rows


if __name__ == '__main__':
  main(sys.argv[1:])
