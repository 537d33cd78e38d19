"""The command line: ``python -m study run|commands|summarize|power``.

  python -m study run STUDY --workdir DIR [--workers N] [--arms A,B]
      [--seeds 0,1] [--retries K]
  python -m study commands STUDY --workdir DIR
  python -m study summarize DIR [--baseline ARM | --compare ARM:AGAINST]
  python -m study power DIR --margin M [--primaries K]
  python -m study compare RUN_DIR OTHER_RUN_DIR [--until-step N]

STUDY is a study file, ``study/studies/NAME.py[:ARG]`` or just ``NAME``
(`study.definition`). ``run`` keeps N runs going at once (on a CPU host the
cores are split between them; with several GPUs each run gets its own) and
re-running it continues every unfinished run where it stopped;
``commands`` prints one shell command per pending run for any other
scheduler; ``summarize`` reads the runs and writes ``summary.md``,
``summary.json`` and the figures (``curves.png``, ``comparisons.png``,
``finals.png``) into DIR (`study.report`, `study.figures`); ``power``
sizes a next study from a finished one's spread; ``compare`` checks that two
runs made the same numbers.
"""

import argparse
from collections.abc import Callable, Sequence
import sys
import warnings

from study import definition
from study import report
from study import runner
from study import statistics
from train import record


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m study",
      description="Run, list and summarize studies (arms x seeds).")
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run every unfinished (arm, seed)")
  listing = commands.add_parser(
      "commands", help="print one shell command per pending run")
  for sub in (run, listing):
    sub.add_argument("study", metavar="STUDY",
                     help="study/studies/NAME.py[:ARG] or NAME")
    sub.add_argument("--workdir", required=True, metavar="DIR")
  run.add_argument("--workers", type=int, default=1, metavar="N",
                   help="runs at once (default 1)")
  run.add_argument("--retries", type=int, default=1, metavar="K",
                   help="tries again a failed run up to K times (default 1)")
  run.add_argument("--arms", metavar="A,B", help="only these arms")
  run.add_argument("--seeds", metavar="0,1", help="only these seeds")
  summary = commands.add_parser("summarize", help="write summary.{md,json}, "
                                "the figures and print the table")
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
  compare = commands.add_parser(
      "compare", help="compare two runs' records value by value (timings "
      "aside); exit 1 if any differs")
  compare.add_argument("run", metavar="RUN_DIR")
  compare.add_argument("other", metavar="OTHER_RUN_DIR")
  compare.add_argument("--until-step", type=int, metavar="N",
                       help="only the steps up to N (a short run against a "
                            "longer one)")
  power = commands.add_parser(
      "power", help="seeds a new study needs, from a finished study's spread")
  power.add_argument("workdir", metavar="DIR")
  power.add_argument("--margin", type=float, required=True, metavar="M",
                     help="the margin in the metric's units (0.005 is half "
                          "a point of accuracy; a loss in nats)")
  power.add_argument("--test", choices=statistics.TESTS, default="welch",
                     help="the primary test (default welch)")
  power.add_argument("--arms", metavar="A,B",
                     help="the arms whose spread to pool (default all)")
  power.add_argument("--primaries", type=int, metavar="K",
                     help="primary comparisons, each at alpha 0.05/K "
                          "(default: the study's primary_comparisons, 1)")
  return parser.parse_args(argv)


def study_file_command(argv: Sequence[str],
                       commands: dict[str, Callable[..., int]]) -> int | str:
  """A study file's own commands, ``python study/studies/FILE.py NAME [ARG]``.

  Args:
    argv: `sys.argv`.
    commands: name -> the function that runs it with the arguments after
      the name and returns the exit status.

  Returns:
    For `sys.exit`: the command's status, a one-line error for a missing or
    damaged folder, or the usage for other arguments.
  """
  command = commands.get(argv[1]) if len(argv) > 1 else None
  if command is None:
    return f"usage: python {argv[0]} {'|'.join(commands)} [ARG]"
  try:
    return command(*argv[2:])
  except (OSError, ValueError) as error:  # A missing or damaged folder.
    return f"error: {error}"


def _split(text: str | None, cast=str):
  return None if text is None else [cast(x) for x in text.split(",") if x]


# Exit statuses of `run`: every run finished (or diverged); some failed;
# stopped by a signal with runs unfinished (75, EX_TEMPFAIL: run it again).
FINISHED, FAILED, STOPPED = 0, 1, 75


def main(argv: Sequence[str] | None = None) -> int:
  with warnings.catch_warnings():
    warnings.showwarning = _warning_line
    return _main(_parse_args(argv))


def _warning_line(message, *unused_args, **unused_kwargs) -> None:
  """A warning (a run's record with an unreadable line) as one line."""
  print(f"warning: {message}", file=sys.stderr)


def _main(args: argparse.Namespace) -> int:
  try:
    if args.command == "summarize":
      if args.baseline or args.compare or args.margin is not None:
        report.print_post_hoc(args)
        return 0
      return _write_summary(args.workdir)
    if args.command == "power":
      print(report.power_plan(args.workdir, args.margin, args.test,
                              _split(args.arms), args.primaries), end="")
      return 0
    if args.command == "compare":
      compared, found = record.differences(args.run, args.other,
                                           args.until_step)
      print("\n".join(found[:20] + [
          f"{compared} values compared, {len(found)} differ."]))
      return 1 if found else 0
    study = definition.load_study(args.study)
    if args.command == "commands":
      definition.save_study(study, args.workdir)
      print("\n".join(runner.pending_commands(study, args.workdir)))
      return 0
    if args.workers < 1:
      raise definition.StudyError(
          f"--workers must be at least 1, got {args.workers}.")
    result = runner.run_study(study, args.workdir, workers=args.workers,
                              retries=args.retries, arms=_split(args.arms),
                              seeds=_split(args.seeds, int))
  except (definition.StudyError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  summary_status = _write_summary(args.workdir)
  all_done = all(r.done for r in result.runs)
  if result.stopped_by and not all_done:
    return STOPPED
  return FINISHED if all_done and summary_status == 0 else FAILED


def _write_summary(workdir: str) -> int:
  """Prints the summary and writes its files; 1 (with one line) when they
  could not be written."""
  try:
    print(report.write_summary(workdir), end="")
  except report.SummaryNotWritten as e:
    print(e.markdown, end="")
    print(f"error: the summary is not saved: {e.strerror}", file=sys.stderr)
    return 1
  return 0
