"""Runs a study's (arm, seed) runs on this host, N at a time.

`run_study` keeps up to ``workers`` runs going, each an ordinary ``python -m
train`` process in its own session and workdir (`study.definition` names them),
with its share of the host: a GPU of ``CUDA_VISIBLE_DEVICES`` (and a part of
its memory when runs share it), else a part of the cores; a TPU host runs one
at a time. A failed run is retried from its checkpoint; Ctrl-C or SIGTERM makes
every run save and stop. `pending_commands` prints the same runs as shell
commands for any other scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
import ctypes
import dataclasses
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from study import definition as study_lib
from study import files
from study import hosts
from train import devices
from train import record
from train import signals


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

  log = open(  # noqa: SIM115 (closed by the with below, once the run has it)
      os.path.join(path, study_lib.LOG_FILENAME), "a", encoding="utf-8")
  with log:
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT,
        env=hosts.child_environment(share), cwd=study_lib.REPO_ROOT,
        start_new_session=True,
        preexec_fn=before_run)


# Exit statuses of a run stopped by a signal it was sent (`train.main`): it
# saved a checkpoint and is unfinished, not failed.
INTERRUPTED_STATUSES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _record_outcome(path: str, returncode: int) -> None:
  """Writes (or, after a success or an interruption, removes) the run's
  ``failure.txt``: the exit status and the end of its log.

  Raises:
    files.WriteError: the outcome could not be recorded.
  """
  failure_file = os.path.join(path, study_lib.FAILURE_FILENAME)
  if returncode == 0 or returncode in INTERRUPTED_STATUSES:
    try:
      os.remove(failure_file)
    except FileNotFoundError:
      pass
    except OSError as e:
      raise files.WriteError(e.errno, f"could not remove {failure_file} "
                             f"({e.strerror or e})") from e
    return
  try:
    with open(os.path.join(path, study_lib.LOG_FILENAME), encoding="utf-8",
              errors="replace") as f:
      tail = f.readlines()[-study_lib.LOG_TAIL_LINES:]
  except OSError as e:
    tail = [f"(its log is unreadable: {e.strerror or e})\n"]
  files.write_atomically(failure_file, f"exit status {returncode}; the end "
                         f"of {study_lib.LOG_FILENAME}:\n" + "".join(tail))


def format_duration(seconds: float) -> str:
  """``M:SS`` or ``H:MM:SS``.

  >>> format_duration(83.4), format_duration(3725)
  ('1:23', '1:02:05')
  """
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(round(float(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}"


class StudyProgress:
  """One line for the study: done, running, failed, pending, and an ETA."""

  def __init__(self, workers: int, planned_epochs: dict[str, int],
               stream=sys.stderr):
    """``planned_epochs``: each arm's number of epochs."""
    self._workers = workers
    self._planned_epochs = planned_epochs
    self._stream = stream
    self._last = None

  def update(self, runs: Sequence[study_lib.RunStatus],
             running: set[str]) -> None:
    """Prints the line when it changed; ``running`` holds the runs' paths."""
    done = sum(r.done for r in runs)
    active = sum(r.path in running and not r.done for r in runs)
    failed = sum(r.failure is not None and not r.done
                 and r.path not in running for r in runs)
    pending = len(runs) - done - active - failed
    line = (f"study: {done} done, {active} running, {failed} failed, "
            f"{pending} pending")
    eta = self.eta_seconds(runs)
    if eta is not None:
      line += f"; ETA {format_duration(eta)}"
    if line != self._last:
      print(line, file=self._stream, flush=True)
      self._last = line

  def eta_seconds(self, runs: Sequence[study_lib.RunStatus]) -> float | None:
    """Remaining epochs x median epoch time so far / workers.

    The median, not the mean: each run's first epoch includes compiling, and
    epochs timed while the machine had other work would otherwise pull the
    estimate up long after the machine is quiet again.
    """
    times = [r[record.EPOCH_TIME_S] for status in runs
             for r in status.run.epochs if r.get(record.EPOCH_TIME_S)]
    if not times:
      return None
    remaining = sum(max(self._planned_epochs[r.arm] - r.epochs_done, 0)
                    for r in runs if not r.done)
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
    self.running: dict[int, tuple[subprocess.Popen, study_lib.RunStatus]] = {}
    self.failures: dict[str, int] = {}
    # Runs whose failure.txt could not be written: path -> why.
    self.unrecorded: dict[str, str] = {}
    # Runs stopped by a signal sent to them alone: unfinished, not retried.
    self.interrupted: set[str] = set()
    self._asked_to_stop: set[int] = set()  # the pids sent SIGTERM

  @property
  def asked_to_stop(self) -> bool:
    return bool(self._asked_to_stop)

  def start(self, queue: list[study_lib.RunStatus]) -> None:
    """Starts queued runs in the free slots."""
    for slot in range(len(self.shares)):
      if queue and slot not in self.running:
        run = queue.pop(0)
        command = study_lib.train_command(self.study, self.workdir, run.arm,
                                          run.seed)
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
      signals.end_process_group(process, ((signal.SIGKILL, 0.0),))

  def reap(self, queue: list[study_lib.RunStatus], stopping: bool) -> None:
    """Records the runs that ended; queues failed ones again while allowed."""
    for slot, (process, run) in list(self.running.items()):
      if process.poll() is None:
        continue
      del self.running[slot]
      if stopping:  # A stopped run has not failed.
        continue
      try:
        _record_outcome(run.path, process.returncode)
      except files.WriteError as e:  # Reported, and the run counts as failed.
        self.unrecorded[run.path] = str(e)
        print(f"study: the outcome of {run.path} (exit status "
              f"{process.returncode}) is not recorded: {e}", file=sys.stderr,
              flush=True)
      if process.returncode in INTERRUPTED_STATUSES:
        self.interrupted.add(run.path)
      elif process.returncode and not study_lib.read_run_status(
          self.workdir, run.arm, run.seed).diverged:
        self.failures[run.path] = self.failures.get(run.path, 0) + 1
        if self.failures[run.path] <= self.retries:
          queue.append(run)

  def running_paths(self) -> set[str]:
    return {run.path for _, run in self.running.values()}


