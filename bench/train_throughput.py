"""The training loop's throughput against a bare jit-compiled step, in one run.

Runs `train.loop.train_and_evaluate` on synthetic CIFAR-sized data (everything:
the host-side batches, the step, logging, checkpoints) in a few runs that
resume one another, and between them times the bare compiled step of the same
model, batch and devices on one batch already on the devices. Prints the median
images/s of both, their ratio, how often each run compiled the train step (once
is right: no recompilation after the first step), and the time from the start
of `train_and_evaluate` to the end of its first step.

  python bench/train_throughput.py [--model wrn-10-1] [--batch 128]
      [--steps 150] [--segments 3] [--devices 8] [--parallel pmap]

With no accelerator it asks XLA for --devices fake CPU devices.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

# The harness (models/, train/) is imported from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="wrn-10-1")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=150,
                      help="loop steps in all, split into --segments runs")
  parser.add_argument("--segments", type=int, default=3)
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices when there is no accelerator")
  parser.add_argument("--parallel", default="pmap", choices=("pmap", "jit"))
  return parser.parse_args()


class CompileCounter(logging.Handler):
  """Counts JAX's compilations of functions that take a batch of uint8 images.

  Only the train step (and the eval step, off here) takes the images, so this
  counts the train step's compilations.
  """

  def __init__(self):
    super().__init__()
    self.count = 0

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling ") and "uint8[" in message:
      self.count += 1


def main():
  args = parse_args()
  os.environ.setdefault(
      "XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from train import data  # pylint: disable=g-import-not-at-top
  from train import loop  # pylint: disable=g-import-not-at-top
  from train import record  # pylint: disable=g-import-not-at-top
  from train import steps  # pylint: disable=g-import-not-at-top
  from train.configs import throughput  # pylint: disable=g-import-not-at-top

  counter = CompileCounter()
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(counter)
  jax_logger.propagate = False
  jax.config.update("jax_log_compiles", True)

  config = throughput.get_config(args.model)
  segment_steps = args.steps // args.segments
  num_train = args.batch * segment_steps * args.segments
  config.data.source = f"synthetic:num_train={num_train},num_test=256"
  config.batch_size = args.batch
  config.parallel = args.parallel
  config.progress = False
  config.log_every_steps = segment_steps

  # The bare step: the same model, optimizer, batch and devices, on one batch
  # already on the devices.
  split = data.load_split(config.data.source, "train")
  steps_per_epoch = data.steps_per_epoch(split.num_examples, args.batch, False)
  parallel, bare_state = steps.create_steps_and_state(config, split,
                                                      steps_per_epoch)
  batch = parallel.put_batch(next(data.train_batches(
      split, args.batch, seed=0, epoch=0)))
  bare_state, metrics = parallel.train_step(bare_state, batch)
  jax.block_until_ready(metrics)

  def bare_rate():
    nonlocal bare_state
    begin = time.perf_counter()
    for _ in range(segment_steps):
      bare_state, metrics = parallel.train_step(bare_state, batch)
    jax.block_until_ready((bare_state, metrics))
    return segment_steps * args.batch / (time.perf_counter() - begin)

  # The loop, in segments that resume one another, interleaved with the bare
  # step so that drifts of the machine's speed hit both alike.
  loop_rates, bare_rates, compiles, first_step_times = [], [], [], []
  bare_rate()  # warm-up: the first timed steps run slower
  with tempfile.TemporaryDirectory() as workdir:
    for segment in range(1, args.segments + 1):
      bare_rates.append(bare_rate())
      config.stop_after_steps = segment * segment_steps
      compiles_before = counter.count
      loop.train_and_evaluate(config, workdir)
      compiles.append(counter.count - compiles_before)
      records = record.read_metrics(workdir)
      loop_rates.append(records[record.TRAIN_KIND][-1][record.IMAGES_PER_SEC])
      first_step_times.append(records[record.RUN_KIND][-1][record.TIME_TO_FIRST_STEP_S])
    bare_rates.append(bare_rate())

  loop, bare = float(np.median(loop_rates)), float(np.median(bare_rates))
  print(f"jax {jax.__version__}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {args.parallel}, model {args.model}, "
        f"global batch {args.batch}, {args.segments} runs of {segment_steps} "
        "steps (each resuming the last)")
  print("time to first step (data, init, restore, compile): "
        + ", ".join(f"{t:.1f} s" for t in first_step_times))
  print(f"training loop: {loop:8.1f} images/s median of "
        + ", ".join(f"{r:.0f}" for r in loop_rates)
        + " (steps 2.. of each run: data, step, logging, checkpoints)")
  print(f"bare step:     {bare:8.1f} images/s median of "
        + ", ".join(f"{r:.0f}" for r in bare_rates)
        + " (one resident batch)")
  print(f"ratio loop / bare: {loop / bare:.3f}")
  print(f"train-step compilations per run of {segment_steps} steps: "
        + ", ".join(str(c) for c in compiles)
        + " (1 = none after the first step)")
  return 0 if all(c == 1 for c in compiles) else 1


if __name__ == "__main__":
  sys.exit(main())
