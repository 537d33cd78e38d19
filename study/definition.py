"""A study's definition and the runs it names: what `python -m study` reads.

A study file (``study/studies/NAME.py[:ARG]``, or just ``NAME``) has a
``get_study()`` that returns a ``ConfigDict`` with:

* ``config``: the training config every run starts from, as ``--config`` takes
  it (``train/configs/reference.py:cifar10,A,0.9/0.9``);
* ``overrides``: ``{"dotted.field": value}`` applied to every run;
* ``arms``: ``{name: overrides}``, the experiments to compare;
* ``seeds``: the seeds each arm runs with; ``baseline``: the arm the others
  are compared with; ``targets``: values of the metric for "epochs to reach";

and optionally, for the statistics (`study.statistics`):

* ``metric``: the epoch-record field the summary ranks and compares on
  (default ``test_accuracy``; a tuning study uses ``val_accuracy``, and its
  summary then shows no test accuracy at all; ``test_loss`` or ``val_loss``
  is shown in nats, not in %);
* ``metric_direction``: ``"higher"`` or ``"lower"``, whichever value of the
  metric is better (default: from its name, `study.statistics.metric_direction`:
  a loss lower, an accuracy higher); the verdicts, the winners, the best
  value and the epochs to a target follow it;
* ``comparisons``: ``[[arm, against], ...]``, the first the primary one
  (default: every arm against ``baseline``);
* ``primary_comparisons``: how many of the first comparisons are primary
  (default 1). With k above 1, each primary's TOST and power are at level
  0.05 / k and the primaries' p-values are Holm-adjusted together; the
  other comparisons are secondary, Holm-adjusted among themselves;
* ``primary_test``: ``"paired"`` (default) or ``"welch"``;
* ``equivalence_margin``: in the metric's units (0.005 is half a point of
  accuracy, 0.01 is 0.01 nats of a loss), for an equivalence test (TOST);
  none without it;
* ``families`` and ``selection``: arms among which the summary picks a
  winner, and the rule in words.

Each (arm, seed) is an ordinary ``python -m train`` run in its own workdir,
``DIR/<arm>/seed<k>`` (a ``/`` or a space in an arm's name becomes ``_``), so
the loop's exact resume applies. `study_runs` reads the state of every run
from its workdir's files (`train.record`), the only contract between the
runs and the study.
"""

from collections.abc import Sequence
import dataclasses
import json
import os
import sys
from typing import Any

import ml_collections

from study import files
from study import statistics
from train import config as config_lib
from train import record

REPO_ROOT = config_lib.REPO_ROOT
STUDIES_DIR = os.path.join(REPO_ROOT, "study", "studies")
STUDY_FILENAME = "study.json"
FAILURE_FILENAME = "failure.txt"
LOG_FILENAME = "train.log"
LOG_TAIL_LINES = 20
DEFAULT_METRIC = record.TEST_ACCURACY
DEFAULT_PRIMARY_TEST = "paired"
DEFAULT_PRIMARY_COMPARISONS = 1


class StudyError(ValueError):
  """A study definition or a study directory that cannot be used."""


# -----------------------------------------------------------------------------
# Study definitions and the runs they name.


