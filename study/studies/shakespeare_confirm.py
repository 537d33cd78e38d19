"""Stage 2 of the Shakespeare study: the tuned arms and their controls.

  python -m study run shakespeare_confirm --workdir results/shakespeare_confirm --workers 2 --retries 5
  python -m study summarize results/shakespeare_confirm
  python study/studies/shakespeare_confirm.py derive   # the values it takes
  python study/studies/shakespeare_confirm.py campaign   # all three stages

``campaign`` runs the regime's three stages in order from one checkout:
stage 1 with its grid extended by the rule until every winner is inside
(`shakespeare_tuning.next_spec`), the pilot, then this stage, each with
``python -m study run ... --workers 2 --retries 5`` (which writes its
summary), each reading the folders its predecessors wrote, so that every
run of the regime comes from one commit (run it from a checkout pinned
there). It stops at the first stage that does not finish, with that
stage's exit status; run again, it resumes where it stopped.

This file registers stage 2 by rule, before stage 1 (`shakespeare_tuning`)
or the pilot (`shakespeare_pilot`) has run: its arms, margin and seeds are
derived when the study loads, from those two committed folders
(``results/shakespeare_tuning`` and ``results/shakespeare_pilot``, or the
folders given as ``shakespeare_confirm:TUNING_DIR,PILOT_DIR``), and loading
says why while either is not final. The values it ran with are in its
``study.json``.

Stage 1's recipe and overrides (GPT-4-128, 4 epochs, warm-up and cosine, one
XLA device per run), scored on the test text (``data.eval_test=True``); the
metric is the final test loss in nats per character, lower is better. Eight
arms:

* SGD family, from stage 1's ``sgd`` and ``lcam`` winners:
  ``a-sgd``, tuned SGD; ``b-lcam``, tuned LCAM; ``c-sgd-mean-step``, SGD at
  (b)'s learning rate and weight decay with the fixed momentum whose step
  scale 1/(1-beta) is (b)'s mean one in its tuning run (the average over its
  epochs of f/(1-beta_below) + (1-f)/(1-beta_above), f the epoch's measured
  fraction of steps in the below phase; every epoch has as many steps);
  ``d-lcam-random-phases``, (b) with each step's phase drawn at random,
  below with (b)'s measured fraction of each epoch, each seed its own draws.
* AdamW family, from the ``adamw`` and ``lc_adamw`` winners:
  ``e-adamw``, tuned AdamW; ``f-lc-adamw``, tuned loss-controlled AdamW;
  ``g-adamw-mean-b1``, AdamW at (f)'s learning rate with the fixed ``b1``
  equal to (f)'s time-averaged one in its tuning run (the average over its
  epochs of f b1_below + (1-f) b1_above); ``h-lc-adamw-random-phases``, (f)
  with random phases at (f)'s measured fractions.

Comparisons on the final test loss, Welch's test: two primaries, (b)-(a)
and (f)-(e), Holm-adjusted together, each TOST at α = 0.025; secondary,
Holm-adjusted among themselves: (b)-(c), (b)-(d), (f)-(g), (f)-(h). The
margin and the seeds (0 to n-1) are the pilot's plan by its registered rule
(`shakespeare_pilot.stage_2_plan`: ±0.01 nats unless more than 16 seeds
would be needed; at least 10 seeds).
"""

from collections.abc import Callable
import json
import os
import subprocess
import sys

import ml_collections

STUDIES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, STUDIES)

import lcam_confirm  # noqa: E402  pylint: disable=g-import-not-at-top
import shakespeare_pilot  # noqa: E402  pylint: disable=g-import-not-at-top
import shakespeare_tuning  # noqa: E402  pylint: disable=g-import-not-at-top

REPO_ROOT = shakespeare_pilot.REPO_ROOT

# pylint: disable=g-import-not-at-top,wrong-import-position
from study import arms  # noqa: E402
from study import cli  # noqa: E402
from study import definition  # noqa: E402
from study import report  # noqa: E402
from train import record  # noqa: E402

PILOT = "results/shakespeare_pilot"
CONFIRM = "results/shakespeare_confirm"
COMPARISONS = (("b-lcam", "a-sgd"), ("f-lc-adamw", "e-adamw"),
               ("b-lcam", "c-sgd-mean-step"),
               ("b-lcam", "d-lcam-random-phases"),
               ("f-lc-adamw", "g-adamw-mean-b1"),
               ("f-lc-adamw", "h-lc-adamw-random-phases"))


def mean_b1(fractions, b1_below: float, b1_above: float) -> float:
  """The time-averaged ``b1`` over epochs of equal length.

  >>> mean_b1([0.5, 1.0], 0.95, 0.9)
  0.9375
  """
  return round(sum(f * b1_below + (1 - f) * b1_above for f in fractions)
               / len(fractions), 4)


def b1_pair(arm: dict) -> tuple[float, float]:
  """``(b1 below, b1 at or above)`` of a loss-controlled AdamW arm."""
  below, above = json.loads(arm["optimizer.loss_control"])["b1"]
  return below, above


