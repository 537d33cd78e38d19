"""The paper's experiments: WRN-28-10, CIFAR-10/100, schedules A and B.

  --config train/configs/reference.py:DATASET,SCHEDULE,BELOW/ABOVE

DATASET is cifar10 or cifar100; SCHEDULE is A (x0.2 after epochs 31, 61, 91)
or B (0.1 for 31 epochs, then x0.99985 before every step); BELOW/ABOVE is the
momentum pair (beta_below/beta_above). The pairs of the paper:

  A: 0.9/0.9 and 0.95/0.95 (plain SGD baselines), 0.95/0.9 ("sparse"
     priority), 0.9/0.95 ("non-sparse" priority)
  B: cifar10 0.9/0.95, cifar100 0.93/0.9

With no argument: cifar10,A,0.95/0.9.
"""

import ml_collections

from train.configs import default

SCHEDULES = {"A": "step", "B": "exponential"}


def get_config(spec: str = "cifar10,A,0.95/0.9") -> ml_collections.ConfigDict:
  """Returns the reference experiment named by `spec`."""
  try:
    dataset, schedule, pair = (part.strip() for part in spec.split(","))
    beta_below, beta_above = (float(b) for b in pair.split("/"))
  except ValueError:
    raise ValueError(
        f"Bad reference experiment {spec!r}: expected DATASET,SCHEDULE,"
        "BELOW/ABOVE, e.g. 'cifar100,B,0.93/0.9'.") from None
  if dataset not in ("cifar10", "cifar100") or schedule not in SCHEDULES:
    raise ValueError(
        f"Bad reference experiment {spec!r}: DATASET is cifar10 or cifar100, "
        "SCHEDULE is A or B.")
  config = default.get_config()
  config.data.source = f"tfds:{dataset}"
  config.schedule.name = SCHEDULES[schedule]
  config.optimizer.beta_below = beta_below
  config.optimizer.beta_above = beta_above
  return config
