"""The Shakespeare study's pilot: the spread that sizes stage 2.

  python -m study run shakespeare_pilot --workdir results/shakespeare_pilot --workers 2 --retries 5
  python -m study summarize results/shakespeare_pilot
  python study/studies/shakespeare_pilot.py plan   # stage 2's margin and seeds

Stage 1 (`shakespeare_tuning`) runs one seed per configuration, which gives
no spread to size stage 2 with. This pilot runs each family's stage-1 winner,
the registered rule's pick (``python study/studies/shakespeare_tuning.py
select``), unchanged: stage 1's recipe and overrides, 5 seeds (2000 to 2004;
stage 1 used 1000, stage 2 counts from 0), one XLA device per run. Like
stage 1 it is scored on the validation text and never evaluates the test
text (``data.eval_test=False``): nothing of stage 2's metric is seen before
stage 2 is registered. The validation text is as long as the test text
(55,770 characters) and from the same corpus, so its seed-to-seed spread
stands in for the test loss's; stage 2 reports the spread it finds.

The arms are derived when the study loads, from stage 1's committed folder
(``results/shakespeare_tuning``, or the folder given as ``shakespeare_pilot:
DIR``); loading fails with the reason while a family's pick is not final or
sits at its grid's edge.

Fixed before the first run of this pilot or of stage 2:

* Stage 2's margin: ±0.01 nats per character on the final test loss (about
  1% of perplexity: exp(0.01) = 1.010), for both primary comparisons, LCAM
  against tuned SGD and loss-controlled AdamW against tuned AdamW.
* Stage 2's seeds per arm: for each family, SGD (the ``sgd`` and ``lcam``
  winners) and AdamW (the ``adamw`` and ``lc_adamw`` winners), the pooled
  standard deviation of the final validation loss over its two arms' pilot
  runs (8 degrees of freedom with every run finished) gives the seeds for
  80% power of (i) the TOST at ±margin when the true difference is 0 and
  (ii) the two-sided test of a true difference of the margin, Welch's test,
  each at α = 0.025 (two primary comparisons; `study.report.
  seeds_for_margin`). Stage 2 takes the largest of the four counts, and at
  least 10. Above 16 the margin widens in steps of 0.005 nats until 16 seeds
  suffice, and stage 2 runs 16.
* A pilot run that diverges is reported and adds nothing to the spread; any
  other failure is retried from its checkpoint (``--retries 5``).

The pilot's summary compares the winners on the validation text; those
differences are not a result of the study (stage 1 chose the winners on the
same text, so they favour them).
"""

import os
import sys

import ml_collections

STUDIES = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, STUDIES)

import shakespeare_tuning  # noqa: E402  pylint: disable=g-import-not-at-top

REPO_ROOT = shakespeare_tuning.REPO_ROOT
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from study import cli  # noqa: E402
from study import definition  # noqa: E402
from study import report  # noqa: E402
from study import statistics  # noqa: E402

STAGE_1 = "results/shakespeare_tuning"
SEEDS = (2000, 2001, 2002, 2003, 2004)
# Stage 2's primary comparisons, each a family: (its LCAM-like winner,
# its tuned baseline), as stage 1 names the families.
PRIMARY_FAMILIES = {"SGD": ("lcam", "sgd"), "AdamW": ("lc_adamw", "adamw")}
MARGIN = 0.01  # nats per character
MARGIN_STEP = 0.005
FEWEST_SEEDS, MOST_SEEDS = 10, 16
ALPHA = statistics.ALPHA / len(PRIMARY_FAMILIES)


def winners(stage_1: str = STAGE_1) -> dict[str, str]:
  """Family -> stage 1's winner, once every family's pick is final.

  Raises:
    ValueError: a family has runs pending or its winner sits at its grid's
      smallest or largest rate.
  """
  selection = shakespeare_tuning.select(stage_1)["selection"]
  pending = [f for f, s in selection.items() if not s["complete"]]
  if pending:
    raise ValueError(f"Stage 1's pick of {', '.join(pending)} is not final "
                     f"(runs pending in {stage_1}): run shakespeare_tuning "
                     "first.")
  edges = [f for f, s in selection.items() if s["edge"]]
  if edges:
    raise ValueError(f"Stage 1's winners of {', '.join(edges)} sit at the "
                     "grid's edge: extend those families first (python "
                     "study/studies/shakespeare_tuning.py select).")
  return {family: s["winner"] for family, s in selection.items()}


def get_study(stage_1: str = STAGE_1) -> ml_collections.ConfigDict:
  tuning = definition.read_study(os.path.join(REPO_ROOT, stage_1))
  picks = winners(stage_1)
  study = {
      "config": tuning.config,
      "overrides": tuning.overrides.to_dict(),
      "arms": {arm: tuning.arms[arm].to_dict() for arm in picks.values()},
      "seeds": list(SEEDS),
      "baseline": picks["adamw"],
      "metric": "val_loss",
      "metric_direction": "lower",
      "targets": list(tuning.targets),
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)


def family_of(arm: str) -> str:
  """``"lc_adamw-lr0.002-0.95/0.9"`` -> ``"lc_adamw"``."""
  return arm.split("-lr")[0]


def stage_2_plan(summary: dict) -> dict:
  """Stage 2's margin and seeds by the rule above, from the pilot's summary.

  Raises:
    ValueError: the pilot has runs pending or failed.
  """
  if summary["unfinished"] or summary["failed"]:
    raise ValueError("The pilot has runs pending or failed: run "
                     "shakespeare_pilot until every run has finished.")
  by_family = {family_of(arm): arm for arm in summary["arms"]}
  spreads = {name: report.pooled_spread(summary, [by_family[f] for f in pair])
             for name, pair in PRIMARY_FAMILIES.items()}
  margin = MARGIN
  while True:
    counts = {name: report.seeds_for_margin(sd, margin, "welch", ALPHA)
              for name, (sd, _, _) in spreads.items()}
    needed = max(n if n is not None else statistics.MAX_SEEDS + 1
                 for pair in counts.values() for n in pair)
    if needed <= MOST_SEEDS:
      break
    margin = round(margin + MARGIN_STEP, 6)
  return {"margin": margin, "seeds": max(needed, FEWEST_SEEDS),
          "alpha": ALPHA,
          "families": {name: {"sd": sd, "degrees_of_freedom": dfs,
                              "arms": lines,
                              "tost_seeds": counts[name][0],
                              "difference_seeds": counts[name][1]}
                       for name, (sd, dfs, lines) in spreads.items()}}


def print_plan(workdir: str = "results/shakespeare_pilot") -> int:
  """Prints each family's spread and stage 2's margin and seeds."""
  summary, _ = report.summarize(os.path.join(REPO_ROOT, workdir))
  plan = stage_2_plan(summary)
  for name, family in plan["families"].items():
    print(f"{name}: pooled sd of the final val_loss {family['sd']:.5f} nats "
          f"({family['degrees_of_freedom']} degrees of freedom)")
    print("\n".join(family["arms"]))
    print(f"  seeds for 80% power at alpha {plan['alpha']:g}, Welch, margin "
          f"±{plan['margin']:g}: TOST {family['tost_seeds']}, a difference "
          f"of the margin {family['difference_seeds']}")
  widened = "" if plan["margin"] == MARGIN else (
      f" (widened from ±{MARGIN:g}: more than {MOST_SEEDS} seeds needed)")
  print(f"stage 2: margin ±{plan['margin']:g} nats{widened}, "
        f"{plan['seeds']} seeds per arm")
  return 0


if __name__ == "__main__":
  sys.exit(cli.study_file_command(sys.argv, {"plan": print_plan}))
