"""Stage 2b of the decisive LCAM study: stage 2 again with the moved winners.

  python -m study run lcam_confirm_edge --workdir results/lcam_confirm_edge --retries 5
  python -m study summarize results/lcam_confirm_edge
  python study/studies/lcam_confirm_edge.py   # derives the values below

Stage 1b (`lcam_tuning_edge`) extended stage 1's grids to lr 0.4 and 0.8;
over stage 1's grid run again at stage 1b's commit (`results/
lcam_tuning_rerun`) and stage 1b's together, the registered rule (`python
study/studies/lcam_tuning_edge.py select`) moved both winners from lr 0.2 to
lr 0.4, inside the extended grids:

* SGD: lr 0.4, momentum 0.9 (stage 2 had lr 0.2, momentum 0.95);
* LCAM: lr 0.4, pair 0.9/0.95 (beta_below 0.9, beta_above 0.95; stage 2 had
  lr 0.2, 0.95/0.9).

Every arm of stage 2 depends on a winner, so every arm moves and none reuses
stage 2's runs. This study is stage 2 (`lcam_confirm`) with the new winners,
in its form, field for field: WRN-10-1 on all 50,000 training examples,
scored on the test set, 13 seeds per arm (0 to 12), schedule A scaled to 15
epochs, 4 XLA devices:

* ``a-sgd``: tuned SGD (lr 0.4, momentum 0.9).
* ``b-lcam``: tuned LCAM (lr 0.4, 0.9/0.95).
* ``c-sgd-mean-step``: SGD at (b)'s rate with the fixed momentum whose step
  scale 1/(1-beta) is (b)'s mean one in its tuning run: the average over its
  15 epochs of f/(1-beta_below) + (1-f)/(1-beta_above), f the epoch's
  measured fraction of steps in the below phase.
* ``d-lcam-random-phases``: (b) with each step's phase drawn at random,
  below with (b)'s measured fraction of each epoch; each seed draws its own.
* ``e-lcam-8-epochs``, ``f-sgd-8-epochs``: (b) and (a) in 8 epochs, the
  boundaries scaled to (1.6, 3.2, 4.8), at the rates tuned for 15 epochs.

Comparisons, the first primary: (b)-(a); then (b)-(c), (b)-(d), (e)-(a) and
(e)-(f), on final test accuracy, Welch's test, TOST at ±0.6 points: stage
2's comparisons, test, margin and seeds, unchanged. Every run comes from the
commit that registers this file, with its own pinned checkout.

The values below are literals copied from `derive()` (rounded to 4
decimals); tests/test_study.py checks that they agree with the committed
tuning runs.
"""

import json
import os
import sys

import ml_collections

STUDIES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, STUDIES)

import lcam_confirm  # noqa: E402  pylint: disable=g-import-not-at-top
import lcam_tuning_edge  # noqa: E402  pylint: disable=g-import-not-at-top

TUNING_SEED = 1000

# From the tuning runs (`derive()`).
SGD = {"learning_rate": 0.4, "momentum": 0.9}
LCAM = {"learning_rate": 0.4, "beta_below": 0.9, "beta_above": 0.95}
BELOW_FRACTIONS = (
    0.9631, 0.696, 0.5795, 0.6818, 0.5085,
    0.5028, 0.6051, 0.517, 0.4886, 0.554,
    0.5256, 0.483, 0.5455, 0.5227, 0.5256)
MEAN_STEP_MOMENTUM = 0.9296


def _winner_run(arm: str) -> str:
  """The tuning run of ``arm``: in stage 1b's folder or the rerun's."""
  for folder in ("results/lcam_tuning_edge", lcam_tuning_edge.STAGE_1_RERUN):
    path = os.path.join(lcam_tuning_edge.REPO_ROOT, folder,
                        arm.replace("/", "_"), f"seed{TUNING_SEED}")
    if os.path.isdir(path):
      return path
  raise FileNotFoundError(f"No tuning run of {arm}.")


def _run_config(arm: str) -> dict:
  with open(os.path.join(_winner_run(arm), "config.json"),
            encoding="utf-8") as f:
    return json.load(f)


def derive() -> dict:
  """The rule's winners, and (b)'s phase fractions and mean-step momentum.

  Raises:
    ValueError: while a family's selection is not final.
  """
  chosen = lcam_tuning_edge.select()
  selection = chosen["selection"]
  pending = [f for f, s in selection.items() if not s["complete"]]
  if pending:
    raise ValueError(f"The selection of {pending} is not final: runs pending.")
  edges = [f for f, s in selection.items() if s["edge"]]
  if edges:
    raise ValueError(f"The winners of {edges} sit at the largest rate: "
                     "extend those families first.")
  sgd_arm, lcam_arm = selection["sgd"]["winner"], selection["lcam"]["winner"]
  fractions = lcam_confirm.measured_fractions(_winner_run(lcam_arm))
  sgd, lcam = map(_run_config, (sgd_arm, lcam_arm))
  below = lcam["optimizer"]["beta_below"]
  above = lcam["optimizer"]["beta_above"]
  return {
      "sgd": {"learning_rate": sgd["schedule"]["learning_rate"],
              "momentum": sgd["optimizer"]["momentum"]},
      "lcam": {"learning_rate": lcam["schedule"]["learning_rate"],
               "beta_below": below, "beta_above": above},
      "below_fractions": fractions,
      "mean_step_momentum": lcam_confirm.mean_step_momentum(
          fractions, below, above),
  }


def get_study() -> ml_collections.ConfigDict:
  study = lcam_confirm.get_study().to_dict()
  study["arms"] = lcam_confirm.confirmation_arms(
      SGD, LCAM, MEAN_STEP_MOMENTUM, BELOW_FRACTIONS)
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


if __name__ == "__main__":
  print(json.dumps(derive(), indent=2))
