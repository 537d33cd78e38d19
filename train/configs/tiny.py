"""A tiny run for tests: WRN-10-1 on 256 synthetic images, 2 epochs."""

import ml_collections

from train.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = "synthetic:num_train=256,num_test=96,num_classes=10"
  config.model.name = "wrn-10-1"
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.schedule.name = "constant"
  # Small enough that runs which differ only in the order of their sums (two
  # processes against one) stay close over a few steps.
  config.schedule.learning_rate = 0.01
  config.progress = False
  return config
