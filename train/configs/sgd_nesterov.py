"""Baseline: SGD, Nesterov momentum 0.9 and schedule A (the WRN paper's).

  --config train/configs/sgd_nesterov.py[:cifar100]
"""

import ml_collections

from train.configs import default


def get_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = f"tfds:{dataset}"
  config.optimizer.name = "sgd"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  return config
