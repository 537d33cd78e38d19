"""Studies: arms x seeds of training runs, run anywhere, and honest statistics.

  python -m train.study run STUDY --workdir DIR [--workers N] [--arms A,B] [--seeds 0,1]
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
import contextlib
import ctypes
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from train import config as config_lib
from train import metric_writers
from train import plot
from train import runs as runs_lib
from train import study_report
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


def check_statistics_fields(study: ml_collections.ConfigDict) -> None:
  """Checks ``metric``, ``comparisons``, ``primary_test``, margin, families.

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
  if comparisons is None:
    return
  if not isinstance(comparisons, (list, tuple)) or not comparisons:
    raise StudyError(f"The study's comparisons must be a non-empty list of "
                     f"[arm, against] pairs, got {comparisons!r}.")
  for pair in comparisons:
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
        or any(arm not in study.arms for arm in pair) or pair[0] == pair[1]):
      raise StudyError(f"Bad comparison {pair!r}: each is [arm, against], two "
                       f"different arms of {list(study.arms)}.")


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
  epochs_done: int
  num_epochs: int | None
  failure: str | None  # the tail of the log of a failed attempt

  @property
  def finished(self) -> bool:
    return self.num_epochs is not None and self.epochs_done >= self.num_epochs


def read_run_status(workdir: str, arm: str, seed: int) -> RunStatus:
  """Reads the state of one (arm, seed) of the study in ``workdir``."""
  path = run_dir(workdir, arm, seed)
  num_epochs = runs_lib.read_config(path).get("num_epochs")
  try:
    epochs = runs_lib.load_run(path).epochs
  except runs_lib.NotARunError:
    epochs = ()
  epochs_done = max((int(r["epoch"]) for r in epochs), default=0)
  failure = None
  failure_file = os.path.join(path, FAILURE_FILENAME)
  if os.path.isfile(failure_file):
    with open(failure_file, encoding="utf-8") as f:
      failure = f.read()
  return RunStatus(arm, seed, path, epochs_done, num_epochs, failure)


