"""Stage 2 of the decisive LCAM study: the tuned arms and their controls.

  python -m study run lcam_confirm --workdir results/lcam_confirm --retries 5
  python -m study summarize results/lcam_confirm
  python study/studies/lcam_confirm.py   # derives the values below from stage 1

Stage 1 (`lcam_tuning`, `results/lcam_tuning/`) tuned SGD and LCAM on 5,000
held-out training examples, one seed per configuration, and chose each
family's winner by the rule committed with it before its first run. This
study takes the two winners, unchanged, to all 50,000 training examples and
the test set, with 13 seeds per arm (0 to 12; stage 1 used seed 1000):

* ``a-sgd``: tuned SGD, stage 1's SGD winner (lr 0.2, momentum 0.95).
* ``b-lcam``: tuned LCAM, stage 1's LCAM winner (lr 0.2, 0.95/0.9).
* ``c-sgd-mean-step``: SGD at (b)'s learning rate with the fixed momentum
  whose step scale 1/(1-beta) is (b)'s mean one in stage 1: the average over
  its 15 epochs (352 steps each) of f/(1-0.95) + (1-f)/(1-0.9), f the
  epoch's measured fraction of steps in the below phase. Is LCAM more than an
  intermediate momentum?
* ``d-lcam-random-phases``: (b) with each step's phase drawn at random
  (``phases="random"``), below with (b)'s measured fraction of each epoch:
  the same mix of momenta without the loss signal. A placebo. Each seed draws
  its own phases (``phase_seed`` is the run's seed).
* ``e-lcam-8-epochs``, ``f-sgd-8-epochs``: (b) and (a) in 8 epochs, schedule
  A's 15-epoch boundaries (3, 6, 9) scaled to (1.6, 3.2, 4.8), at the
  learning rates tuned for 15 epochs (none was tuned for 8). The paper
  claims tuned-SGD accuracy in about half the epochs: (e) against (a).

Comparisons, the first primary: (b)-(a); then (b)-(c), (b)-(d), (e)-(a) and
(e)-(f), all on final test accuracy, Welch's test, with an equivalence test
(TOST) at ±0.6 points. The margin and the 13 seeds were fixed from study 1's
spread (`python -m study power results/cifar10_cpu --margin 0.006`) in
README.md, commit 5c5602a, on 2 December 2026 at 06:23 UTC: about 13 minutes
after stage 1's first run started, and before any run of this study.

The values below are literals, copied from `derive()` on the committed
stage 1 (rounded to 4 decimals); tests/test_study.py checks that they agree.
"""

import json
import os
import sys

import ml_collections

NUM_EPOCHS = 15
SHORT_EPOCHS = 8
SEEDS = tuple(range(13))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STAGE_1 = os.path.join(REPO_ROOT, "results", "lcam_tuning")
STAGE_1_SEED = 1000

# From stage 1 (`derive()`).
SGD = {"learning_rate": 0.2, "momentum": 0.95}
LCAM = {"learning_rate": 0.2, "beta_below": 0.95, "beta_above": 0.9}
BELOW_FRACTIONS = (
    0.9688, 0.7244, 0.5909, 0.6648, 0.5284,
    0.5227, 0.5994, 0.5199, 0.5085, 0.5114,
    0.5398, 0.483, 0.5199, 0.5455, 0.5284)
MEAN_STEP_MOMENTUM = 0.9369


def scaled_boundaries(num_epochs: int) -> tuple[float, ...]:
  """Schedule A's boundaries (31, 61, 91 of 150) at 15 epochs, then scaled."""
  fifteen = tuple(round(b * NUM_EPOCHS / 150) for b in (31, 61, 91))
  if num_epochs == NUM_EPOCHS:
    return fifteen
  return tuple(round(b * num_epochs / NUM_EPOCHS, 1) for b in fifteen)


def mean_step_momentum(fractions, beta_below: float, beta_above: float
                       ) -> float:
  """The fixed momentum whose 1/(1-beta) is the epochs' mean one.

  >>> round(mean_step_momentum([0.5], 0.95, 0.9), 4)
  0.9333
  """
  scale = sum(f / (1 - beta_below) + (1 - f) / (1 - beta_above)
              for f in fractions) / len(fractions)
  return 1 - 1 / scale


