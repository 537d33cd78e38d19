"""A run's metrics: ``metrics.jsonl`` (the durable record) and TensorBoard.

Each record is one JSON line ``{"kind": ..., "step": ..., <metric>: value}``,
flushed when written; a non-finite number is written as ``null``. A resumed
run appends, and `read_metrics` keeps the last record of each step. The same
numbers go to ``tensorboard/`` as scalars ``"<kind>/<metric>"`` when
tensorboardX is installed.
"""

import collections
import json
import math
import os
import warnings

from absl import logging
import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


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

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_records(workdir_or_file: str) -> list[dict]:
  """Every record of a run's ``metrics.jsonl``, in the order written.

  Unreadable lines (left by a killed run) are skipped, with a warning unless
  it is the last line.

  Raises:
    FileNotFoundError: there is no metrics file.
  """
  path = os.fspath(workdir_or_file)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILENAME)
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  records, unreadable = [], []
  for number, line in enumerate(lines, start=1):
    try:
      record = json.loads(line)
    except ValueError:
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
    if record["kind"] == "epoch" and record.get("epoch") is not None:
      position = record["epoch"]
    latest[record["kind"]][position] = record
  return {kind: [by_position[p] for p in sorted(by_position)]
          for kind, by_position in latest.items()}


def read_metrics(workdir_or_file: str) -> dict[str, list[dict]]:
  """`latest_records` of a run's `read_records`.

  Raises:
    FileNotFoundError: there is no metrics file.
  """
  return latest_records(read_records(workdir_or_file))


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