def study_runs(study: ml_collections.ConfigDict, workdir: str,
               arms: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[RunStatus]:
  """The runs of the study, seed by seed (all arms of a seed, then the next)."""
  arms = list(study.arms) if arms is None else list(arms)
  seeds = list(study.seeds) if seeds is None else list(seeds)
  unknown = [arm for arm in arms if arm not in study.arms]
  if unknown:
    raise StudyError(f"Unknown arm(s) {unknown}: the study has "
                     f"{list(study.arms)}.")
  return [read_run_status(workdir, arm, seed) for seed in seeds
          for arm in arms]


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
# Running: a local pool of N processes.


def visible_gpus(environ=os.environ) -> list[str]:
  """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them.

  Without ``CUDA_VISIBLE_DEVICES``, ``"0"`` to ``"n-1"`` for the n GPUs that
  ``nvidia-smi`` lists (none without it). With it, its entries as CUDA reads
  them: up to the first invalid one (``"-1"`` hides every GPU). A child given
  one of these entries gets that GPU, so a parent limited to ``"2,3"`` puts
  its runs on GPUs 2 and 3. JAX is not started: it would take the GPUs.

  Example:
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"})
    ['2', '3']
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})
    []
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f2e, 1, -1, 2"})
    ['GPU-8f2e', '1']
  """
  visible = environ.get("CUDA_VISIBLE_DEVICES")
  if visible is None:
    try:
      listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                              text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
      return []
    return [str(i) for i in range(sum(
        line.startswith("GPU ") for line in listed.splitlines()))]
  gpus = []
  for entry in (e.strip() for e in visible.split(",")):
    if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
      break
    gpus.append(entry)
  return gpus


def host_has_tpu() -> bool:
  """Whether this host has TPU chips, found as JAX finds them (PCI ids).

  JAX is not started: a TPU serves one process at a time.
  """
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except (ImportError, AttributeError, OSError):
    return False


# What JAX preallocates of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
JAX_MEMORY_FRACTION = 0.75


def worker_shares(workers: int, cores: Sequence[int], gpus: Sequence[str],
                  *, tpu: bool = False,
                  memory_fraction: float = JAX_MEMORY_FRACTION
                  ) -> list[dict[str, Any]]:
  """What each concurrent run may use, and how many run at once.

  Args:
    workers: The runs asked for at once.
    cores: The cores this process may use.
    gpus: The GPUs this process may use (`visible_gpus`).
    tpu: Whether the host has a TPU, which one process at a time can use.
    memory_fraction: The fraction of a GPU's memory that one run alone
      preallocates.

  Returns:
    One dict per run at once: ``{"gpu": name}`` on a host with GPUs (run
    ``i`` on ``gpus[i mod len(gpus)]``), with ``"memory_fraction"``, the
    share of ``memory_fraction`` when k runs share the GPU; else
    ``{"cores": [...]}``, the cores split into near-equal parts (one worker
    keeps them all). A TPU host runs one at a time.

  Example:
    >>> worker_shares(2, [0, 1, 2], gpus=[])
    [{'cores': [0, 1]}, {'cores': [2]}]
    >>> worker_shares(3, [0, 1], gpus=["2", "3"])[:2]
    [{'gpu': '2', 'memory_fraction': 0.375}, {'gpu': '3'}]
    >>> worker_shares(4, [0, 1], gpus=[], tpu=True)
    [{'cores': [0, 1]}]
  """
  if tpu:
    workers = 1
  if gpus:
    shares = [{"gpu": gpus[i % len(gpus)]} for i in range(workers)]
    for share in shares:
      sharing = sum(s["gpu"] == share["gpu"] for s in shares)
      if sharing > 1:
        share["memory_fraction"] = memory_fraction / sharing
    return shares
  parts = np.array_split(np.asarray(cores), min(workers, len(cores)))
  return [{"cores": [int(c) for c in parts[i % len(parts)]]}
          for i in range(workers)]


def child_environment(share: dict[str, Any],
                      environ=os.environ) -> dict[str, str]:
  """The environment of a run with ``share`` (see `worker_shares`).

  Example:
    >>> env = child_environment({"gpu": "3", "memory_fraction": 0.375}, {})
    >>> env["CUDA_VISIBLE_DEVICES"], env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    ('3', '0.375')
  """
  env = dict(environ)
  if "gpu" in share:
    env["CUDA_VISIBLE_DEVICES"] = share["gpu"]
  if "memory_fraction" in share:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share['memory_fraction']:.4g}"
  return env


def _stop_with_parent(parent_pid: int) -> None:
  """In a child before it runs: SIGTERM when the study ends, however it ends.

  A run outlives a study that is killed (its own session keeps it from the
  study's process group), and would then hold its workdir against the next
  study; SIGTERM makes it save and stop. Linux only (``PR_SET_PDEATHSIG``).
  """
  if sys.platform != "linux":
    return
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
  if os.getppid() != parent_pid:  # The study ended before the call.
    os._exit(128 + signal.SIGTERM)  # pylint: disable=protected-access


def _start_run(command: list[str], path: str,
               share: dict[str, Any]) -> subprocess.Popen:
  """Starts a run in its own session, so that the terminal's Ctrl-C reaches
  only the study, which asks each run once to stop (`_Pool.stop`)."""
  os.makedirs(path, exist_ok=True)
  cores, parent_pid = share.get("cores"), os.getpid()

  def before_run():
    _stop_with_parent(parent_pid)
    if cores:
      os.sched_setaffinity(0, cores)

  log = open(os.path.join(path, LOG_FILENAME), "a", encoding="utf-8")
  with log:
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT,
        env=child_environment(share), cwd=REPO_ROOT, start_new_session=True,
        preexec_fn=before_run)


def _record_outcome(path: str, returncode: int) -> None:
  failure_file = os.path.join(path, FAILURE_FILENAME)
  if returncode == 0:
    if os.path.exists(failure_file):
      os.remove(failure_file)
    return
  with open(os.path.join(path, LOG_FILENAME), encoding="utf-8",
            errors="replace") as f:
    tail = f.readlines()[-LOG_TAIL_LINES:]
  with open(failure_file, "w", encoding="utf-8") as f:
    f.write(f"exit status {returncode}; the end of {LOG_FILENAME}:\n"
            + "".join(tail))