def measured_fractions(run_dir: str) -> tuple[float, ...]:
  """The below-phase fraction of each epoch of the LCAM run in ``run_dir``."""
  sys.path.insert(0, REPO_ROOT)
  from study import arms  # pylint: disable=g-import-not-at-top
  from train import record  # pylint: disable=g-import-not-at-top
  return arms.below_fractions(record.load_run(run_dir))


def confirmation_arms(sgd: dict, lcam: dict, mean_step: float,
                      fractions: tuple[float, ...]) -> dict[str, dict]:
  """Arms (a) to (f) of a confirmation from the tuned winners: ``sgd``
  (``learning_rate``, ``momentum``), ``lcam`` (``learning_rate``,
  ``beta_below``, ``beta_above``), (c)'s momentum and (d)'s fractions."""
  sgd = {"optimizer.name": "sgd", "optimizer.momentum": sgd["momentum"],
         "schedule.learning_rate": sgd["learning_rate"]}
  lcam = {"optimizer.name": "lcam", "optimizer.beta_below": lcam["beta_below"],
          "optimizer.beta_above": lcam["beta_above"],
          "schedule.learning_rate": lcam["learning_rate"]}
  short = {"num_epochs": SHORT_EPOCHS,
           "schedule.boundaries_epochs": scaled_boundaries(SHORT_EPOCHS)}
  return {
      "a-sgd": sgd,
      "b-lcam": lcam,
      "c-sgd-mean-step": {
          "optimizer.name": "sgd", "optimizer.momentum": mean_step,
          "schedule.learning_rate": lcam["schedule.learning_rate"]},
      "d-lcam-random-phases": {
          **lcam, "optimizer.phases": "random",
          "optimizer.below_probability": fractions},
      "e-lcam-8-epochs": {**lcam, **short},
      "f-sgd-8-epochs": {**sgd, **short},
  }


def derive(stage_1: str = STAGE_1) -> dict:
  """Stage 1's winners, and (b)'s phase fractions and mean-step momentum.

  Raises:
    ValueError: while a family of stage 1 has not finished.
  """
  with open(os.path.join(stage_1, "summary.json"), encoding="utf-8") as f:
    selection = json.load(f)["selection"]
  with open(os.path.join(stage_1, "study.json"), encoding="utf-8") as f:
    arms = json.load(f)["arms"]
  incomplete = [family for family, s in selection.items() if not s["complete"]]
  if incomplete:
    raise ValueError(f"Stage 1 has not finished its families {incomplete}: "
                     "run `python -m study run lcam_tuning`.")
  sgd = arms[selection["sgd"]["winner"]]
  lcam = arms[selection["lcam"]["winner"]]
  fractions = measured_fractions(os.path.join(
      stage_1, selection["lcam"]["winner"].replace("/", "_"),
      f"seed{STAGE_1_SEED}"))
  below, above = lcam["optimizer.beta_below"], lcam["optimizer.beta_above"]
  return {
      "sgd": {"learning_rate": sgd["schedule.learning_rate"],
              "momentum": sgd["optimizer.momentum"]},
      "lcam": {"learning_rate": lcam["schedule.learning_rate"],
               "beta_below": below, "beta_above": above},
      "below_fractions": fractions,
      "mean_step_momentum": mean_step_momentum(fractions, below, above),
  }


def get_study() -> ml_collections.ConfigDict:
  arms = confirmation_arms(SGD, LCAM, MEAN_STEP_MOMENTUM, BELOW_FRACTIONS)
  study = {
      "config": "train/configs/default.py",
      "overrides": {
          "data.source": "folder:../shared/data/cifar10_jpeg.tar.gz",
          "model.name": "wrn-10-1",
          "num_epochs": NUM_EPOCHS,
          "schedule.name": "step",
          "schedule.boundaries_epochs": scaled_boundaries(NUM_EPOCHS),
          "host_devices": 4,
          "progress": False,
      },
      "arms": arms,
      "seeds": list(SEEDS),
      "baseline": "a-sgd",
      "metric": "test_accuracy",
      "targets": [0.6, 0.7, 0.75],
      "comparisons": [["b-lcam", "a-sgd"], ["b-lcam", "c-sgd-mean-step"],
                      ["b-lcam", "d-lcam-random-phases"],
                      ["e-lcam-8-epochs", "a-sgd"],
                      ["e-lcam-8-epochs", "f-sgd-8-epochs"]],
      "primary_test": "welch",
      "equivalence_margin": 0.006,
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


if __name__ == "__main__":
  print(json.dumps(derive(), indent=2))
