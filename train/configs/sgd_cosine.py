"""Baseline: SGD, Nesterov momentum 0.9, cosine decay over the same 150 epochs.

  --config train/configs/sgd_cosine.py[:cifar100]
"""

import ml_collections

from train.configs import sgd_nesterov


def get_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  config = sgd_nesterov.get_config(dataset)
  config.schedule.name = "cosine"
  return config
