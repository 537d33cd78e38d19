"""A run's record: the files of its workdir, written and read in one place.

A training workdir holds ``config.json`` (the resolved config,
`CONFIG_FILENAME`), ``metrics.jsonl`` (every record, `METRICS_FILENAME`),
``checkpoints/`` (`CHECKPOINTS_DIRNAME`) and ``tensorboard/``. Each record of
``metrics.jsonl`` is one JSON line ``{"kind": ..., "step": ..., <field>:
value}``, flushed when written; a non-finite number is written as ``null``.
The kinds (`RUN_KIND`, `TRAIN_KIND`, `EPOCH_KIND`, `DIVERGED_KIND`) and the
epoch record's field names (`split_field`, `TRAIN_LOSS`, ...) are defined
here, for the loop that writes them and for the study and plot code that
reads them. A resumed run appends, and `latest_records` keeps the last
record of each step. `MetricWriter` writes (and to TensorBoard as scalars
``"<kind>/<field>"`` when tensorboardX is installed); `load_run` reads a
workdir as a `Run`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import math
import os
from typing import Any
import warnings

from absl import logging
import numpy as np

CONFIG_FILENAME = "config.json"
METRICS_FILENAME = "metrics.jsonl"
CHECKPOINTS_DIRNAME = "checkpoints"
TENSORBOARD_DIRNAME = "tensorboard"

# The kinds of record: a start of the run (with its provenance), a logged
# training step, an epoch's end (with its evaluations), and the end of a run
# whose loss turned non-finite (``on_nonfinite_loss="stop"``): its outcome,
# which a study does not retry.
RUN_KIND = "run"
TRAIN_KIND = "train"
EPOCH_KIND = "epoch"
DIVERGED_KIND = "diverged"

# Fields of the epoch record.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
EPOCH_TIME_S = "epoch_time_s"
PHASE_BELOW_FRACTION = "phase_below_fraction"
PHASE_ABOVE_FRACTION = "phase_above_fraction"
LOSS_BELOW_MEAN_FRACTION = "loss_below_mean_fraction"
# The evaluated splits, and what each evaluation measures.
SPLITS = ("val", "test")
MEASURES = ("loss", "accuracy", "bits_per_char")
# Fields of the train and run records; a run record also holds where the
# run's numbers come from (`train.provenance`).
IMAGES_PER_SEC = "images_per_sec"
TOKENS_PER_SEC = "tokens_per_sec"  # characters predicted, of `char_lm`
TIME_TO_FIRST_STEP_S = "time_to_first_step_s"
PROVENANCE_FIELDS = ("commit", "tracked_changes", "versions",
                     "data_fingerprint", "device_kind", "devices", "processes",
                     "cpu")


def split_field(split: str, measure: str) -> str:
  """The epoch-record field of one evaluation, e.g. ``"test_accuracy"``.

  >>> split_field("val", "loss")
  'val_loss'
  """
  if split not in SPLITS or measure not in MEASURES:
    raise ValueError(f"No field for split {split!r} and measure {measure!r}: "
                     f"the splits are {SPLITS}, the measures {MEASURES}.")
  return f"{split}_{measure}"


TEST_ACCURACY = split_field("test", "accuracy")
VAL_ACCURACY = split_field("val", "accuracy")


def train_fields(step: int, values: dict, steps_per_epoch: int,
                 throughput: dict[str, float]) -> dict[str, float]:
  """A train record: a logged step's metrics, its epoch and the rate
  (``{IMAGES_PER_SEC: ...}`` or ``{TOKENS_PER_SEC: ...}``; none at an
  epoch's first step)."""
  fields = {k: float(v) for k, v in values.items()
            if k not in ("below_mean", "loss_below_mean")}
  fields[EPOCH] = step / steps_per_epoch
  return {**fields, **throughput}


def epoch_fields(epoch: int, sums: dict[str, Any],
                 controlled: tuple[str, ...], epoch_time_s: float | None
                 ) -> dict[str, float]:
  """An epoch record before its evaluations, from the epoch's sums (the
  loss of its finite steps, their count and phases; `train.loop`)."""
  num_steps = max(sums["steps"], 1)
  fields = {EPOCH: epoch,
            TRAIN_LOSS: float(sums["loss"]) / num_steps,
            EPOCH_TIME_S: epoch_time_s}
  if controlled:
    below = sums["below_mean"] / num_steps
    fields.update({
        PHASE_BELOW_FRACTION: below,
        PHASE_ABOVE_FRACTION: 1 - below,
        LOSS_BELOW_MEAN_FRACTION: sums["loss_below_mean"] / num_steps})
  return fields


def _json_value(value):
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, dict):
    return {str(k): _json_value(v) for k, v in value.items()}
  number = np.asarray(value).reshape(()).item()
  if isinstance(number, (bool, int)):
    return number
  return float(number) if math.isfinite(number) else None


def _summary_writer(workdir: str, purge_step: int | None):
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("tensorboardX is not installed: no TensorBoard events "
                    "(metrics.jsonl has every metric).")
    return None
  return tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIRNAME),
                                    purge_step=purge_step, flush_secs=30)


