"""The paper's experiments on one dataset, 3 seeds each, baselines included.

  python -m study run paper:cifar100 --workdir runs/paper_cifar100

WRN-28-10, batch 128, 150 epochs (`train/configs/reference.py`): schedule A with
the four momentum pairs of the paper (0.9/0.9 and 0.95/0.95 are plain SGD),
schedule B with the paper's pair for the dataset, and the tuned baselines the
reviewers asked for: SGD with Nesterov momentum 0.9 under schedule A and under
cosine decay. The argument is the dataset, `cifar10` (default) or `cifar100`;
another data source goes into the study's overrides (`data.source`).
"""

import ml_collections

SCHEDULE_B_PAIRS = {"cifar10": (0.9, 0.95), "cifar100": (0.93, 0.9)}


def _lcam(schedule: str, below: float, above: float) -> dict:
  return {"optimizer.name": "lcam", "schedule.name": schedule,
          "optimizer.beta_below": below, "optimizer.beta_above": above}


def get_study(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  if dataset not in SCHEDULE_B_PAIRS:
    raise ValueError(f"Unknown dataset {dataset!r}: use one of "
                     f"{list(SCHEDULE_B_PAIRS)}.")
  study = {}
  study["config"] = f"train/configs/reference.py:{dataset},A,0.9/0.9"
  study["overrides"] = {"progress": False}
  arms = {f"A-{below}/{above}": _lcam("step", below, above)
          for below, above in ((0.9, 0.9), (0.95, 0.95), (0.95, 0.9),
                               (0.9, 0.95))}
  below, above = SCHEDULE_B_PAIRS[dataset]
  arms[f"B-{below}/{above}"] = _lcam("exponential", below, above)
  nesterov = {"optimizer.name": "sgd", "optimizer.momentum": 0.9,
              "optimizer.nesterov": True}
  arms["nesterov-A"] = {**nesterov, "schedule.name": "step"}
  arms["nesterov-cosine"] = {**nesterov, "schedule.name": "cosine"}
  study["arms"] = arms
  study["seeds"] = [0, 1, 2]
  study["baseline"] = "A-0.9/0.9"
  study["targets"] = [0.8, 0.9, 0.95] if dataset == "cifar10" else [
      0.7, 0.75, 0.8]
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)
