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
# The record a run writes when its loss turns non-finite and it stops
# (``on_nonfinite_loss="stop"``): the run's outcome, not a failure to retry.
DIVERGED_KIND = "diverged"


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
  records = metric_writers.read_records(metrics_file)
  latest = metric_writers.latest_records(records)
  return Run(path=path, name=name, config=read_config(path),
             epochs=tuple(latest.get("epoch", ())),
             starts=tuple(latest.get("run", ())),
             all_starts=tuple(r for r in records if r["kind"] == "run"),
             diverged=(latest.get(DIVERGED_KIND) or [None])[-1])


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


# Provenance key in the summary -> field of the "run" records.
PROVENANCE_FIELDS = {
    "commits": "commit", "tracked_changes": "tracked_changes",
    "versions": "versions", "data_fingerprints": "data_fingerprint",
    "device_kinds": "device_kind", "devices": "devices",
    "processes": "processes"}


def _distinct(values) -> list[Any]:
  """The distinct values in order of first appearance (dicts by content)."""
  kept = []
  for value in values:
    if value not in kept:
      kept.append(value)
  return kept


def provenance(runs: Sequence[Run]) -> dict[str, Any]:
  """Where an arm's runs came from, over every start of every run.

  Returns:
    For each key of `PROVENANCE_FIELDS`, the distinct values of that field
    in the runs' ``"kind": "run"`` records (None for a record without it, as
    written before the field existed); and ``restarts``: per run, in the
    order of the runs, its starts after the first.

  Example:
    >>> provenance([])["restarts"]
    []
  """
  summary = {key: _distinct(record.get(field) for run in runs
                            for record in run.all_starts)
             for key, field in PROVENANCE_FIELDS.items()}
  summary["restarts"] = [max(len(run.all_starts) - 1, 0) for run in runs]
  return summary
