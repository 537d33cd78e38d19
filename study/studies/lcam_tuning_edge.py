"""Stage 1b of the decisive LCAM study: tuning past stage 1's largest rate.

  python -m study run lcam_tuning_edge --workdir results/lcam_tuning_edge --retries 5
  python -m study summarize results/lcam_tuning_edge
  python study/studies/lcam_tuning_edge.py   # the repeat against stage 1
  python study/studies/lcam_tuning_edge.py select   # the rule's pick

Both winners of stage 1 (`lcam_tuning`, `results/lcam_tuning/`) sit at its
largest learning rate, 0.2, so the optimum may lie beyond it. This study
adds learning rates 0.4 and 0.8 to both grids, with stage 1's recipe, split
and seed unchanged (the overrides below are stage 1's, field for field):
WRN-10-1, batch 128, coupled weight decay 5e-4, 15 epochs, schedule A scaled
to 15 epochs (x0.2 after epochs 3, 6 and 9), trained on 45,000 of the 50,000
training examples and scored on the 5,000 held out (the test set is never
evaluated), seed 1000, 4 XLA devices on the 2-core host.

* SGD: learning rate in {0.4, 0.8} x momentum in {0.9, 0.95};
* LCAM: learning rate in {0.4, 0.8} x pair (beta_below/beta_above) in
  {0.95/0.9, 0.9/0.95};
* ``repeat-lcam-lr0.2-0.95/0.9``: stage 1's LCAM winner again, unchanged, to
  check that this commit reproduces stage 1's numbers (below). It takes no
  part in the selection.

Rule, fixed before the first run:

* Each family's winner is its configuration with the highest final
  validation accuracy (``val_accuracy`` after the last epoch) over the union
  of stage 1's grid and this one; a tie (equal to 1e-9) goes to the lower
  learning rate, then to the lower momentum (SGD) or to the pair 0.95/0.9
  (LCAM), as in stage 1.
* Divergence is a result, not a failure. ``on_nonfinite_loss="stop"``: a
  run whose training loss turns non-finite stops, records ``"kind":
  "diverged"`` in its metrics.jsonl, and is not retried (by this study's
  runner or a later one). It ranks last in its family and is reported as
  diverged. A run that ends with finite but poor numbers ranks by them.
  Any other failure (a stalled device, a killed process) is retried from
  its checkpoint up to 5 times (``--retries 5``), which changes no number.
* If a family's winner is at its largest learning rate again, that family's
  grid is extended by doubling the rate (1.6, then 3.2, ...), with both of
  its momenta or pairs, one rate at a time, until its winner is inside the
  grid; a new rate whose runs all diverge puts the winner inside. The study
  argument names each extended family's largest rate:
  ``lcam_tuning_edge:sgd=1.6`` adds SGD at 1.6, ``:sgd=3.2,lcam=1.6`` more.
  The rates are only along the learning rate: momentum and pairs stay as in
  stage 1.
* The union is valid only on the same numbers: the repeat must reproduce
  every loss, accuracy and phase field of stage 1's record of that
  configuration (``python study/studies/lcam_tuning_edge.py`` prints the
  comparison). If it does not, stage 1's twelve configurations are run again
  at this study's commit and the union uses those.

The repeat did not reproduce stage 1's record (``python
study/studies/lcam_tuning_edge.py``: 349 of 975 values differ, from the loss
of step 50 on; its final validation accuracy is 74.56 % against 74.54 %). So,
by the rule above, stage 1's twelve configurations run again at this study's
commit (3c60214), before any of them is read, with stage 1's own study file
(unchanged at that commit since stage 1) and seed:

  python -m study run lcam_tuning --workdir results/lcam_tuning_rerun --retries 5

(at 3c60214 the command is ``python -m train.study``). The union is then
this study's grid and ``results/lcam_tuning_rerun``, all from one commit; the
rerun's ``lcam-lr0.2-0.95/0.9`` must equal the repeat bit for bit (the same
configuration at the same commit).

Stage 2 (`lcam_confirm`) stands if neither winner moves. If one moves, a new
confirmation with the moved winner(s) and the arms that depend on them is
pre-registered before its first run, in the form of stage 2.
"""

import json
import math
import os
import sys

from flax import traverse_util
import ml_collections

STUDIES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, STUDIES)

# Stage 1's recipe, arm names, seed and second axes.
import lcam_tuning  # noqa: E402  pylint: disable=g-import-not-at-top

LEARNING_RATES = (0.4, 0.8)
REPEAT = {"learning_rate": 0.2, "pair": (0.95, 0.9)}
REPEAT_ARM = "repeat-lcam-lr0.2-0.95/0.9"
STAGE_1 = "results/lcam_tuning"
STAGE_1_RERUN = "results/lcam_tuning_rerun"
REPO_ROOT = os.path.dirname(os.path.dirname(STUDIES))