class StudyProgress:
  """One line for the study: done, running, failed, pending, and an ETA."""

  def __init__(self, workers: int, planned_epochs: dict[str, int],
               stream=sys.stderr):
    """``planned_epochs``: each arm's number of epochs."""
    self._workers = workers
    self._planned_epochs = planned_epochs
    self._stream = stream
    self._last = None

  def update(self, runs: Sequence[RunStatus], running: set[str]) -> None:
    """Prints the line when it changed; ``running`` holds the runs' paths."""
    done = sum(r.finished for r in runs)
    active = sum(r.path in running and not r.finished for r in runs)
    failed = sum(r.failure is not None and not r.finished
                 and r.path not in running for r in runs)
    pending = len(runs) - done - active - failed
    line = (f"study: {done} done, {active} running, {failed} failed, "
            f"{pending} pending")
    eta = self.eta_seconds(runs)
    if eta is not None:
      line += f"; ETA {metric_writers.format_duration(eta)}"
    if line != self._last:
      print(line, file=self._stream, flush=True)
      self._last = line

  def eta_seconds(self, runs: Sequence[RunStatus]) -> float | None:
    """Remaining epochs x median epoch time so far / workers.

    The median, not the mean: each run's first epoch includes compiling, and
    epochs timed while the machine had other work would otherwise pull the
    estimate up long after the machine is quiet again.
    """
    times = []
    for run in runs:
      if run.epochs_done:
        epochs = metric_writers.read_metrics(run.path).get("epoch", [])
        times += [r["epoch_time_s"] for r in epochs if r.get("epoch_time_s")]
    if not times:
      return None
    remaining = sum(max(self._planned_epochs[r.arm] - r.epochs_done, 0)
                    for r in runs if not r.finished)
    return remaining * float(np.median(times)) / self._workers


class _Pool:
  """Up to ``len(shares)`` runs of a study at once, each with its share.

  Each run is a single process: it gets ``distributed.initialize=no``, for a
  study inside a SLURM allocation passes the allocation's variables on, and
  the runs must not take them for one distributed job.
  """

  def __init__(self, study, workdir: str, shares: list[dict[str, Any]],
               retries: int):
    self.study, self.workdir = study, workdir
    self.shares, self.retries = shares, retries
    self.running: dict[int, tuple[subprocess.Popen, RunStatus]] = {}
    self.failures: dict[str, int] = {}
    self._asked_to_stop: set[int] = set()  # the pids sent SIGTERM

  def start(self, queue: list[RunStatus]) -> None:
    """Starts queued runs in the free slots."""
    for slot in range(len(self.shares)):
      if queue and slot not in self.running:
        run = queue.pop(0)
        command = train_command(self.study, self.workdir, run.arm, run.seed)
        command.append("--config.distributed.initialize=no")
        self.running[slot] = (
            _start_run(command, run.path, self.shares[slot]), run)

  def stop(self) -> None:
    """Asks each run once to stop: it saves a checkpoint (see `train.main`).

    A run asked before is not asked again, so calling this again only
    reaches runs started since.
    """
    for process, _ in list(self.running.values()):
      if process.pid not in self._asked_to_stop:
        self._asked_to_stop.add(process.pid)
        process.send_signal(signal.SIGTERM)

  def kill(self) -> None:
    """Kills every run at once (each in its own process group)."""
    for process, _ in list(self.running.values()):
      if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
          os.killpg(process.pid, signal.SIGKILL)

  def reap(self, queue: list[RunStatus], stopping: bool) -> None:
    """Records the runs that ended; queues failed ones again while allowed."""
    for slot, (process, run) in list(self.running.items()):
      if process.poll() is None:
        continue
      del self.running[slot]
      if stopping:  # A stopped run has not failed.
        continue
      _record_outcome(run.path, process.returncode)
      if process.returncode:
        self.failures[run.path] = self.failures.get(run.path, 0) + 1
        if self.failures[run.path] <= self.retries:
          queue.append(run)

  def running_paths(self) -> set[str]:
    return {run.path for _, run in self.running.values()}


