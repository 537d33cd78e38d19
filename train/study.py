"""Studies: arms x seeds of training runs, run anywhere, and honest statistics.

  python -m train.study run STUDY --workdir DIR [--workers N] [--arms A,B]
      [--seeds 0,1] [--retries K]
  python -m train.study commands STUDY --workdir DIR
  python -m train.study summarize DIR

STUDY is a study file (``train/studies/NAME.py[:ARG]``, or just ``NAME``) whose
``get_study()`` returns a ``ConfigDict`` with:

* ``config``: the training config every run starts from, as ``--config`` takes
  it (``train/configs/reference.py:cifar10,A,0.9/0.9``);
* ``overrides``: ``{"dotted.field": value}`` applied to every run;
* ``arms``: ``{name: overrides}``, the experiments to compare;
* ``seeds``: the seeds each arm runs with; ``baseline``: the arm the others
  are compared with; ``targets``: values of the metric for "epochs to reach";

and optionally, for the statistics (`train.study_statistics`):

* ``metric``: the epoch-record field the summary ranks and compares on
  (default ``test_accuracy``; a tuning study uses ``val_accuracy``, and its
  summary then shows no test accuracy at all);
* ``comparisons``: ``[[arm, against], ...]``, the first the primary one
  (default: every arm against ``baseline``);
* ``primary_test``: ``"paired"`` (default) or ``"welch"``;
* ``equivalence_margin``: in the metric's units (0.005 is half a point), for
  an equivalence test (TOST); none without it.

Each (arm, seed) is an ordinary ``python -m train`` run in its own workdir,
``DIR/<arm>/seed<k>`` (a ``/`` in an arm's name becomes ``_``), so the loop's
exact resume applies: re-running a killed study continues every unfinished run
where it stopped and skips the finished ones. ``run`` keeps N runs going at once
(on a CPU host the cores are split between them; with several GPUs each run
gets its own); ``commands`` prints one shell command per pending run for any
other scheduler. ``summarize`` reads the runs and writes ``summary.md``,
``summary.json`` and ``curves.png`` into DIR (the statistics are in
`train.study_statistics`).
"""

import argparse
from collections.abc import Sequence
import dataclasses
import json
import os
import sys
from typing import Any

import ml_collections

from train import config as config_lib
from train import runs as runs_lib
from train import study_report
from train import study_runner
from train import study_statistics as statistics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES_DIR = os.path.join(REPO_ROOT, "train", "studies")
STUDY_FILENAME = "study.json"
FAILURE_FILENAME = "failure.txt"
LOG_FILENAME = "train.log"
LOG_TAIL_LINES = 20
DEFAULT_METRIC = "test_accuracy"
DEFAULT_PRIMARY_TEST = "paired"


class StudyError(ValueError):
  """A study definition or a study directory that cannot be used."""


# -----------------------------------------------------------------------------
# Study definitions and the runs they name.


def load_study(spec: str) -> ml_collections.ConfigDict:
  """Loads ``train/studies/NAME.py[:ARG]`` (or a bare ``NAME``) and checks it.

  A relative path is relative to the repository (`REPO_ROOT`).

  Raises:
    StudyError: the file is missing, or the study names an unknown arm,
      baseline or config field.
  """
  name, colon, argument = spec.partition(":")
  if os.sep not in name and not name.endswith(".py"):
    name = os.path.join(STUDIES_DIR, name)
  spec = name.removesuffix(".py") + ".py" + colon + argument
  try:
    study = config_lib.load(os.path.join(REPO_ROOT, spec), "get_study")
  except config_lib.ConfigError as e:
    raise StudyError(f"Study file {spec}: {e}") from None
  missing = [key for key in ("config", "arms", "seeds", "baseline")
             if key not in study]
  if missing:
    raise StudyError(f"The study {spec} has no {', '.join(missing)}.")
  if study.baseline not in study.arms:
    raise StudyError(f"The study's baseline {study.baseline!r} is not one of "
                     f"its arms {list(study.arms)}.")
  check_statistics_fields(study)
  for arm in study.arms:
    run_config(study, arm, study.seeds[0])  # Unknown fields speak now.
  return study


