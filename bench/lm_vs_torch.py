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
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED_TEXT = "../shared/data/tinyshakespeare.txt"


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default=f"text:{SHARED_TEXT}",
                      help="the corpus (text:PATH or tfds:tiny_shakespeare)")
  parser.add_argument("--devices", type=int, default=0,
                      help="XLA CPU devices (0: the command line's choice)")
  parser.add_argument("--steps", type=int, default=240,
                      help="loop steps in all, split into --segments runs")
  parser.add_argument("--segments", type=int, default=3)
  return parser.parse_args()


def main():
  args = parse_args()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("error: PyTorch is missing: pip install -e '.[bench]'")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bench import torch_gpt  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  from train import devices  # pylint: disable=g-import-not-at-top
  from train import loop  # pylint: disable=g-import-not-at-top
  from train import record  # pylint: disable=g-import-not-at-top
  from train.configs import shakespeare  # pylint: disable=g-import-not-at-top

  cores = len(os.sched_getaffinity(0))
  config = shakespeare.get_config()
  segment_steps = args.steps // args.segments
  config.data.source = args.source
  config.eval_every_epochs = 0
  config.checkpoint_every_steps = 0
  config.progress = False
  config.log_every_steps = segment_steps
  config.host_devices = args.devices
  devices.use_host_devices(config)

  torch.manual_seed(0)
  torch.set_num_threads(cores)
  vocab_size = 65
  flax_model = models.create_model(config.model.name, vocab_size)
  peer = torch_gpt.from_flax_module(flax_model)
  shape = (config.batch_size, config.data.context)
  tokens = torch.randint(0, vocab_size, shape)
  targets = torch.randint(0, vocab_size, shape)
  torch_step = torch_gpt.make_train_step(
      peer, lr=config.schedule.learning_rate,
      betas=(config.optimizer.b1, config.optimizer.b2),
      weight_decay=config.optimizer.weight_decay)
  torch_gpt.tokens_per_sec(torch_step, tokens, targets, 3)  # warm-up

  loop_rates, torch_rates = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for segment in range(1, args.segments + 1):
      torch_rates.append(torch_gpt.tokens_per_sec(
          torch_step, tokens, targets, segment_steps))
      config.stop_after_steps = segment * segment_steps
      loop.train_and_evaluate(config, workdir)
      records = record.read_metrics(workdir)
      loop_rates.append(records[record.TRAIN_KIND][-1][record.TOKENS_PER_SEC])
    torch_rates.append(torch_gpt.tokens_per_sec(
        torch_step, tokens, targets, segment_steps))

  ours, peers = float(np.median(loop_rates)), float(np.median(torch_rates))
  print(f"{config.model.name}, batch {config.batch_size} x context "
        f"{config.data.context}, AdamW, {cores} cores; jax {jax.__version__} "
        f"on {jax.device_count()} CPU devices, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads")
  print(f"harness loop (python -m train): {ours:8.0f} characters/s, median "
        "of " + ", ".join(f"{r:.0f}" for r in loop_rates))
  print(f"PyTorch step (nanoGPT layout):  {peers:8.0f} characters/s, median "
        "of " + ", ".join(f"{r:.0f}" for r in torch_rates))
  print(f"ratio harness / PyTorch: {ours / peers:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