def run_study(study: ml_collections.ConfigDict, workdir: str, *,
              workers: int = 1, retries: int = 1, arms=None, seeds=None,
              poll_s: float = 5.0) -> list[RunStatus]:
  """Runs every unfinished (arm, seed), ``workers`` at a time.

  A failed run is recorded (``failure.txt`` with the tail of its log) and the
  others go on; it is tried again, from its last checkpoint, up to
  ``retries`` times at the end of the queue, and by the next `run_study`.

  Each run has its own session, so a Ctrl-C at the terminal reaches only
  this process. SIGINT or SIGTERM sends one SIGTERM to each run and waits
  for every run to save its checkpoint and exit; a second SIGINT (Ctrl-C
  again) kills the runs at once, which then resume from their latest
  complete checkpoint.

  Returns:
    The status of every run afterwards.
  """
  # Unknown arms are errors before anything is written.
  queue = [r for r in study_runs(study, workdir, arms, seeds)
           if not r.finished]
  save_study(study, workdir)
  shares = worker_shares(
      workers, sorted(os.sched_getaffinity(0)), visible_gpus(),
      tpu=host_has_tpu(), memory_fraction=float(os.environ.get(
          "XLA_PYTHON_CLIENT_MEM_FRACTION", JAX_MEMORY_FRACTION)))
  if len(shares) < workers:
    print("study: this host's TPU serves one process at a time: one run at "
          "a time.", file=sys.stderr, flush=True)
  pool = _Pool(study, workdir, shares, retries)
  progress = StudyProgress(len(shares), {
      arm: run_config(study, arm, study.seeds[0]).num_epochs
      for arm in study.arms})
  signals = []

  def on_signal(signum, frame):
    del frame
    signals.append(signum)
    queue.clear()
    if len(signals) == 1:
      print("study: stopping; each run saves a checkpoint (Ctrl-C again "
            "kills them).", file=sys.stderr, flush=True)
      pool.stop()
    elif signum == signal.SIGINT:
      print("study: killing the runs; each resumes from its latest complete "
            "checkpoint.", file=sys.stderr, flush=True)
      pool.kill()

  previous_handlers = {sig: signal.signal(sig, on_signal)
                       for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    while queue or pool.running:
      if signals:
        queue.clear()
        pool.stop()  # Runs started while the signal came, if any.
      pool.start(queue)
      pool.reap(queue, stopping=bool(signals))
      progress.update(study_runs(study, workdir, arms, seeds),
                      pool.running_paths())
      if pool.running:
        time.sleep(poll_s)
  finally:
    for sig, handler in previous_handlers.items():
      signal.signal(sig, handler)
  return study_runs(study, workdir, arms, seeds)


def pending_commands(study: ml_collections.ConfigDict,
                     workdir: str) -> list[str]:
  """One shell command per unfinished run, for any scheduler."""
  return [f"cd {shlex.quote(REPO_ROOT)} && "
          + shlex.join(train_command(study, workdir, r.arm, r.seed))
          for r in study_runs(study, workdir) if not r.finished]


# -----------------------------------------------------------------------------
# Summaries.


def comparison_pairs(study: ml_collections.ConfigDict,
                     baseline: str | None = None) -> list[tuple[str, str]]:
  """The ``(arm, against)`` pairs to compare, the primary one first.

  The study's ``comparisons``, or every arm against its ``baseline``; a
  ``baseline`` given here overrides both (every arm against it).

  Raises:
    StudyError: for an unknown ``baseline``.
  """
  if baseline is not None and baseline not in study.arms:
    raise StudyError(f"Unknown baseline {baseline!r}: the study has "
                     f"{list(study.arms)}.")
  if baseline is None and study.get("comparisons") is not None:
    return [(arm, against) for arm, against in study.comparisons]
  baseline = study.baseline if baseline is None else baseline
  return [(arm, baseline) for arm in study.arms if arm != baseline]


def _failure_reason(log_tail: str) -> str:
  return (log_tail.splitlines() or ["failed"])[0].rstrip(":")


def summarize(workdir: str, baseline: str | None = None,
              compare: Sequence[tuple[str, str]] | None = None,
              margin: float | None = None):
  """The statistics of a study directory.

  A finished run whose final metric is null or NaN is failed, not averaged.

  Args:
    workdir: the study directory.
    baseline: compare every arm with this one instead of the study's
      ``comparisons`` (or ``baseline``).
    compare: ``(arm, against)`` pairs to compare instead, the first primary.
    margin: an equivalence margin instead of the study's.

  Returns:
    ``(summary, finished)``: the contents of ``summary.json`` (per arm its
    statistics and provenance, the comparisons of `comparison_pairs`, the
    unfinished and failed runs) and, per arm, its finished runs as
    `train.runs.Run`.

  Raises:
    StudyError: for a directory without a study or with bad statistics
      fields, or an unknown ``baseline``.
  """
  study = read_study(workdir)
  if compare is not None:
    study.comparisons = [list(pair) for pair in compare]
  if margin is not None:
    study.equivalence_margin = margin
  check_statistics_fields(study)
  pairs = comparison_pairs(study, baseline)
  metric = study.get("metric", DEFAULT_METRIC)
  primary_test = study.get("primary_test", DEFAULT_PRIMARY_TEST)
  margin = study.get("equivalence_margin")
  statuses = study_runs(study, workdir)
  finished = {arm: [] for arm in study.arms}
  failed = [{"arm": s.arm, "seed": s.seed,
             "reason": _failure_reason(s.failure), "log_tail": s.failure}
            for s in statuses if not s.finished and s.failure]
  for status in statuses:
    if status.finished:
      run = runs_lib.load_run(status.path)
      if np.isfinite(statistics.final(run, metric)):
        finished[status.arm].append(run)
      else:
        failed.append({"arm": status.arm, "seed": status.seed,
                       "reason": f"final {metric} is null or NaN",
                       "log_tail": None})
  targets = list(study.get("targets", ()))
  final_by_seed = {arm: {r.config["seed"]: statistics.final(r, metric)
                         for r in runs} for arm, runs in finished.items()}
  comparisons = [
      {"arm": arm, "against": against,
       "role": "primary" if index == 0 else "secondary",
       **statistics.compare(final_by_seed[arm], final_by_seed[against],
                            primary_test=primary_test, margin=margin)}
      for index, (arm, against) in enumerate(pairs)]
  arms = {arm: statistics.arm_statistics(runs, targets, metric)
          for arm, runs in finished.items()}
  selection = {}
  if study.get("families"):
    selection = statistics.select_winners(
        study.families, {arm: arms[arm][f"final_{metric}"]["mean"]
                         for arm in arms})
  return {
      "metric": metric,
      "selection": selection,
      "selection_rule": study.get("selection"),
      "primary_test": primary_test,
      "equivalence_margin": margin,
      "baseline": study.baseline if baseline is None else baseline,
      "targets": targets,
      "arms": arms,
      "comparisons": comparisons,
      "unfinished": [
          {"arm": s.arm, "seed": s.seed, "epochs_done": s.epochs_done,
           "num_epochs": s.num_epochs} for s in statuses
          if not s.finished and s.failure is None],
      "failed": failed,
  }, finished


def write_summary(workdir: str, baseline: str | None = None) -> str:
  """Writes ``summary.json`` (strict JSON), ``summary.md`` and ``curves.png``.

  Returns:
    The contents of ``summary.md``.
  """
  summary, finished = summarize(workdir, baseline)
  summary = statistics.json_safe(summary)
  with open(os.path.join(workdir, "summary.json"), "w",
            encoding="utf-8") as f:
    json.dump(summary, f, indent=2, allow_nan=False)
    f.write("\n")
  markdown = study_report.summary_markdown(summary)
  with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  groups = [plot.RunGroup(label=arm, runs=runs)
            for arm, runs in finished.items() if runs]
  if groups:
    plot.plot_runs(groups, os.path.join(workdir, "curves.png"))
  return markdown


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


def power_plan(workdir: str, margin: float, test: str,
               arms: Sequence[str] | None = None) -> str:
  """The seeds per arm a study at ``margin`` needs, from ``workdir``'s spread.

  The spread is the pooled standard deviation of the arms' final metric
  (each arm's variance weighted by its degrees of freedom). For ``paired``,
  the spread of a difference is taken as that of two independent runs
  (``√2`` times it), which is what pairing gives when it removes no noise.
  Two figures: the seeds for 80% power of the TOST at ``±margin`` when the
  true difference is zero, and of the two-sided 5% test to detect a true
  difference of ``margin``; a study needs the larger.
  """
  summary, _ = summarize(workdir)
  metric = summary["metric"]
  arms = list(summary["arms"]) if arms is None else list(arms)
  unknown = [arm for arm in arms if arm not in summary["arms"]]
  if unknown:
    raise StudyError(f"Unknown arm(s) {unknown}: the study has "
                     f"{list(summary['arms'])}.")
  if not margin > 0:
    raise StudyError(f"--margin must be above 0, got {margin}.")
  lines, squares, dfs = [], 0.0, 0
  for arm in arms:
    entry, n = summary["arms"][arm][f"final_{metric}"], summary["arms"][arm]["n"]
    if entry["std"] is None:
      continue
    squares += (n - 1) * entry["std"] ** 2
    dfs += n - 1
    lines.append(f"  {arm}: n {n}, sd {entry['std']:.5f}")
  if not dfs:
    raise StudyError(f"No arm of {workdir} has two finished runs to measure "
                     "a spread from.")
  sd = (squares / dfs) ** 0.5
  scale = sd * (2 ** 0.5 if test == "paired" else 1.0)
  tost = statistics.seeds_for_equivalence(margin / scale, test)
  detect = statistics.seeds_for_power(margin / scale, test)
  return "\n".join(
      [f"final {metric} of {workdir}, per arm:"] + lines + [
          f"pooled sd: {sd:.5f} ({dfs} degrees of freedom); margin "
          f"{margin:g} = {margin / sd:.3f} sd",
          f"seeds per arm for 80% power, {test} test:",
          f"  TOST at ±{margin:g}, true difference 0: {tost}",
          f"  a true difference of {margin:g}, two-sided 5%: {detect}",
          f"a study at this margin needs {max(tost or 0, detect or 0)} "
          "seeds per arm"]) + "\n"


def _pairs(texts: Sequence[str] | None) -> list[tuple[str, str]] | None:
  """``["a:b"]`` -> ``[("a", "b")]``; arm names may not hold a colon."""
  if texts is None:
    return None
  pairs = [tuple(text.split(":")) for text in texts]
  bad = [text for text, pair in zip(texts, pairs) if len(pair) != 2]
  if bad:
    raise StudyError(f"--compare takes ARM:AGAINST, got {bad[0]!r}.")
  return pairs


def _print_post_hoc(args) -> None:
  """The summary with the command line's comparisons; no file is written."""
  summary, _ = summarize(args.workdir, args.baseline, _pairs(args.compare),
                         args.margin)
  print("Post hoc: comparisons chosen on the command line, not the study's "
        "pre-registered ones; nothing was written.\n")
  print(study_report.summary_markdown(statistics.json_safe(summary)), end="")


def _split(text: str | None, cast=str):
  return None if text is None else [cast(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    if args.command == "summarize":
      if args.baseline or args.compare or args.margin is not None:
        _print_post_hoc(args)
      else:
        print(write_summary(args.workdir), end="")
      return 0
    if args.command == "power":
      print(power_plan(args.workdir, args.margin, args.test,
                       _split(args.arms)), end="")
      return 0
    study = load_study(args.study)
    if args.command == "commands":
      save_study(study, args.workdir)
      print("\n".join(pending_commands(study, args.workdir)))
      return 0
    if args.workers < 1:
      raise StudyError(f"--workers must be at least 1, got {args.workers}.")
    runs = run_study(study, args.workdir, workers=args.workers,
                     retries=args.retries, arms=_split(args.arms),
                     seeds=_split(args.seeds, int))
  except (StudyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(write_summary(args.workdir), end="")
  return 0 if all(r.finished for r in runs) else 1


if __name__ == "__main__":
  sys.exit(main())