def check_statistics_fields(
    study: ml_collections.ConfigDict) -> tuple[str, str, float | None]:
  """Checks ``metric``, ``comparisons``, ``primary_test``, margin, families.

  Returns:
    ``(metric, primary_test, equivalence_margin)``, with their defaults.

  Raises:
    StudyError: naming the field and what it should be.
  """
  metric = study.get("metric", DEFAULT_METRIC)
  if not isinstance(metric, str) or not metric:
    raise StudyError(f"The study's metric must be the name of an epoch-record "
                     f"field such as 'val_accuracy', got {metric!r}.")
  primary_test = study.get("primary_test", DEFAULT_PRIMARY_TEST)
  if primary_test not in statistics.TESTS:
    raise StudyError(f"The study's primary_test must be one of "
                     f"{list(statistics.TESTS)}, got {primary_test!r}.")
  margin = study.get("equivalence_margin")
  if margin is not None and (isinstance(margin, bool) or not isinstance(
      margin, (int, float)) or not 0 < margin < float("inf")):
    raise StudyError(f"The study's equivalence_margin must be a number above "
                     f"0 (0.005 is half a point of accuracy), got {margin!r}.")
  for family, arms in (study.get("families") or {}).items():
    unknown = [arm for arm in arms if arm not in study.arms]
    if not arms or unknown:
      raise StudyError(f"The study's family {family!r} must list arms of "
                       f"{list(study.arms)}; unknown: {unknown or 'none'}.")
  comparisons = study.get("comparisons")
  if comparisons is not None and (
      not isinstance(comparisons, (list, tuple)) or not comparisons):
    raise StudyError(f"The study's comparisons must be a non-empty list of "
                     f"[arm, against] pairs, got {comparisons!r}.")
  for pair in comparisons or ():
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
        or any(arm not in study.arms for arm in pair) or pair[0] == pair[1]):
      raise StudyError(f"Bad comparison {pair!r}: each is [arm, against], two "
                       f"different arms of {list(study.arms)}.")
  return metric, primary_test, margin


def run_overrides(study: ml_collections.ConfigDict, arm: str,
                  seed: int) -> dict[str, Any]:
  """The overrides of one run: the study's, the arm's, then the seed."""
  overrides = dict(study.get("overrides", {}))
  overrides.update(study.arms[arm])
  overrides["seed"] = seed
  return overrides


def run_config(study: ml_collections.ConfigDict, arm: str,
               seed: int) -> ml_collections.ConfigDict:
  """The full training config of one (arm, seed) of ``study``.

  The study's ``config`` is a path relative to the repository (`REPO_ROOT`).
  """
  try:
    config = config_lib.load(os.path.join(REPO_ROOT, study.config))
  except config_lib.ConfigError as e:
    raise StudyError(f"Config file {study.config}: {e}") from None
  try:
    return config_lib.override(config, run_overrides(study, arm, seed))
  except config_lib.ConfigError as e:
    raise StudyError(f"The overrides of arm {arm!r}: {e}") from None


def arm_dirname(arm: str) -> str:
  return arm.replace("/", "_").replace(" ", "_")


def run_dir(workdir: str, arm: str, seed: int) -> str:
  return os.path.join(os.path.abspath(workdir), arm_dirname(arm),
                      f"seed{seed}")


def _flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(
        value) == 1 else "") + ")"
  return str(value)


def train_command(study: ml_collections.ConfigDict, workdir: str, arm: str,
                  seed: int) -> list[str]:
  """The ``python -m train`` command line of one run, to run in `REPO_ROOT`.

  Relative paths in the study (its config file, a ``folder:`` source) are
  relative to the repository, as for ``python -m train`` run there.
  """
  return [sys.executable, "-m", "train", "--config", study.config,
          "--workdir", run_dir(workdir, arm, seed)] + [
              f"--config.{field}={_flag_value(value)}"
              for field, value in run_overrides(study, arm, seed).items()]


# -----------------------------------------------------------------------------
# The state of a study directory.


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """What a run's workdir says about it."""

  arm: str
  seed: int
  path: str
  run: runs_lib.Run  # read once; without epochs before its metrics.jsonl
  failure: str | None  # the tail of the log of a failed attempt

  @property
  def epochs_done(self) -> int:
    return max((int(r["epoch"]) for r in self.run.epochs), default=0)

  @property
  def num_epochs(self) -> int | None:
    return self.run.config.get("num_epochs")

  @property
  def finished(self) -> bool:
    return self.num_epochs is not None and self.epochs_done >= self.num_epochs

  @property
  def diverged(self) -> bool:
    """Its loss turned non-finite and it stopped: an outcome, not retried."""
    return not self.finished and self.run.diverged is not None

  @property
  def done(self) -> bool:
    """Finished or diverged: nothing more to run."""
    return self.finished or self.diverged


def read_run_status(workdir: str, arm: str, seed: int) -> RunStatus:
  """Reads the state of one (arm, seed) of the study in ``workdir``."""
  path = run_dir(workdir, arm, seed)
  try:
    run = runs_lib.load_run(path)
  except runs_lib.NotARunError:
    run = runs_lib.Run(path=path, name=os.path.basename(path),
                       config=runs_lib.read_config(path))
  failure = None
  failure_file = os.path.join(path, FAILURE_FILENAME)
  if os.path.isfile(failure_file):
    with open(failure_file, encoding="utf-8") as f:
      failure = f.read()
  return RunStatus(arm, seed, path, run, failure)