def _close_summary(summary) -> None:
  """Closes a tensorboardX writer; warns, not raises, when it cannot flush.

  On a full disk tensorboardX's ``close`` raises in its final flush and
  leaves its writer thread waiting on a queue that the interpreter closes at
  exit, which prints a traceback; so that thread is stopped here too.
  metrics.jsonl, not TensorBoard, is the run's record.
  """
  try:
    summary.close()
  except OSError as error:
    logging.warning("TensorBoard events may be incomplete: %s", error)
    for file_writer in summary.all_writers.values():
      worker = getattr(file_writer.event_writer, "_worker", None)
      if worker is not None and worker.is_alive():
        worker.stop()


class MetricWriter:
  """Appends records to ``workdir/metrics.jsonl`` and TensorBoard.

  Args:
    workdir: The run's directory.
    enabled: False on every process but the first: nothing is written.
    tensorboard: Whether to write TensorBoard events too.
    resume_step: The step a resumed run restarts from (it logged that step
      before): TensorBoard hides the earlier run's events after it, which
      the resumed run logs again.
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True, resume_step: int = 0):
    self._file = self._summary = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(  # noqa: SIM115 (open for the run; close() closes it)
        os.path.join(workdir, METRICS_FILENAME), "a+b")
    if self._file.seek(0, os.SEEK_END) > 0:  # A killed run may have left
      self._file.seek(-1, os.SEEK_END)  # half a line.
      if self._file.read(1) != b"\n":
        self._file.write(b"\n")
    if tensorboard:
      self._summary = _summary_writer(
          workdir, resume_step + 1 if resume_step else None)

  def write(self, kind: str, step: int, metrics: dict) -> None:
    """Writes one record; ``kind`` and ``step`` may not be metric names."""
    if self._file is None:
      return
    if {"kind", "step"} & metrics.keys():
      raise ValueError("'kind' and 'step' are reserved for the record.")
    values = {name: _json_value(v) for name, v in metrics.items()}
    self._file.write(json.dumps({"kind": kind, "step": int(step), **values},
                                allow_nan=False).encode() + b"\n")
    self._file.flush()
    for name, value in metrics.items():
      if self._summary is not None and value is not None and not isinstance(
          value, (str, dict)):
        self._summary.add_scalar(f"{kind}/{name}", float(value), int(step))

  def close(self) -> None:
    """Closes both outputs; TensorBoard's even when the file's close fails."""
    file, summary = self._file, self._summary
    self._file = self._summary = None
    try:
      if file is not None:
        file.close()
    finally:
      if summary is not None:
        _close_summary(summary)

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_records(workdir_or_file: str) -> list[dict]:
  """Every record of a run's ``metrics.jsonl``, in the order written.

  Unreadable lines (left by a killed run, or bytes that are not UTF-8 JSON)
  are skipped, with a warning naming them unless it is the last line.

  Raises:
    FileNotFoundError: there is no metrics file.
    OSError: it cannot be read.
  """
  path = os.fspath(workdir_or_file)
  if os.path.basename(path) != METRICS_FILENAME and not os.path.isfile(path):
    path = os.path.join(path, METRICS_FILENAME)
  with open(path, "rb") as f:
    lines = f.read().splitlines()
  records, unreadable = [], []
  for number, line in enumerate(lines, start=1):
    try:
      record = json.loads(line.decode())
    except ValueError:  # UnicodeDecodeError too.
      record = None
    if isinstance(record, dict) and {"kind", "step"} <= record.keys():
      records.append(record)
    elif line.strip() and number < len(lines):
      unreadable.append(number)
  if unreadable:
    warnings.warn(f"{path}: skipped unreadable lines {unreadable}",
                  stacklevel=3)
  return records


def latest_records(records: list[dict]) -> dict[str, list[dict]]:
  """``{kind: [record, ...]}`` by step (by epoch for "epoch" records).

  A record logged again at the same place (by a resumed run) keeps its last
  version.
  """
  latest = collections.defaultdict(dict)
  for record in records:
    position = record["step"]
    if record["kind"] == EPOCH_KIND and record.get(EPOCH) is not None:
      position = record[EPOCH]
    latest[record["kind"]][position] = record
  return {kind: [by_position[p] for p in sorted(by_position)]
          for kind, by_position in latest.items()}


def read_metrics(workdir_or_file: str) -> dict[str, list[dict]]:
  """`latest_records` of a run's `read_records`.

  Raises:
    FileNotFoundError: there is no metrics file.
  """
  return latest_records(read_records(workdir_or_file))


# Fields that measure time or speed, not the training's numbers.
TIMING_FIELDS = (EPOCH_TIME_S, IMAGES_PER_SEC, TOKENS_PER_SEC,
                 TIME_TO_FIRST_STEP_S)


def differences(workdir: str, other: str, until_step: int | None = None,
                kinds: tuple[str, ...] = (TRAIN_KIND, EPOCH_KIND)
                ) -> tuple[int, list[str]]:
  """Two runs' train and epoch records compared, value by value.

  Every field but the timings (`TIMING_FIELDS`) must be equal, bit for bit
  as JSON wrote it; a record or field only one run has is a difference.

  Args:
    workdir: a run's workdir (or its ``metrics.jsonl``).
    other: the run to compare it with.
    until_step: compare the steps up to this one only (a short run against
      a longer one's record).
    kinds: the kinds of record to compare (a run stopped and resumed logs
      train records at the steps where it stopped: compare its epochs).

  Returns:
    ``(values compared, one line per difference)``.
  """
  records = [read_metrics(path) for path in (workdir, other)]
  compared, found = 0, []
  for kind in kinds:
    ours, theirs = ({r["step"]: r for r in run.get(kind, [])
                     if until_step is None or r["step"] <= until_step}
                    for run in records)
    for step in sorted(ours.keys() | theirs.keys()):
      a, b = ours.get(step, {}), theirs.get(step, {})
      for field in sorted((a.keys() | b.keys()) - set(TIMING_FIELDS)):
        compared += 1
        if a.get(field, "missing") != b.get(field, "missing"):
          found.append(f"{kind} step {step} {field}: "
                       f"{a.get(field, 'missing')} against "
                       f"{b.get(field, 'missing')}")
  return compared, found


class NotARunError(ValueError):
  """A directory that is not a training workdir (no metrics.jsonl)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run, read from its workdir.

  Attributes:
    path: the workdir.
    name: the workdir's base name.
    config: the run's config as a nested dict (empty without config.json).
    epochs: the epoch records, one per epoch (the last one logged), sorted.
    starts: the ``"kind": "run"`` records, one per step the run started
      from (the last one logged).
    all_starts: every ``"kind": "run"`` record, as written: each start of
      the run wrote one, two from the same checkpoint too.
    diverged: the last ``"kind": "diverged"`` record (the step at which the
      training loss was non-finite and the run stopped), or None.
  """
  path: str
  name: str
  config: Mapping[str, Any]
  epochs: Sequence[Mapping[str, Any]] = ()
  starts: Sequence[Mapping[str, Any]] = ()
  all_starts: Sequence[Mapping[str, Any]] = ()
  diverged: Mapping[str, Any] | None = None

  def curve(self, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of an epoch-record field; NaN where missing."""
    epochs = np.array([record[EPOCH] for record in self.epochs], float)
    values = np.array([math.nan if record.get(field) is None
                       else float(record[field]) for record in self.epochs])
    return epochs, values


def read_config(workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """A workdir's ``config.json`` as a nested dict; empty when it has none.

  Raises:
    OSError, ValueError: the file exists but cannot be read as JSON.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e


def load_run(path: str | os.PathLike[str]) -> Run:
  """Reads a training workdir.

  Args:
    path: the workdir (or its ``metrics.jsonl``).

  Returns:
    The run; its ``epochs`` may be empty if no epoch has finished yet.

  Raises:
    NotARunError: if there is no ``metrics.jsonl`` at ``path``.
    OSError, ValueError: for an unreadable ``config.json``.
  """
  path = os.fspath(path)
  if os.path.basename(path) == METRICS_FILENAME:
    path = os.path.dirname(path) or "."
  metrics_file = os.path.join(path, METRICS_FILENAME)
  if not os.path.lexists(metrics_file):
    what = "does not exist" if not os.path.exists(path) else (
        f"has no {METRICS_FILENAME}")
    raise NotARunError(f"{path} {what}: it is not a training workdir")
  name = os.path.basename(os.path.normpath(os.path.abspath(path)))
  records = read_records(metrics_file)
  latest = latest_records(records)
  return Run(path=path, name=name, config=read_config(path),
             epochs=tuple(latest.get(EPOCH_KIND, ())),
             starts=tuple(latest.get(RUN_KIND, ())),
             all_starts=tuple(r for r in records if r["kind"] == RUN_KIND),
             diverged=(latest.get(DIVERGED_KIND) or [None])[-1])


def load_runs(
    run_dirs: Iterable[str | os.PathLike[str]],
    labels: Sequence[str] | None = None,
) -> tuple[list[Run], list[str] | None, list[str]]:
  """Reads workdirs, dropping repeats and runs without a finished epoch.

  Args:
    run_dirs: training workdirs.
    labels: optional, one label per workdir (see `study.groups.group_runs`).

  Returns:
    ``(runs, their labels or None, paths skipped for lack of an epoch)``.

  Raises:
    NotARunError: for a directory without ``metrics.jsonl``.
    OSError, ValueError: for an unreadable ``config.json``.
  """
  run_dirs = list(run_dirs)
  if labels is not None and len(labels) != len(run_dirs):
    raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run dirs")
  runs, kept_labels, skipped, seen = [], [], [], set()
  for index, run_dir in enumerate(run_dirs):
    run = load_run(run_dir)
    if os.path.abspath(run.path) in seen:
      continue
    seen.add(os.path.abspath(run.path))
    if not run.epochs:
      skipped.append(run.path)
      continue
    runs.append(run)
    if labels is not None:
      kept_labels.append(labels[index])
  return runs, (kept_labels if labels is not None else None), skipped
