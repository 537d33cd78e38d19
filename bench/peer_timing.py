"""The harness's training loop timed against a PyTorch peer's step.

The loop (`train.loop.train_and_evaluate`) runs in a few runs that resume one
another, and the peer's step is timed on one resident batch before, between
and after them, so drifts of a shared machine's speed hit both alike. Used by
`bench/cpu_vs_torch.py` (the Wide-ResNet) and `bench/lm_vs_torch.py` (the
character GPT); `rate` also times the accelerator kit's peer.
"""

import argparse
from collections.abc import Callable
import os
import sys
import tempfile
import time

import jax
import numpy as np

from train import config as config_lib
from train import data
from train import devices
from train import loop
from train import record
from train import tasks


def require_torch():
  """The ``torch`` module, or exit with how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("error: PyTorch is missing: pip install -e '.[bench]'")
  return torch


def run_main(main: Callable[[], int]) -> None:
  """Exits with ``main()``'s status, or with one line for bad input (a
  missing corpus, a config the harness rejects)."""
  try:
    status = main()
  except (config_lib.ConfigError, data.DataError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  sys.exit(status)


def rate(step: Callable, inputs, targets, num_steps: int,
         units_per_step: int, synchronize: Callable[[], None] = lambda: None
         ) -> float:
  """Units (images, characters) per second over ``num_steps`` calls of
  ``step(inputs, targets)`` on one resident batch."""
  synchronize()
  start = time.perf_counter()
  for _ in range(num_steps):
    step(inputs, targets)
  synchronize()
  return num_steps * units_per_step / (time.perf_counter() - start)


def add_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
  """The options both comparisons share: devices, steps, segments."""
  parser.add_argument("--devices", type=int, default=0,
                      help="XLA CPU devices (0: the command line's choice)")
  parser.add_argument("--steps", type=int, default=steps,
                      help="loop steps in all, split into --segments runs")
  parser.add_argument("--segments", type=int, default=3)


def interleaved_rates(config, args: argparse.Namespace,
                      time_peer: Callable[[int], float]
                      ) -> tuple[list[float], list[float]]:
  """The loop's rates (one per run) and the peer's (one before each run and
  one after the last, after a warm-up), each over ``args.steps //
  args.segments`` steps.

  ``config`` is a training config; it is changed to log, evaluate and save
  nothing but the rate, on ``args.devices`` XLA CPU devices.
  """
  segment_steps = args.steps // args.segments
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 0
  config.progress = False
  config.log_every_steps = segment_steps
  config.host_devices = args.devices
  devices.use_host_devices(config)
  field = tasks.create_task(config).throughput_field
  time_peer(3)  # Warm-up.
  loop_rates, peer_rates = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for segment in range(1, args.segments + 1):
      peer_rates.append(time_peer(segment_steps))
      config.stop_after_steps = segment * segment_steps
      loop.train_and_evaluate(config, workdir)
      loop_rates.append(record.read_metrics(workdir)[record.TRAIN_KIND][-1][
          field])
    peer_rates.append(time_peer(segment_steps))
  return loop_rates, peer_rates


def print_comparison(setup: str, unit: str, loop_rates: list[float],
                     peer_label: str, peer_rates: list[float], torch) -> None:
  """The set-up line (``setup``, the cores, jax's and ``torch``'s versions
  and torch's threads), both medians with their samples, and their ratio."""
  ours, peers = float(np.median(loop_rates)), float(np.median(peer_rates))
  print(f"{setup}, {cores()} cores; jax {jax.__version__} on "
        f"{jax.device_count()} CPU devices, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads")
  for label, median, rates in (("harness loop (python -m train):", ours,
                                loop_rates),
                               (peer_label, peers, peer_rates)):
    print(f"{label:<33}{median:8.1f} {unit}/s, median of "
          + ", ".join(f"{r:.0f}" for r in rates))
  print(f"ratio harness / PyTorch: {ours / peers:.2f}")


def cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0))
