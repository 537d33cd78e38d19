"""Metric logging for training runs: a JSON-lines file, TensorBoard, progress.

A training workdir holds two records of the same numbers:

* ``metrics.jsonl``: one JSON object per line, ``{"kind": ..., "step": ...,
  <metric>: <value>, ...}``. It is the durable record: every line is flushed
  when written, a resumed run appends to it, and :func:`read_metrics` reads it
  back (last record wins for a repeated step, a truncated line is skipped).
* ``tensorboard/``: TensorBoard event files (written with tensorboardX, no
  TensorFlow needed), one scalar ``"<kind>/<metric>"`` per metric.

:class:`Progress` reports the progress of one epoch on a terminal or in a log.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import json
import math
import numbers
import os
import sys
import time
from typing import Any, Callable, TextIO
import warnings

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"

# Fields that every record carries; a metric may not use these names.
_RESERVED_FIELDS = ("kind", "step")


def to_json_value(value: Any) -> bool | int | float | str | None:
  """Converts one metric value to a plain JSON value.

  Python, numpy and jax scalars (and arrays holding exactly one element, of
  any dtype including bfloat16) become ``int`` or ``float``; ``bool`` stays
  ``bool``; strings and ``None`` pass through. A non-finite float (NaN,
  +inf, -inf) becomes ``None``, which is written as JSON ``null``: strict
  JSON has no spelling for it.

  Args:
    value: the metric value.

  Returns:
    A value that ``json.dumps(..., allow_nan=False)`` accepts.

  Raises:
    TypeError: if the value is not a scalar.
  """
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    value = float(value)
    return value if math.isfinite(value) else None
  array = np.asarray(value)
  # Kinds other than bool, int, float: complex, object, string, time, and
  # "V", which includes bfloat16 (ml_dtypes) but also structured arrays.
  if array.size != 1 or array.dtype.kind in "cOSUMm":
    raise TypeError(
        f"a metric must be a number, got {type(value).__name__} with shape "
        f"{getattr(array, 'shape', None)} and dtype {array.dtype}")
  return to_json_value(array.reshape(()).item())


def _tensorboard_value(value: Any) -> float | None:
  """The value to plot in TensorBoard, or None for a non-numeric metric."""
  if value is None or isinstance(value, str):
    return None
  return float(np.asarray(value).reshape(()))


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard.

  Each call of :meth:`write` appends one line
  ``{"kind": kind, "step": step, **metrics}`` to ``metrics.jsonl`` and flushes
  it, so a crash loses nothing already written. A non-finite value is written
  as ``null`` (see :func:`to_json_value`). If the file already exists (a
  resumed run), records are appended; a truncated last line left by a killed
  run is closed with a newline first, so it cannot swallow the next record.

  Each numeric metric also goes to TensorBoard as the scalar
  ``f"{kind}/{name}"`` at ``step`` (non-finite values included, so that a
  divergence shows). TensorBoard events are written by a background thread
  and reach the disk every ``tensorboard_flush_secs`` and on :meth:`close`.

  With ``enabled=False`` (every process but the first in a multi-host run)
  every method does nothing and no file or directory is created.

  Example::

    with MetricWriter(workdir) as writer:
      writer.write("train", step, {"loss": loss, "beta": beta})
  """

  def __init__(
      self,
      workdir: str | os.PathLike[str],
      *,
      enabled: bool = True,
      tensorboard: bool = True,
      purge_step: int | None = None,
      tensorboard_flush_secs: float = 30.0,
  ):
    """Opens (creating it if needed) the workdir's metric files.

    Args:
      workdir: the training workdir.
      enabled: if False, the writer does nothing at all.
      tensorboard: whether to write TensorBoard event files too.
      purge_step: on a resumed run, the step training restarts from: tells
        TensorBoard to hide events of the earlier run with ``step >=
        purge_step`` (those steps are trained, and logged, again). ``None`` or
        0 for a fresh run. ``metrics.jsonl`` needs no purge: readers keep the
        last record for each step.
      tensorboard_flush_secs: how often the TensorBoard thread flushes.
    """
    self._enabled = enabled
    self._closed = False
    self._jsonl_file = None
    self._summary_writer = None
    if not enabled:
      return
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    self._jsonl_file = _open_for_append(os.path.join(workdir, METRICS_FILENAME))
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top

      self._summary_writer = tensorboardX.SummaryWriter(
          logdir=os.path.join(workdir, TENSORBOARD_DIRNAME),
          purge_step=purge_step or None,
          flush_secs=tensorboard_flush_secs,
      )

  @property
  def enabled(self) -> bool:
    return self._enabled

  def write(
      self, kind: str, step: int, metrics: Mapping[str, Any]
  ) -> None:
    """Writes one record of metrics.

    Args:
      kind: the kind of record, e.g. ``"train"`` or ``"epoch"``; also the
        TensorBoard tag prefix.
      step: the global training step the metrics belong to.
      metrics: metric name to value (Python, numpy or jax scalars).

    Raises:
      ValueError: if a metric is called ``kind`` or ``step``, or the writer
        is closed.
      TypeError: if a value is not a scalar.
    """
    if not self._enabled:
      return
    if self._closed:
      raise ValueError("write() on a closed MetricWriter")
    clashes = [name for name in _RESERVED_FIELDS if name in metrics]
    if clashes:
      raise ValueError(f"metric names {clashes} are reserved for the record")
    step = int(step)
    record = {"kind": str(kind), "step": step}
    record.update({str(name): to_json_value(v) for name, v in metrics.items()})
    self._jsonl_file.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl_file.flush()
    if self._summary_writer is not None:
      for name, value in metrics.items():
        scalar = _tensorboard_value(value)
        if scalar is not None:
          self._summary_writer.add_scalar(f"{kind}/{name}", scalar, step)

  def flush(self) -> None:
    """Flushes both outputs (TensorBoard: what its thread has written)."""
    if not self._enabled or self._closed:
      return
    self._jsonl_file.flush()
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    """Writes out everything and closes the files. Safe to call twice."""
    if not self._enabled or self._closed:
      return
    self._closed = True
    self._jsonl_file.close()
    if self._summary_writer is not None:
      self._summary_writer.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _open_for_append(path: str) -> TextIO:
  """Opens a JSON-lines file for appending, ending a truncated last line."""
  needs_newline = False
  if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path, "rb") as existing:
      existing.seek(-1, os.SEEK_END)
      needs_newline = existing.read(1) != b"\n"
  jsonl_file = open(path, "a", encoding="utf-8")
  if needs_newline:
    jsonl_file.write("\n")
    jsonl_file.flush()
  return jsonl_file


