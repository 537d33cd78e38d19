"""Runs grouped into experiments, labelled, and tabulated.

Runs whose configs differ only in their seed (and in logging, checkpoints,
devices or evaluation: `train.config.NON_EXPERIMENT_FIELDS`) are one
experiment (`group_runs`), labelled by the config fields that tell the
groups apart (e.g. ``lcam 0.95/0.9``). `summary_table` prints the final and
best test accuracy of each group (mean ± std over seeds), as
`study.arms.final_and_best` defines them; `study.plot` draws the groups.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import os
import re
from typing import Any
import warnings

from flax import traverse_util
import numpy as np

from study import arms
from study import statistics
from train import config as config_lib
from train import record

# Where a differing field goes in a group label; lower comes first.
_LABEL_ORDER = ("optimizer", "model", "data", "schedule")


@dataclasses.dataclass(frozen=True)
class RunGroup:
  """Runs of one experiment that differ only in their seed.

  Attributes:
    label: a short name that tells the group apart from the others.
    runs: the runs, in the order given.
  """
  label: str
  runs: Sequence[record.Run]


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(config, sep=".")


def experiment_key(run: record.Run) -> str:
  """A key equal for runs of the same experiment (configs equal but seeds).

  A run without a config is an experiment of its own.
  """
  if not run.config:
    return "path:" + os.path.abspath(run.path)
  fields = {key: value for key, value in _flat(run.config).items()
            if config_lib.identifies_experiment(key)}
  return json.dumps(fields, sort_keys=True, default=str)


def group_runs(
    runs: Iterable[record.Run], labels: Sequence[str] | None = None
) -> list[RunGroup]:
  """Groups runs that differ only in their seed, and labels the groups.

  Args:
    runs: the runs, in the order to show them.
    labels: optional, one group label per run: runs with the same label form
      one group, with that label, whatever their configs.

  Returns:
    The groups, in the order of their first run.
  """
  runs = list(runs)
  if labels is not None and len(labels) != len(runs):
    raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
  keys = [experiment_key(run) for run in runs] if labels is None else [
      str(label) for label in labels]
  members = {}
  for run, key in zip(runs, keys):
    members.setdefault(key, []).append(run)
  if labels is not None:
    return [RunGroup(label=label, runs=tuple(group))
            for label, group in members.items()]
  configs = [_flat(group[0].config) for group in members.values()]
  differing = differing_config_keys(configs)
  groups = []
  for members_of_group, config in zip(members.values(), configs):
    label = config_label(config, differing) or name_label(members_of_group)
    groups.append(RunGroup(label=label, runs=tuple(members_of_group)))
  return _make_labels_unique(groups)


def differing_config_keys(
    flat_configs: Sequence[Mapping[str, Any]]
) -> list[str]:
  """The fields (not seeds or paths) whose values differ between configs.

  A field missing from some configs but not all counts as differing. The
  fields come in label order: optimizer, model, data, schedule, the rest.
  """
  if len(flat_configs) < 2:
    return []
  differing = []
  for key in set().union(*flat_configs):
    if not config_lib.identifies_experiment(key):
      continue
    values = {json.dumps(config[key], sort_keys=True, default=str)
              if key in config else "<missing>" for config in flat_configs}
    if len(values) > 1:
      differing.append(key)

  def order(key):
    top = key.split(".", 1)[0]
    rank = _LABEL_ORDER.index(top) if top in _LABEL_ORDER else len(_LABEL_ORDER)
    return (rank, not key.endswith("name"), key)

  return sorted(differing, key=order)


def format_config_value(value: Any) -> str:
  """Formats a config value for a label.

  >>> [format_config_value(v) for v in (0.95, 1e-4, True, "cifar10", [1, 2])]
  ['0.95', '0.0001', 'True', 'cifar10', '[1, 2]']
  """
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value)
  return str(value)


def config_label(
    flat_config: Mapping[str, Any], differing: Sequence[str]
) -> str:
  """A short label from the fields that tell this config's group apart.

  Fields named ``name`` show only their value; a ``beta_below`` /
  ``beta_above`` pair shows as ``below/above`` after its optimizer's name;
  other fields show as ``leaf=value``.

  >>> config = {"optimizer.name": "lcam", "optimizer.beta_below": 0.95,
  ...           "optimizer.beta_above": 0.9, "schedule.name": "step"}
  >>> config_label(config, ["optimizer.beta_below", "optimizer.beta_above"])
  'lcam 0.95/0.9'
  >>> config_label(config, ["schedule.name"])
  'step'
  """
  parts = []
  shown = set()
  for key in differing:
    if key in shown or key not in flat_config:
      continue
    parent, _, leaf = key.rpartition(".")
    prefix = f"{parent}." if parent else ""
    if leaf in ("beta_below", "beta_above"):
      below_key, above_key = prefix + "beta_below", prefix + "beta_above"
      name_key = prefix + "name"
      if name_key in flat_config and name_key not in shown:
        parts.append(format_config_value(flat_config[name_key]))
        shown.add(name_key)
      parts.append(
          f"{format_config_value(flat_config.get(below_key, '?'))}/"
          f"{format_config_value(flat_config.get(above_key, '?'))}")
      shown.update((below_key, above_key))
    elif leaf == "name":
      parts.append(format_config_value(flat_config[key]))
      shown.add(key)
    else:
      parts.append(f"{leaf}={format_config_value(flat_config[key])}")
      shown.add(key)
  return " ".join(parts)


def name_label(runs: Sequence[record.Run]) -> str:
  """A label from the runs' directory names, without a seed suffix.

  >>> runs = [record.Run(path=n, name=n, config={}) for n in
  ...         ("wrn_lcam_seed0", "wrn_lcam_seed1")]
  >>> name_label(runs)
  'wrn_lcam'
  """
  names = [run.name for run in runs]
  if len(names) == 1:
    return names[0]
  common = os.path.commonprefix(names)  # noqa: RUF071 (names, not paths)
  common = re.sub(r"[_\-.]+(seed|s)?$", "", common)
  return common if len(common) >= 2 else ",".join(names)


def _make_labels_unique(groups: list[RunGroup]) -> list[RunGroup]:
  """Appends the first run's name to labels shared by several groups."""
  counts = collections.Counter(group.label for group in groups)
  return [
      group if counts[group.label] == 1 else dataclasses.replace(
          group, label=f"{group.label} ({group.runs[0].name})")
      for group in groups
  ]


