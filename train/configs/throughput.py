"""Throughput: synthetic CIFAR-sized data, no evaluation, one epoch.

  --config train/configs/throughput.py[:MODEL]   (default wrn-10-1)
"""

import ml_collections

from train.configs import default


def get_config(model: str = "wrn-10-1") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = "synthetic:num_train=5120,num_test=256"
  config.model.name = model
  config.num_epochs = 1
  config.eval_every_epochs = 0  # never
  config.checkpoint_every_steps = 0  # only at epoch ends
  config.schedule.name = "constant"
  return config