def family_rates(extend: str = "") -> dict[str, tuple[float, ...]]:
  """Each family's learning rates: 0.4 and 0.8, doubled up to ``extend``'s.

  >>> family_rates("sgd=3.2")
  {'sgd': (0.4, 0.8, 1.6, 3.2), 'lcam': (0.4, 0.8)}
  """
  largest = {"sgd": LEARNING_RATES[-1], "lcam": LEARNING_RATES[-1]}
  for item in filter(None, extend.split(",")):
    family, _, rate = item.partition("=")
    if family not in largest:
      raise ValueError(f"Unknown family {family!r} in {extend!r}: use "
                       "sgd=RATE or lcam=RATE, e.g. 'sgd=1.6'.")
    largest[family] = float(rate)
  rates = {}
  for family, top in largest.items():
    family_list = list(LEARNING_RATES)
    while family_list[-1] < top - 1e-9:
      family_list.append(round(family_list[-1] * 2, 6))
    if not math.isclose(family_list[-1], top):
      raise ValueError(f"{family}={top}: the rates double from 0.8 (1.6, "
                       "3.2, ...).")
    rates[family] = tuple(family_list)
  return rates


def get_study(extend: str = "") -> ml_collections.ConfigDict:
  rates = family_rates(extend)
  sgd = [lcam_tuning.sgd_arm(lr, m) for lr in rates["sgd"]
         for m in lcam_tuning.MOMENTA]
  lcam = [lcam_tuning.lcam_arm(lr, p) for lr in rates["lcam"]
          for p in lcam_tuning.PAIRS]
  repeat = (REPEAT_ARM, lcam_tuning.lcam_arm(REPEAT["learning_rate"],
                                             REPEAT["pair"])[1])
  stage_1 = lcam_tuning.get_study()
  study = {
      "config": stage_1.config,
      "overrides": dict(stage_1.overrides.to_dict(), on_nonfinite_loss="stop"),
      "arms": dict(sgd + lcam + [repeat]),
      "seeds": [lcam_tuning.SEED],
      "baseline": REPEAT_ARM,
      "metric": stage_1.metric,
      "targets": list(stage_1.targets),
      "families": {"sgd": [name for name, _ in sgd],
                   "lcam": [name for name, _ in lcam]},
      # The selection is over these families together with stage 1's grid
      # run again at this commit.
      "selection_union": STAGE_1_RERUN,
      "selection": (
          "Per family, over stage 1's grid and this one together, the arm "
          "with the highest final val_accuracy; a diverged run ranks last; a "
          "tie (equal to 1e-9) goes to the lower learning rate, then to the "
          "lower momentum (SGD) or to the pair 0.95/0.9 (LCAM). A winner at "
          "its family's largest rate extends that family by doubling the "
          "rate."),
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


def main(workdir: str = "results/lcam_tuning_edge") -> int:
  """Prints the repeat's comparison with stage 1's record; 0 if identical."""
  name = REPEAT_ARM.replace("/", "_").removeprefix("repeat-")
  ours = os.path.join(REPO_ROOT, workdir, REPEAT_ARM.replace("/", "_"),
                      f"seed{lcam_tuning.SEED}")
  theirs = os.path.join(REPO_ROOT, STAGE_1, name,
                        f"seed{lcam_tuning.SEED}")
  sys.path.insert(0, REPO_ROOT)
  from train import record  # pylint: disable=g-import-not-at-top
  compared, differences = record.differences(ours, theirs)
  configs = []
  for path in (ours, theirs):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
      configs.append(traverse_util.flatten_dict(json.load(f), sep="."))
  config_fields = sorted(
      field for field in configs[0].keys() | configs[1].keys()
      if configs[0].get(field, "missing") != configs[1].get(field, "missing"))
  print(f"{REPEAT_ARM} against {STAGE_1}/{name}/seed{lcam_tuning.SEED}: "
        f"{compared} loss, accuracy, phase and schedule values compared, "
        f"{len(differences)} differ.")
  for line in differences[:20]:
    print("  " + line)
  print("config.json fields that differ: " + (", ".join(
      f"{field} ({configs[0].get(field, 'missing')} against "
      f"{configs[1].get(field, 'missing')})" for field in config_fields)
      or "none"))
  return 1 if differences else 0


def select(edge: str = "results/lcam_tuning_edge",
           stage_1: str = STAGE_1_RERUN) -> dict:
  """The rule's selection over stage 1's grid and this one together.

  Each family's arms in the rule's order (stage 1's rates, then this
  study's, each rate with its momenta or pairs in the order of stage 1), so
  that a tie goes to the first; a diverged run ranks last; only the largest
  rate extends the grid (`study.tuning.select`).
  """
  sys.path.insert(0, REPO_ROOT)
  from study import tuning  # pylint: disable=g-import-not-at-top
  return tuning.select([os.path.join(REPO_ROOT, folder)
                        for folder in (stage_1, edge)], edges=("largest",))


def print_selection(edge: str = "results/lcam_tuning_edge",
                    stage_1: str = STAGE_1_RERUN) -> int:
  """Prints every configuration's final validation accuracy and the rule's
  pick; 0 once both grids are complete with both winners inside."""
  chosen = select(edge, stage_1)
  from study import tuning  # pylint: disable=g-import-not-at-top
  return tuning.print_selection(chosen, lambda value: f"{100 * value:.2f} %")


if __name__ == "__main__":
  if sys.argv[1:2] == ["select"]:
    sys.path.insert(0, REPO_ROOT)
    from study import cli  # pylint: disable=g-import-not-at-top
    sys.exit(cli.study_file_command(sys.argv, {"select": print_selection}))
  sys.exit(main(*sys.argv[1:]))