def study_runs(study: ml_collections.ConfigDict, workdir: str,
               arms: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[RunStatus]:
  """The runs of the study, seed by seed (all arms of a seed, then the next)."""
  arms = select_arms(study.arms, arms)
  seeds = list(study.seeds) if seeds is None else list(seeds)
  return [read_run_status(workdir, arm, seed) for seed in seeds
          for arm in arms]


def select_arms(known: Sequence[str], arms: Sequence[str] | None) -> list[str]:
  """``arms``, or all ``known`` arms when None; an unknown one is an error."""
  arms = list(known) if arms is None else list(arms)
  unknown = [arm for arm in arms if arm not in known]
  if unknown:
    raise StudyError(f"Unknown arm(s) {unknown}: the study has {list(known)}.")
  return arms


def save_study(study: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the definition into ``DIR/study.json``, for `summarize`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STUDY_FILENAME)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(study.to_json(indent=2))
  os.replace(path + ".tmp", path)


def read_study(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, STUDY_FILENAME)
  if not os.path.isfile(path):
    raise StudyError(f"{workdir} holds no {STUDY_FILENAME}: it is not a study "
                     "directory (made by `python -m train.study run` or "
                     "`commands`).")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f), allow_dotted_keys=True)


# -----------------------------------------------------------------------------
# The command line.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m train.study",
      description="Run, list and summarize studies (arms x seeds).")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run every unfinished (arm, seed)")
  listing = commands.add_parser(
      "commands", help="print one shell command per pending run")
  for sub in (run, listing):
    sub.add_argument("study", metavar="STUDY",
                     help="train/studies/NAME.py[:ARG] or NAME")
    sub.add_argument("--workdir", required=True, metavar="DIR")
  run.add_argument("--workers", type=int, default=1, metavar="N",
                   help="runs at once (default 1)")
  run.add_argument("--retries", type=int, default=1, metavar="K",
                   help="tries again a failed run up to K times (default 1)")
  run.add_argument("--arms", metavar="A,B", help="only these arms")
  run.add_argument("--seeds", metavar="0,1", help="only these seeds")
  summary = commands.add_parser("summarize", help="write summary.{md,json}, "
                                "curves.png and print the table")
  summary.add_argument("workdir", metavar="DIR")
  summary.add_argument("--baseline", metavar="ARM",
                       help="post hoc: compare every arm with ARM instead of "
                            "the study's comparisons or baseline")
  summary.add_argument("--compare", metavar="ARM:AGAINST", action="append",
                       help="post hoc: compare ARM with AGAINST instead of "
                            "the study's comparisons (repeat; first primary)")
  summary.add_argument("--margin", type=float, metavar="M",
                       help="post hoc: an equivalence margin (0.005 is half "
                            "a point) instead of the study's")
  power = commands.add_parser(
      "power", help="seeds a new study needs, from a finished study's spread")
  power.add_argument("workdir", metavar="DIR")
  power.add_argument("--margin", type=float, required=True, metavar="M",
                     help="the margin in the metric's units (0.005 is half "
                          "a point of accuracy)")
  power.add_argument("--test", choices=statistics.TESTS, default="welch",
                     help="the primary test (default welch)")
  power.add_argument("--arms", metavar="A,B",
                     help="the arms whose spread to pool (default all)")
  return parser.parse_args(argv)


def _split(text: str | None, cast=str):
  return None if text is None else [cast(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    if args.command == "summarize":
      if args.baseline or args.compare or args.margin is not None:
        study_report.print_post_hoc(args)
      else:
        print(study_report.write_summary(args.workdir), end="")
      return 0
    if args.command == "power":
      print(study_report.power_plan(args.workdir, args.margin, args.test,
                       _split(args.arms)), end="")
      return 0
    study = load_study(args.study)
    if args.command == "commands":
      save_study(study, args.workdir)
      print("\n".join(study_runner.pending_commands(study, args.workdir)))
      return 0
    if args.workers < 1:
      raise StudyError(f"--workers must be at least 1, got {args.workers}.")
    runs = study_runner.run_study(study, args.workdir, workers=args.workers,
                     retries=args.retries, arms=_split(args.arms),
                     seeds=_split(args.seeds, int))
  except (StudyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(study_report.write_summary(args.workdir), end="")
  return 0 if all(r.done for r in runs) else 1


if __name__ == "__main__":
  sys.exit(main())
