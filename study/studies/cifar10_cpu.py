"""LCAM against SGD on real CIFAR-10, at the scale of a 2-core CPU machine.

  python -m study run cifar10_cpu --workdir results/cifar10_cpu

The reference recipe scaled down: WRN-10-1 (77,850 parameters), batch 128,
lr 0.1, coupled weight decay 5e-4, schedule A (x0.2 after epochs 31, 61 and 91
of 150) with its boundaries scaled to 15 epochs (after epochs 3, 6 and 9), on
the JPEG CIFAR-10 archive beside the checkout. The arms are the paper's
schedule-A matrix and differ in nothing but the optimizer's momentum rule.

Why this size: WRN-10-1 trains at about 950 images/s with the host split into
4 XLA devices (`python bench/cpu_vs_torch.py`), so an epoch with its
evaluation takes about a minute; 4 arms x 3 seeds x 15 epochs is then about 3
hours on two cores. One run at a time with the whole machine beats two runs
with a core each (about 950 against 2 x 410 images/s, measured with the bare
step), hence `--workers 1`.
"""

import ml_collections

NUM_EPOCHS = 15


def scaled_boundaries(num_epochs: int) -> tuple[int, ...]:
  """Schedule A's boundaries (31, 61, 91 of 150 epochs) scaled to ``num_epochs``."""
  return tuple(round(b * num_epochs / 150) for b in (31, 61, 91))


def get_study() -> ml_collections.ConfigDict:
  study = {}
  study["config"] = "train/configs/default.py"
  study["overrides"] = {
      "data.source": "folder:../shared/data/cifar10_jpeg.tar.gz",
      "model.name": "wrn-10-1",
      "num_epochs": NUM_EPOCHS,
      "schedule.name": "step",
      "schedule.boundaries_epochs": scaled_boundaries(NUM_EPOCHS),
      "progress": False,
  }
  study["arms"] = {
      "sgd-0.9": {"optimizer.name": "sgd", "optimizer.momentum": 0.9},
      "sgd-0.95": {"optimizer.name": "sgd", "optimizer.momentum": 0.95},
      "lcam-0.95/0.9": {"optimizer.name": "lcam",
                        "optimizer.beta_below": 0.95,
                        "optimizer.beta_above": 0.9},
      "lcam-0.9/0.95": {"optimizer.name": "lcam",
                        "optimizer.beta_below": 0.9,
                        "optimizer.beta_above": 0.95},
  }
  study["seeds"] = [0, 1, 2]
  study["baseline"] = "sgd-0.9"
  study["targets"] = [0.6, 0.7, 0.75]
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)