def load_study(spec: str) -> ml_collections.ConfigDict:
  """Loads ``study/studies/NAME.py[:ARG]`` (or a bare ``NAME``) and checks it.

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
  check_arm_dirnames(study.arms)
  for arm in study.arms:
    run_config(study, arm, study.seeds[0])  # Unknown fields speak now.
  return study


def check_arm_dirnames(arms: Sequence[str]) -> None:
  """Raises `StudyError` unless each arm has a folder of its own.

  Two arms whose names map to one folder (``"sgd/lr"`` and ``"sgd lr"``
  are both ``sgd_lr/``) would share their runs: the second would find the
  first's finished and report its numbers as its own.
  """
  seen = {}
  for arm in arms:
    folder = arm_dirname(arm)
    if folder in ("", ".", "..") or folder.startswith("."):
      raise StudyError(f"The arm name {arm!r} cannot be a folder: use "
                       "letters, digits, '-' and '.' inside the name.")
    if folder in seen:
      raise StudyError(f"The arms {seen[folder]!r} and {arm!r} both map to "
                       f"the folder {folder!r}: rename one.")
    seen[folder] = arm


def check_statistics_fields(
    study: ml_collections.ConfigDict
) -> tuple[str, str, float | None, str, int]:
  """Checks ``metric``, ``metric_direction``, ``comparisons``,
  ``primary_comparisons``, ``primary_test``, margin, families.

  Returns:
    ``(metric, primary_test, equivalence_margin, direction, primaries)``,
    with their defaults: ``direction`` the metric's
    (`study.statistics.metric_direction`), ``primaries`` the number of
    primary comparisons.

  Raises:
    StudyError: naming the field and what it should be.
  """
  metric = study.get("metric", DEFAULT_METRIC)
  if not isinstance(metric, str) or not metric:
    raise StudyError(f"The study's metric must be the name of an epoch-record "
                     f"field such as 'val_accuracy', got {metric!r}.")
  direction = study.get("metric_direction")
  if direction is not None and direction not in statistics.DIRECTIONS:
    raise StudyError(f"The study's metric_direction must be one of "
                     f"{list(statistics.DIRECTIONS)}, got {direction!r}.")
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
  primaries = study.get("primary_comparisons", DEFAULT_PRIMARY_COMPARISONS)
  count = len(comparisons) if comparisons else len(study.arms) - 1
  if (isinstance(primaries, bool) or not isinstance(primaries, int)
      or not 1 <= primaries <= max(count, 1)):
    raise StudyError(f"The study's primary_comparisons must be a whole number "
                     f"from 1 to its {count} comparisons, got {primaries!r}.")
  return (metric, primary_test, margin,
          statistics.metric_direction(metric, direction), primaries)


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


def train_command(study: ml_collections.ConfigDict, workdir: str, arm: str,
                  seed: int) -> list[str]:
  """The ``python -m train`` command line of one run, to run in `REPO_ROOT`.

  Relative paths in the study (its config file, a ``folder:`` source) are
  relative to the repository, as for ``python -m train`` run there.
  """
  return [sys.executable, "-m", "train", "--config", study.config,
          "--workdir", run_dir(workdir, arm, seed)] + [
              f"--config.{field}={config_lib.flag_value(value)}"
              for field, value in run_overrides(study, arm, seed).items()]


# -----------------------------------------------------------------------------
# The state of a study directory.


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """What a run's workdir says about it.

  Every run is in exactly one `state`: ``"finished"``, ``"diverged"`` (an
  outcome, `train.record.DIVERGED_KIND`), ``"failed"`` (its last attempt
  failed: `failure`) or ``"unfinished"`` (not started, stopped, or its record
  damaged: `damage`); `reason` says why in one line.
  """

  arm: str
  seed: int
  path: str
  run: record.Run  # read once; without epochs before its metrics.jsonl
  failure: str | None  # the tail of the log of a failed attempt
  damage: str | None = None  # a file of the record that cannot be read

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

  @property
  def state(self) -> str:
    if self.finished:
      return "finished"
    if self.diverged:
      return "diverged"
    return "failed" if self.failure is not None else "unfinished"

  @property
  def reason(self) -> str:
    """Why the run is in its `state`, in one line."""
    if self.state == "diverged":
      return (f"the training loss was not finite at step "
              f"{self.run.diverged['step']}")
    if self.state == "failed":
      return failure_reason(self.failure)
    if self.damage:
      return f"damaged record: {self.damage}"
    if self.state == "unfinished":
      if not self.run.epochs and not self.run.starts:
        return "not started"
      return f"{self.epochs_done} of {self.num_epochs or '?'} epochs done"
    return f"{self.epochs_done} epochs"


def failure_reason(log_tail: str) -> str:
  r"""The run's own last ``error:`` line in its log's tail, else the tail's
  first line.

  >>> failure_reason("exit status 1; the end of train.log:\nerror: no file.\n")
  'error: no file.'
  """
  lines = log_tail.splitlines()
  errors = [line.strip() for line in lines if line.startswith("error:")]
  return errors[-1] if errors else (lines or ["failed"])[0].rstrip(":")


def read_run_status(workdir: str, arm: str, seed: int) -> RunStatus:
  """Reads the state of one (arm, seed) of the study in ``workdir``.

  A file of the run's record that cannot be read (``config.json`` or
  ``metrics.jsonl`` missing where the other is, unreadable, not JSON) makes
  the run unfinished with that ``damage``, naming the file; the other runs
  are read as usual.
  """
  path = run_dir(workdir, arm, seed)
  empty = record.Run(path=path, name=os.path.basename(path), config={})
  run, damage = empty, None
  try:
    run = record.load_run(path)
    if not run.config and (run.epochs or run.starts):
      damage = f"{os.path.join(path, record.CONFIG_FILENAME)} is missing"
  except record.NotARunError:
    try:
      run = dataclasses.replace(empty, config=record.read_config(path))
    except (OSError, ValueError) as e:
      damage = _damage(e)
  except (OSError, ValueError) as e:
    damage = _damage(e)
  failure = None
  failure_file = os.path.join(path, FAILURE_FILENAME)
  try:
    with open(failure_file, encoding="utf-8", errors="replace") as f:
      failure = f.read() or "failed (its failure.txt is empty)"
  except FileNotFoundError:
    pass
  except OSError as e:
    failure = f"failed (its failure.txt is unreadable: {e.strerror or e})"
  return RunStatus(arm, seed, path, run, failure, damage)


def _damage(error: Exception) -> str:
  """``"PATH: what is wrong"`` for a file of a run's record."""
  if getattr(error, "filename", None):
    return f"{error.filename}: {error.strerror or error}"
  return str(error)  # `train.record` names the file.


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
  """Writes the definition into ``DIR/study.json``, for `summarize`.

  Raises:
    files.WriteError: it could not be written.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise files.WriteError(e.errno, f"could not make {workdir} "
                           f"({e.strerror or e})") from e
  files.write_atomically(os.path.join(workdir, STUDY_FILENAME),
                         study.to_json(indent=2))


def read_study(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, STUDY_FILENAME)
  if not os.path.isfile(path):
    raise StudyError(f"{workdir} holds no {STUDY_FILENAME}: it is not a study "
                     "directory (made by `python -m study run` or "
                     "`commands`).")
  try:
    with open(path, encoding="utf-8") as f:
      study = ml_collections.ConfigDict(json.load(f), allow_dotted_keys=True)
  except (OSError, ValueError) as e:
    raise StudyError(f"{path} is unreadable ({e}).") from e
  check_arm_dirnames(study.arms)
  return study