@dataclasses.dataclass(frozen=True)
class StudyResult:
  """What `run_study` leaves: every run's status, and the signal that
  stopped the study (None when it ran to its end)."""

  runs: list[study_lib.RunStatus]
  stopped_by: int | None = None


@contextlib.contextmanager
def hold_study(workdir: str):
  """Holds the study folder's lock (the OS lock of a run's workdir,
  `train.devices.hold`): one runner per study at a time.

  Raises:
    study_lib.StudyError: another runner holds it, or the folder cannot be
      locked (it is read-only), in one line.
  """
  try:
    with devices.hold(workdir):
      yield
  except devices.WorkdirBusyError as e:
    holder = str(e).partition("(")[2].partition(")")[0]
    raise study_lib.StudyError(
        f"the study in {workdir} is being run by another `python -m study "
        f"run`{f' ({holder})' if holder else ''}: wait for it to end or "
        "stop it; nothing was changed.") from None
  except OSError as e:
    raise study_lib.StudyError(f"cannot lock the study folder {workdir} "
                               f"({e.strerror or e}).") from None


def run_study(study: ml_collections.ConfigDict, workdir: str, *,
              workers: int = 1, retries: int = 1, arms=None, seeds=None,
              poll_s: float = 5.0) -> StudyResult:
  """Runs every unfinished (arm, seed), ``workers`` at a time.

  One runner at a time holds the study folder (`hold_study`). A failed run
  is recorded (``failure.txt`` with the tail of its log) and the others go
  on; it is tried again, from its last checkpoint, up to ``retries`` times
  at the end of the queue, and by the next `run_study`. A run that diverged
  is an outcome, not retried; a run stopped by a signal sent to it is
  unfinished, not failed. A failure to record an outcome is reported, and
  the run counts as failed.

  Each run has its own session, so a Ctrl-C at the terminal reaches only
  this process. SIGINT or SIGTERM sends one SIGTERM to each run and waits
  for every run to save its checkpoint and exit; a second SIGINT (Ctrl-C
  again) kills the runs at once, which then resume from their latest
  complete checkpoint.

  Raises:
    study_lib.StudyError: another runner holds the study, or an unknown arm.
    files.WriteError: ``study.json`` could not be written.
  """
  # Unknown arms are errors before anything is written.
  study_lib.select_arms(study.arms, arms)
  with hold_study(workdir):
    pool, stopped_by = _run_pool(study, workdir, workers, retries, arms,
                                 seeds, poll_s)
  runs = [dataclasses.replace(run, failure=(
      f"exit status unknown; its outcome is not recorded: "
      f"{pool.unrecorded[run.path]}")) if run.path in pool.unrecorded
          and not run.done else run
          for run in study_lib.study_runs(study, workdir, arms, seeds)]
  return StudyResult(runs, stopped_by)


def _run_pool(study, workdir, workers, retries, arms, seeds, poll_s
              ) -> tuple[_Pool, int | None]:
  """`run_study`'s loop, in the study's lock."""
  queue = [r for r in study_lib.study_runs(study, workdir, arms, seeds)
           if not r.done]
  study_lib.save_study(study, workdir)
  shares = hosts.worker_shares(
      workers, sorted(os.sched_getaffinity(0)), hosts.visible_gpus(),
      tpu=hosts.host_has_tpu(), memory_fraction=float(os.environ.get(
          "XLA_PYTHON_CLIENT_MEM_FRACTION", hosts.JAX_MEMORY_FRACTION)))
  if len(shares) < workers:
    print("study: this host's TPU serves one process at a time: one run at "
          "a time.", file=sys.stderr, flush=True)
  pool = _Pool(study, workdir, shares, retries)
  progress = StudyProgress(len(shares), {
      arm: study_lib.run_config(study, arm, study.seeds[0]).num_epochs
      for arm in study.arms})
  with signals.StopOnSignals() as stop:
    while queue or pool.running:
      try:
        if stop.signum:
          if queue or not pool.asked_to_stop:
            print("study: stopping; each run saves a checkpoint (Ctrl-C "
                  "again kills them).", file=sys.stderr, flush=True)
          queue.clear()
          pool.stop()  # Each run once: those started since are asked too.
        pool.start(queue)
        pool.reap(queue, stopping=bool(stop.signum))
        progress.update(study_lib.study_runs(study, workdir, arms, seeds),
                        pool.running_paths())
        if pool.running:
          time.sleep(poll_s)
      except KeyboardInterrupt:  # Ctrl-C again: StopOnSignals let it through.
        print("study: killing the runs; each resumes from its latest "
              "complete checkpoint.", file=sys.stderr, flush=True)
        queue.clear()
        pool.kill()
  return pool, stop.signum


def pending_commands(study: ml_collections.ConfigDict,
                     workdir: str) -> list[str]:
  """One shell command per unfinished run, for any scheduler."""
  return [f"cd {shlex.quote(study_lib.REPO_ROOT)} && "
          + shlex.join(study_lib.train_command(study, workdir, r.arm, r.seed))
          for r in study_lib.study_runs(study, workdir) if not r.done]
