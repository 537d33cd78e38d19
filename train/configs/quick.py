"""A quick CIFAR-10 run: WRN-10-1, LCAM 0.95/0.9, 5 epochs, cosine decay.

The job of `make run`: about 48 s an epoch on two CPU cores (2 XLA
devices; about 4.5 minutes in all), seconds on a GPU. Point it at the data with
`--config.data.source=folder:PATH` or `tfds:cifar10`.
"""

import ml_collections

from train.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = "wrn-10-1"
  config.num_epochs = 5
  config.schedule.name = "cosine"
  config.log_every_steps = 20
  return config
