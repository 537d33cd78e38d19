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
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=0,
                      help="XLA CPU devices (0: the command line's choice)")
  parser.add_argument("--steps", type=int, default=150,
                      help="loop steps in all, split into --segments runs")
  parser.add_argument("--segments", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--channels-last", action="store_true",
                      help="PyTorch in channels-last memory format")
  return parser.parse_args()


def main():
  args = parse_args()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("error: PyTorch is missing: pip install -e '.[bench]'")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bench import torch_wrn  # pylint: disable=g-import-not-at-top
  from train import devices  # pylint: disable=g-import-not-at-top
  from train import loop  # pylint: disable=g-import-not-at-top
  from train import record  # pylint: disable=g-import-not-at-top
  from train.configs import quick  # pylint: disable=g-import-not-at-top

  cores = len(os.sched_getaffinity(0))
  config = quick.get_config()
  segment_steps = args.steps // args.segments
  config.data.source = (f"synthetic:num_train={args.batch * args.steps},"
                        "num_test=256")
  config.batch_size = args.batch
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 0
  config.progress = False
  config.log_every_steps = segment_steps
  config.host_devices = args.devices
  devices.use_host_devices(config)

  torch.manual_seed(0)
  torch.set_num_threads(cores)
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
  torch_wrn.images_per_sec(torch_step, images, labels, 3)  # warm-up

  loop_rates, torch_rates = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for segment in range(1, args.segments + 1):
      torch_rates.append(torch_wrn.images_per_sec(
          torch_step, images, labels, segment_steps))
      config.stop_after_steps = segment * segment_steps
      loop.train_and_evaluate(config, workdir)
      records = record.read_metrics(workdir)
      loop_rates.append(records[record.TRAIN_KIND][-1][record.IMAGES_PER_SEC])
    torch_rates.append(torch_wrn.images_per_sec(
        torch_step, images, labels, segment_steps))

  loop, peer = float(np.median(loop_rates)), float(np.median(torch_rates))
  print(f"{config.model.name}, batch {args.batch}, {cores} cores; jax "
        f"{jax.__version__} on {jax.device_count()} CPU devices, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads"
        + (" (channels-last)" if args.channels_last else ""))
  print(f"harness loop (python -m train): {loop:7.1f} images/s, median of "
        + ", ".join(f"{r:.0f}" for r in loop_rates))
  print(f"PyTorch step:                   {peer:7.1f} images/s, median of "
        + ", ".join(f"{r:.0f}" for r in torch_rates))
  print(f"ratio harness / PyTorch: {loop / peer:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