def metrics_path(workdir_or_file: str | os.PathLike[str]) -> str:
  """The metrics file of a workdir (or the path itself if it is a file)."""
  path = os.fspath(workdir_or_file)
  if os.path.isdir(path):
    return os.path.join(path, METRICS_FILENAME)
  return path


def record_position(record: Mapping[str, Any]) -> int | float:
  """Where a record sits in its kind: the epoch of an epoch record, else step.

  Two records of the same kind at the same position are the same record
  logged twice (by a run resumed from an earlier checkpoint); the later wins.
  """
  if record.get("kind") == "epoch" and record.get("epoch") is not None:
    return record["epoch"]
  return record["step"]


def read_metrics(
    workdir_or_file: str | os.PathLike[str],
) -> dict[str, list[dict[str, Any]]]:
  """Reads a ``metrics.jsonl`` file back.

  Records are grouped by ``kind``. Within a kind, a record repeated at the
  same position (the ``epoch`` of an ``"epoch"`` record, the ``step`` of any
  other) keeps only its last occurrence, and records are sorted by position.
  Values written as ``null`` (non-finite numbers) come back as ``None``.

  A line that is not valid JSON is skipped: the last line may be truncated by
  a run killed while writing it; the same line inside the file (the run was
  resumed afterwards) is skipped with a warning.

  Args:
    workdir_or_file: a training workdir, or the path of a metrics file.

  Returns:
    ``{kind: [record, ...]}``, each record a dict as written.

  Raises:
    FileNotFoundError: if there is no metrics file.
  """
  path = metrics_path(workdir_or_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no metrics file {path!r}")
  with open(path, encoding="utf-8") as jsonl_file:
    lines = jsonl_file.read().splitlines()
  latest = collections.defaultdict(dict)
  skipped_inside = []
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    record = _parse_record(line)
    if record is None:
      if line_number != len(lines):
        skipped_inside.append(line_number)
      continue
    latest[record["kind"]][record_position(record)] = record
  if skipped_inside:
    warnings.warn(
        f"{path}: skipped unreadable lines {skipped_inside} (left by a run "
        "killed while writing them)", stacklevel=2)
  return {
      kind: [by_position[p] for p in sorted(by_position)]
      for kind, by_position in latest.items()
  }


def _parse_record(line: str) -> dict[str, Any] | None:
  """A record parsed from one line, or None if the line is not a record."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  if (not isinstance(record, dict) or not isinstance(record.get("kind"), str)
      or not isinstance(record.get("step"), int)):
    return None
  return record


# Short display names for stats given to Progress.update.
_STAT_DISPLAY_NAMES = {
    "learning_rate": "lr",
    "images_per_sec": "img/s",
    "mean_loss": "mean",
}


def format_duration(seconds: float) -> str:
  """Formats seconds as ``M:SS`` or ``H:MM:SS``.

  >>> format_duration(83.4)
  '1:23'
  >>> format_duration(3725)
  '1:02:05'
  """
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}"


def format_stat(name: str, value: Any) -> str:
  """Formats one stat for a progress line.

  >>> format_stat("loss", 1.234567)
  'loss 1.235'
  >>> format_stat("images_per_sec", 2345.6)
  'img/s 2346'
  """
  display_name = _STAT_DISPLAY_NAMES.get(name, name)
  try:
    number = float(np.asarray(value).reshape(()))
  except (TypeError, ValueError):
    return f"{display_name} {value}"
  if abs(number) >= 1000:
    return f"{display_name} {number:.0f}"
  return f"{display_name} {number:.4g}"


class Progress:
  """Reports the progress of one epoch: step/total, stats, speed and ETA.

  On a terminal, one line is redrawn in place with ``\\r``, at most
  ``max_redraws_per_sec`` times per second. Elsewhere (a log file, a batch
  system's output) whole lines are printed, one whenever
  ``every_n_seconds`` have passed or another ``every_fraction`` of the epoch
  is done since the last line, so the log stays readable. :meth:`close` ends
  the epoch with a final line that shows the epoch's duration.

  Speed is measured from the first :meth:`update` on, so the compilation in
  the first step does not spoil it; with ``batch_size`` it is shown in
  images per second.

  Example::

    with Progress(steps_per_epoch, epoch, batch_size=128) as progress:
      for i in range(steps_per_epoch):
        ...
        progress.update(i + 1, loss=loss, beta=beta)
  """

  def __init__(
      self,
      total_steps: int,
      epoch: int,
      *,
      stream: TextIO | None = None,
      is_terminal: bool | None = None,
      batch_size: int | None = None,
      every_n_seconds: float = 30.0,
      every_fraction: float = 0.1,
      max_redraws_per_sec: float = 10.0,
      enabled: bool = True,
      clock: Callable[[], float] = time.monotonic,
  ):
    """Starts the report of one epoch.

    Args:
      total_steps: the number of steps in the epoch.
      epoch: the epoch's number, shown at the start of each line.
      stream: where to write; ``sys.stderr`` if None.
      is_terminal: whether to redraw one line; ``stream.isatty()`` if None.
      batch_size: images per step (global), to show images per second.
      every_n_seconds: off a terminal, the longest time between lines.
      every_fraction: off a terminal, the largest fraction of the epoch
        between lines.
      max_redraws_per_sec: on a terminal, the most redraws per second.
      enabled: if False, nothing is written (processes but the first).
      clock: returns the time in seconds (for tests).
    """
    self._total_steps = int(total_steps)
    self._epoch = epoch
    self._stream = sys.stderr if stream is None else stream
    self._is_terminal = (
        _is_terminal(self._stream) if is_terminal is None else is_terminal)
    self._batch_size = batch_size
    self._every_n_seconds = every_n_seconds
    self._every_steps = max(1, math.ceil(every_fraction * self._total_steps))
    self._min_redraw_interval = 1.0 / max_redraws_per_sec
    self._enabled = enabled
    self._clock = clock
    self._start_time = clock()
    self._first_update = None  # (time, step) of the first update.
    self._last_update = None  # (time, step, stats) of the latest update.
    self._last_shown = None  # (time, step) of the latest line written.
    self._line_width = 0
    self._closed = False

  def update(self, step_in_epoch: int, **stats: Any) -> None:
    """Records that ``step_in_epoch`` steps (1..total) of the epoch are done.

    Args:
      step_in_epoch: the number of steps done in this epoch.
      **stats: values to show, e.g. ``loss=..., beta=...``, in that order.
    """
    if not self._enabled or self._closed:
      return
    now = self._clock()
    if self._first_update is None:
      self._first_update = (now, step_in_epoch)
    self._last_update = (now, step_in_epoch, stats)
    if self._should_show(now, step_in_epoch):
      self._show(now, step_in_epoch, stats)

  def close(self) -> None:
    """Shows the final state and ends the line. Safe to call twice."""
    if not self._enabled or self._closed:
      return
    self._closed = True
    if self._last_update is None:
      return
    now, step, stats = self._last_update
    if self._last_shown is None or self._last_shown[1] != step or (
        step < self._total_steps):
      self._show(self._clock(), step, stats, final=True)
    if self._is_terminal:
      self._stream.write("\n")
      self._stream.flush()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _should_show(self, now: float, step: int) -> bool:
    if self._last_shown is None:
      # A terminal shows the first step at once; a log waits for a reason.
      if self._is_terminal:
        return True
      shown_time, shown_step = self._start_time, 0
    else:
      shown_time, shown_step = self._last_shown
    if self._is_terminal:
      return (step >= self._total_steps
              or now - shown_time >= self._min_redraw_interval)
    return (step >= self._total_steps
            or now - shown_time >= self._every_n_seconds
            or step // self._every_steps > shown_step // self._every_steps)

  def _show(
      self, now: float, step: int, stats: Mapping[str, Any],
      final: bool = False,
  ) -> None:
    line = self.format_line(now, step, stats, final=final)
    self._last_shown = (now, step)
    if self._is_terminal:
      padding = " " * max(0, self._line_width - len(line))
      self._line_width = len(line)
      self._stream.write("\r" + line + padding)
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def steps_per_sec(self, now: float, step: int) -> float:
    """Steps per second since the first update (NaN before there is one)."""
    if self._first_update is None:
      return math.nan
    first_time, first_step = self._first_update
    if now <= first_time or step <= first_step:
      return math.nan
    return (step - first_step) / (now - first_time)

  def format_line(
      self, now: float, step: int, stats: Mapping[str, Any],
      final: bool = False,
  ) -> str:
    """The progress line for ``step`` steps done at time ``now``."""
    width = len(str(self._total_steps))
    percent = 100.0 * step / max(1, self._total_steps)
    parts = [f"epoch {self._epoch} [{step:>{width}}/{self._total_steps} "
             f"{percent:3.0f}%]"]
    parts.extend(format_stat(name, value) for name, value in stats.items())
    rate = self.steps_per_sec(now, step)
    if self._batch_size and math.isfinite(rate):
      parts.append(format_stat("images_per_sec", rate * self._batch_size))
    if final or step >= self._total_steps:
      parts.append(f"took {format_duration(now - self._start_time)}")
    else:
      remaining = (self._total_steps - step) / rate if rate > 0 else math.nan
      parts.append(f"eta {format_duration(remaining)}")
    return "  ".join(parts)


def _is_terminal(stream: TextIO) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False