def derive(folders: str = "") -> dict:
  """The winners, their tuning runs' measured phases, and the pilot's plan.

  Args:
    folders: ``"TUNING_DIR,PILOT_DIR"``; empty for the committed ones.

  Raises:
    ValueError: stage 1 or the pilot is not final.
  """
  tuning_dir, _, pilot_dir = folders.partition(",")
  tuning_dir = tuning_dir or shakespeare_pilot.STAGE_1
  pilot_dir = pilot_dir or PILOT
  tuning = definition.read_study(os.path.join(REPO_ROOT, tuning_dir))
  picks = shakespeare_pilot.winners(tuning_dir)
  pilot_summary, _ = report.summarize(os.path.join(REPO_ROOT, pilot_dir))
  if sorted(pilot_summary["arms"]) != sorted(picks.values()):
    raise ValueError(f"The pilot in {pilot_dir} ran "
                     f"{sorted(pilot_summary['arms'])}, not stage 1's "
                     f"winners {sorted(picks.values())}.")
  plan = shakespeare_pilot.stage_2_plan(pilot_summary)

  def measured(family):
    run_dir = definition.run_dir(os.path.join(REPO_ROOT, tuning_dir),
                                 picks[family], shakespeare_tuning.SEED)
    fractions = arms.below_fractions(record.load_run(run_dir))
    return tuple(round(f, 4) for f in fractions)

  lcam = tuning.arms[picks["lcam"]].to_dict()
  lc_adamw = tuning.arms[picks["lc_adamw"]].to_dict()
  lcam_fractions, lc_adamw_fractions = measured("lcam"), measured("lc_adamw")
  return {
      "recipe": {"config": tuning.config,
                 "overrides": tuning.overrides.to_dict(),
                 "targets": list(tuning.targets)},
      "arms": {family: tuning.arms[arm].to_dict()
               for family, arm in picks.items()},
      "lcam_below_fractions": lcam_fractions,
      "mean_step_momentum": round(lcam_confirm.mean_step_momentum(
          lcam_fractions, lcam["optimizer.beta_below"],
          lcam["optimizer.beta_above"]), 4),
      "lc_adamw_below_fractions": lc_adamw_fractions,
      "mean_b1": mean_b1(lc_adamw_fractions, *b1_pair(lc_adamw)),
      "margin": plan["margin"],
      "seeds": plan["seeds"],
  }


def confirmation_arms(derived: dict) -> dict[str, dict]:
  """Arms (a) to (h) from `derive`'s values."""
  winners = derived["arms"]
  lcam, lc_adamw = winners["lcam"], winners["lc_adamw"]
  return {
      "a-sgd": winners["sgd"],
      "b-lcam": lcam,
      "c-sgd-mean-step": {
          "optimizer.name": "sgd",
          "optimizer.momentum": derived["mean_step_momentum"],
          "optimizer.weight_decay": lcam["optimizer.weight_decay"],
          "schedule.learning_rate": lcam["schedule.learning_rate"]},
      "d-lcam-random-phases": {
          **lcam, "optimizer.phases": "random",
          "optimizer.below_probability": derived["lcam_below_fractions"]},
      "e-adamw": winners["adamw"],
      "f-lc-adamw": lc_adamw,
      "g-adamw-mean-b1": {
          "optimizer.name": "adamw", "optimizer.b1": derived["mean_b1"],
          "optimizer.weight_decay": lc_adamw["optimizer.weight_decay"],
          "schedule.learning_rate": lc_adamw["schedule.learning_rate"]},
      "h-lc-adamw-random-phases": {
          **lc_adamw, "optimizer.phases": "random",
          "optimizer.below_probability": derived["lc_adamw_below_fractions"]},
  }


def get_study(folders: str = "") -> ml_collections.ConfigDict:
  derived = derive(folders)
  recipe = derived["recipe"]
  study = {
      "config": recipe["config"],
      "overrides": {**recipe["overrides"], "data.eval_test": True},
      "arms": confirmation_arms(derived),
      "seeds": list(range(derived["seeds"])),
      "baseline": "a-sgd",
      "metric": "test_loss",
      "metric_direction": "lower",
      "targets": recipe["targets"],
      "comparisons": [list(pair) for pair in COMPARISONS],
      "primary_comparisons": 2,
      "primary_test": "welch",
      "equivalence_margin": derived["margin"],
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


def print_derived(folders: str = "") -> int:
  print(json.dumps(derive(folders), indent=2))
  return 0


def run_stage(spec: str, workdir: str) -> int:
  """``python -m study run SPEC --workdir DIR --workers 2 --retries 5``."""
  command = [sys.executable, "-m", "study", "run", spec, "--workdir", workdir,
             "--workers", "2", "--retries", "5"]
  print("$ " + " ".join(command[1:]), flush=True)
  return subprocess.call(command, cwd=REPO_ROOT)


def campaign(results: str = "results",
             run: Callable[[str, str], int] = run_stage) -> int:
  """Runs stage 1 (extended until its winners are inside), the pilot and
  stage 2 into ``results``'s three folders; the first non-zero status of
  ``run`` (a stage that did not finish) stops it."""
  tuning_dir, pilot_dir, confirm_dir = (
      os.path.join(results, os.path.basename(folder))
      for folder in (shakespeare_pilot.STAGE_1, PILOT, CONFIRM))
  previous = None
  while spec := shakespeare_tuning.next_spec(tuning_dir):
    if spec == previous:
      raise ValueError(f"{spec} finished, yet its selection still asks for "
                       "it: see python study/studies/shakespeare_tuning.py "
                       "select.")
    if status := run(spec, tuning_dir):
      return status
    previous = spec
  for spec, workdir in ((f"shakespeare_pilot:{tuning_dir}", pilot_dir),
                        (f"shakespeare_confirm:{tuning_dir},{pilot_dir}",
                         confirm_dir)):
    if status := run(spec, workdir):
      return status
  return 0


if __name__ == "__main__":
  sys.exit(cli.study_file_command(
      sys.argv, {"derive": print_derived, "campaign": campaign}))
