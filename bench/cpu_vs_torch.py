"""The harness's training loop on the CPU against the same step in PyTorch.

Runs `train.loop.train_and_evaluate` with the quick config (WRN-10-1, batch
128, LCAM
with coupled weight decay) on synthetic CIFAR-sized data in a few runs that
resume one another, and between them times the PyTorch peer (the same network
and batch, `torch.optim.SGD` with momentum and weight decay, see
`bench/torch_wrn.py`) on one resident batch, with as many threads as this
process has cores. Interleaving makes drifts of a shared machine's speed hit
both alike. Prints both rates (median images/s) and their ratio.

  python bench/cpu_vs_torch.py [--devices N] [--steps 150] [--segments 3]
      [--channels-last]

`--devices` splits the CPU into N XLA devices (default: what `python -m train`
chooses, see `train.devices.host_device_count`). Needs PyTorch:
`pip install -e '.[bench]'`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peer_timing  # pylint: disable=g-import-not-at-top


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  peer_timing.add_arguments(parser, steps=150)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--channels-last", action="store_true",
                      help="PyTorch in channels-last memory format")
  return parser.parse_args()


def main():
  args = parse_args()
  torch = peer_timing.require_torch()

  from bench import torch_wrn  # pylint: disable=g-import-not-at-top
  from train.configs import quick  # pylint: disable=g-import-not-at-top

  config = quick.get_config()
  config.data.source = (f"synthetic:num_train={args.batch * args.steps},"
                        "num_test=256")
  config.batch_size = args.batch

  torch.manual_seed(0)
  torch.set_num_threads(peer_timing.cores())
  model = torch_wrn.WideResNet(*torch_wrn.parse_model_name(
      config.model.name), num_classes=10)
  images = torch.randn(args.batch, 3, 32, 32)
  labels = torch.randint(0, 10, (args.batch,))
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  torch_step = torch_wrn.make_train_step(
      model, lr=config.schedule.learning_rate,
      momentum=config.optimizer.beta_above,
      weight_decay=config.optimizer.weight_decay)

  def time_peer(num_steps):
    return peer_timing.rate(torch_step, images, labels, num_steps, args.batch)

  loop_rates, torch_rates = peer_timing.interleaved_rates(config, args,
                                                          time_peer)
  peer_timing.print_comparison(
      f"{config.model.name}, batch {args.batch}"
      + (", PyTorch channels-last" if args.channels_last else ""),
      "images", loop_rates, "PyTorch step:", torch_rates, torch)
  return 0


if __name__ == "__main__":
  peer_timing.run_main(main)
