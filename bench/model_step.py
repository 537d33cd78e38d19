"""Throughput of the harness's own train step, for each Wide-ResNet.

Times the step that `python -m train` runs, built by
`train.steps.create_steps_and_state` from the reference config
(`train/configs/default.py`): augmentation and normalisation on the device,
forward, backward, BatchNorm statistics, coupled weight decay and LCAM. It runs
under `jax.jit` with the state's buffers donated (`config.parallel="jit"`) on
one resident batch of synthetic CIFAR-sized images, over the devices present
(one, unless XLA is told otherwise). Reports images per second, XLA's FLOP
count of the compiled step (per device) and the FLOP/s achieved. Defaults are
small on a CPU and the reference batch on an accelerator.

Usage:
  python bench/model_step.py
  python bench/model_step.py --models wrn-28-10 --batch 128 --steps 50
  python bench/model_step.py --models wrn-16-4 wrn-10-1 --dtypes float32
"""

import argparse
import os
import sys
import time
from typing import Any

# The harness (models/, train/) is imported from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

import models
from train import data
from train import steps as steps_lib
from train.configs import default

DTYPES = ("float32", "bfloat16")
DEFAULT_MODELS = ("wrn-28-10", "wrn-16-8", "wrn-40-4", "wrn-16-4", "wrn-10-1")
# (batch, timed steps) by default: tiny on a CPU, the reference batch elsewhere.
CPU_DEFAULTS = (4, 2)
ACCELERATOR_DEFAULTS = (128, 20)
# CIFAR-10's 50,000 training images in batches of 128: LCAM's epoch length.
REFERENCE_STEPS_PER_EPOCH = 391


def step_config(name: str, dtype: str, batch: int, parallel: str = "jit"):
  """The reference config with another model, compute dtype and batch."""
  config = default.get_config()
  config.model.name = name
  config.model.dtype = dtype
  config.batch_size = batch
  config.parallel = parallel
  return config


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
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def benchmark_one(
    name: str,
    dtype: str,
    batch: int,
    steps: int,
    warmup: int = 1,
    image_size: int = 32,
    num_classes: int = 10,
    parallel: str = "jit",
) -> dict[str, Any]:
  """Compiles and times the harness's train step for one model and dtype.

  Args:
    name: model name, see ``models.MODEL_NAMES``.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters and
      optimizer state stay float32).
    batch: global images per step (divisible by the device count).
    steps: number of timed steps.
    warmup: number of untimed steps after compiling.
    image_size: height and width of the synthetic images.
    num_classes: number of logits.
    parallel: ``"jit"`` or ``"pmap"``, as ``config.parallel``.

  Returns:
    The row of the results table: ``images_per_s``, ``step_ms``,
    ``compile_s``, ``flops`` (per device and step, or None) and
    ``flops_per_s`` (over all devices), among others.
  """
  config = step_config(name, dtype, batch, parallel)
  split = data.load_split(
      f"synthetic:num_train={batch},num_test=1,image_size={image_size},"
      f"num_classes={num_classes}",
      "train",
  )
  parallel_steps, host_state = steps_lib.create_steps_and_state(
      config, split, REFERENCE_STEPS_PER_EPOCH
  )
  state = parallel_steps.put_state(host_state)
  device_batch = parallel_steps.put_batch(
      next(data.train_batches(split, batch, seed=0, epoch=0))
  )
  start = time.perf_counter()
  compiled = parallel_steps.train_step.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start
  flops = xla_flops(compiled)

  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / steps
  loss = float(np.asarray(metrics["loss"]).ravel()[0])
  if not np.isfinite(loss):
    raise FloatingPointError(f"{name} {dtype}: loss is {loss}")
  devices = jax.device_count()
  return {
      "model": name,
      "dtype": dtype,
      "batch": batch,
      "devices": devices,
      "params": models.count_params(host_state.params),
      "compile_s": compile_s,
      "step_ms": 1e3 * step_s,
      "images_per_s": batch / step_s,
      "flops": flops,
      "flops_per_s": None if flops is None else devices * flops / step_s,
  }


HEADER = (
    f"{'model':<10} {'dtype':<8} {'batch':>5} {'params':>8} "
    f"{'compile s':>9} {'step ms':>9} {'img/s':>8} "
    f"{'GFLOP/img':>9} {'GFLOP/s':>9}"
)


def format_row(row: dict[str, Any]) -> str:
  """One line of the results table."""
  if row["flops"] is None:
    per_image, rate = "n/a", "n/a"
  else:
    per_image = f"{row['devices'] * row['flops'] / row['batch'] / 1e9:.2f}"
    rate = f"{row['flops_per_s'] / 1e9:.1f}"
  return (
      f"{row['model']:<10} {row['dtype']:<8} {row['batch']:>5} "
      f"{row['params'] / 1e6:>7.2f}M {row['compile_s']:>9.1f} "
      f"{row['step_ms']:>9.1f} {row['images_per_s']:>8.1f} "
      f"{per_image:>9} {rate:>9}"
  )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  """Command-line flags; batch and steps default by backend."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--models",
      nargs="+",
      default=list(DEFAULT_MODELS),
      help=f"names among {', '.join(models.MODEL_NAMES)}",
  )
  parser.add_argument(
      "--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES)
  )
  parser.add_argument(
      "--batch",
      type=int,
      default=None,
      help="images per step (default: 4 on CPU, 128 otherwise)",
  )
  parser.add_argument(
      "--steps",
      type=int,
      default=None,
      help="timed steps (default: 2 on CPU, 20 otherwise)",
  )
  parser.add_argument(
      "--warmup", type=int, default=1, help="untimed steps after compiling"
  )
  parser.add_argument("--image-size", type=int, default=32)
  parser.add_argument("--num-classes", type=int, default=10)
  parser.add_argument("--parallel", default="jit", choices=("jit", "pmap"))
  args = parser.parse_args(argv)
  default_batch, default_steps = (
      CPU_DEFAULTS if jax.default_backend() == "cpu" else ACCELERATOR_DEFAULTS
  )
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
  print(
      f"jax {jax.__version__}, backend {jax.default_backend()}, "
      f"{jax.device_count()} x {device.device_kind}, {args.parallel}, "
      f"batch {args.batch}, {args.image_size}x{args.image_size} images, "
      f"{args.steps} timed steps after {args.warmup} warm-up",
      flush=True,
  )
  print(
      "the harness's train step (train.steps.create_steps_and_state): "
      "augmentation + forward + backward + BN update + weight decay + LCAM; "
      "FLOPs as counted by XLA for the compiled step",
      flush=True,
  )
  print(HEADER, flush=True)
  rows = []
  for name in args.models:
    for dtype in args.dtypes:
      try:
        row = benchmark_one(
            name,
            dtype,
            args.batch,
            args.steps,
            args.warmup,
            args.image_size,
            args.num_classes,
            args.parallel,
        )
      except Exception as error:  # pylint: disable=broad-except
        print(
            f"{name:<10} {dtype:<8} failed: {type(error).__name__}: "
            f"{str(error)[:200]}",
            flush=True,
        )
        continue
      rows.append(row)
      print(format_row(row), flush=True)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
