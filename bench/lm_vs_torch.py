"""The harness's language-model loop on the CPU against nanoGPT's in PyTorch.

Runs `train.loop.train_and_evaluate` with the Shakespeare config (GPT-4-128,
context 64, batch 32, AdamW) on Tiny Shakespeare in a few runs that resume
one another, and between them times the PyTorch peer (the same network in
nanoGPT's layout, batch and AdamW, see `bench/torch_gpt.py`) on one resident
batch, with as many threads as this process has cores. Interleaving makes
drifts of a shared machine's speed hit both alike. Prints both rates (median
training characters per second) and their ratio.

  python bench/lm_vs_torch.py [--source text:PATH] [--devices N]
      [--steps 240] [--segments 3]

`--devices` splits the CPU into N XLA devices (default: what `python -m
train` chooses, see `train.devices.host_device_count`). Needs PyTorch:
`pip install -e '.[bench]'`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peer_timing  # pylint: disable=g-import-not-at-top

SHARED_TEXT = "../shared/data/tinyshakespeare.txt"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default=f"text:{SHARED_TEXT}",
                      help="the corpus (text:PATH or tfds:tiny_shakespeare)")
  peer_timing.add_arguments(parser, steps=240)
  return parser.parse_args()


def main():
  args = parse_args()
  from train import tasks  # pylint: disable=g-import-not-at-top
  from train.configs import shakespeare  # pylint: disable=g-import-not-at-top

  config = shakespeare.get_config()
  config.data.source = args.source
  task = tasks.create_task(config)
  train = task.load_splits(config, test=False).train  # the corpus, read first
  torch = peer_timing.require_torch()
  from bench import torch_gpt  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(peer_timing.cores())
  torch_step, tokens, targets = torch_gpt.config_peer(
      config, task.create_model(config, train, None), train.num_classes)

  def time_peer(num_steps):
    return peer_timing.rate(torch_step, tokens, targets, num_steps,
                            tokens.numel())

  loop_rates, torch_rates = peer_timing.interleaved_rates(config, args,
                                                          time_peer)
  peer_timing.print_comparison(
      f"{config.model.name}, batch {config.batch_size} x context "
      f"{config.data.context}, AdamW", "characters", loop_rates,
      "PyTorch step (nanoGPT layout):", torch_rates, torch)
  return 0


if __name__ == "__main__":
  peer_timing.run_main(main)
