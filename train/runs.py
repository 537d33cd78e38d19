"""Reading training workdirs: a run's config, its metrics and its starts.

A training workdir holds ``config.json`` (the resolved config,
`CONFIG_FILENAME`), ``metrics.jsonl`` (every record, written by
`train.metric_writers`) and ``checkpoints/`` (`CHECKPOINTS_DIRNAME`).
`load_run` reads one workdir as a `Run`; `load_runs` reads several for
`train.plot` and `train.study`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

from train import metric_writers

CONFIG_FILENAME = "config.json"
CHECKPOINTS_DIRNAME = "checkpoints"


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
      from (the last one logged); `run_records` has every start.
  """
  path: str
  name: str
  config: Mapping[str, Any]
  epochs: Sequence[Mapping[str, Any]] = ()
  starts: Sequence[Mapping[str, Any]] = ()

  def curve(self, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of an epoch-record field; NaN where missing."""
    epochs = np.array([record["epoch"] for record in self.epochs], float)
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
    return json.load(f)


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
  if os.path.basename(path) == metric_writers.METRICS_FILENAME:
    path = os.path.dirname(path) or "."
  metrics_file = os.path.join(path, metric_writers.METRICS_FILENAME)
  if not os.path.isfile(metrics_file):
    what = "does not exist" if not os.path.exists(path) else (
        f"has no {metric_writers.METRICS_FILENAME}")
    raise NotARunError(f"{path} {what}: it is not a training workdir")
  name = os.path.basename(os.path.normpath(os.path.abspath(path)))
  records = metric_writers.read_metrics(metrics_file)
  return Run(path=path, name=name, config=read_config(path),
             epochs=tuple(records.get("epoch", ())),
             starts=tuple(records.get("run", ())))


def load_runs(
    run_dirs: Iterable[str | os.PathLike[str]],
    labels: Sequence[str] | None = None,
) -> tuple[list[Run], list[str] | None, list[str]]:
  """Reads workdirs, dropping repeats and runs without a finished epoch.

  Args:
    run_dirs: training workdirs.
    labels: optional, one label per workdir (see `train.plot.group_runs`).

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


def run_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Every ``"kind": "run"`` record of a run's ``metrics.jsonl``, as written.

  Each start of a run writes one. `train.metric_writers.read_metrics` keeps
  one record per step, so it would count two starts from the same checkpoint
  once; this reads the raw lines. Unreadable lines (a killed run's last) are
  skipped; a missing file has no records.
  """
  records = []
  try:
    with open(os.path.join(path, metric_writers.METRICS_FILENAME),
              encoding="utf-8", errors="replace") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict) and record.get("kind") == "run":
          records.append(record)
  except FileNotFoundError:
    pass
  return records