def group_curve(group: RunGroup, field: str) -> tuple[np.ndarray, ...]:
  """One field of a group's epoch records over its seeds, aligned by epoch.

  Returns:
    ``(epochs, mean, low, high)``: the epochs any run reached, sorted, and
    the mean, lowest and highest value over the runs that have one there
    (NaN where none has).
  """
  curves = [run.curve(field) for run in group.runs]
  epochs = np.unique(np.concatenate([e for e, _ in curves] + [np.zeros(0)]))
  values = np.full((len(curves), len(epochs)), np.nan)
  for row, (run_epochs, run_values) in enumerate(curves):
    values[row, np.searchsorted(epochs, run_epochs)] = run_values
  with warnings.catch_warnings():  # An epoch where every run is NaN.
    warnings.simplefilter("ignore", RuntimeWarning)
    return (epochs, *[reduce(values, axis=0)
                      for reduce in (np.nanmean, np.nanmin, np.nanmax)])


def _epoch_range(epochs: Sequence[float]) -> str:
  """``a`` or ``lo-hi`` for the epochs of several runs."""
  low, high = int(min(epochs)), int(max(epochs))
  return f"{low}" if low == high else f"{low}-{high}"


def summary_table(groups: Sequence[RunGroup]) -> str:
  """A text table of each group's final and best test accuracy.

  The numbers are `study.arms.final_and_best`'s, as in a
  study's summary: "final" is the test accuracy of a run's last epoch, and a
  run whose last epoch has no test accuracy is left out (``seeds`` counts
  the others). Accuracies are in %, as mean ± sample standard deviation
  over the seeds (the mean alone for one seed); ``epochs`` is the last
  epoch, ``best at`` the first epoch at the best accuracy (ranges over
  seeds).

  Args:
    groups: the run groups.

  Returns:
    The table, one line per group, without a trailing newline.
  """
  rows = [("run group", "seeds", "epochs", "final acc %", "best acc %",
           "best at")]
  for group in groups:
    summary = arms.final_and_best(group.runs, record.TEST_ACCURACY)
    cells = ["n/a"] * 4
    if summary["n"]:
      cells = [_epoch_range(summary["last_epoch"]),
               statistics.mean_std_text(summary["final"]),
               statistics.mean_std_text(summary["best"]),
               _epoch_range(summary["best_epoch"])]
    rows.append((group.label, str(summary["n"]), *cells))
  widths = np.max([[len(cell) for cell in row] for row in rows], axis=0)

  def line(row):
    cells = [row[0].ljust(widths[0])] + [
        cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
    return "  ".join(cells).rstrip()

  rule = "  ".join("-" * width for width in widths)
  return "\n".join([line(rows[0]), rule] + [line(row) for row in rows[1:]])


def describe_runs(runs: Sequence[record.Run]) -> str:
  """How many runs a group has: ``"3 seeds"``, or ``"3 runs"`` if seeds repeat.

  Runs count as seeds only when each has a distinct ``seed`` in its config.

  >>> runs = [record.Run(path="", name="", config={"seed": s})
  ...         for s in (0, 1, 1)]
  >>> describe_runs(runs[:2]), describe_runs(runs), describe_runs(runs[:1])
  ('2 seeds', '3 runs', '1 run')
  """
  if len(runs) == 1:
    return "1 run"
  seeds = [run.config.get("seed") for run in runs]
  if None not in seeds and len({json.dumps(seed) for seed in seeds}) == len(
      runs):
    return f"{len(runs)} seeds"
  return f"{len(runs)} runs"
