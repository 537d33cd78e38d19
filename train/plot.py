"""Plots and tabulates runs: ``python -m train.plot RUN_DIR... -o FILE.png``.

Reads each run's ``config.json`` and ``metrics.jsonl`` (see
:mod:`train.metric_writers`). Runs whose configs differ only in their seed
(and in logging, checkpoints, devices or evaluation:
`train.config.NON_EXPERIMENT_FIELDS`) are grouped: a group is drawn as the
mean over its runs with a min-max band, and labelled by the config fields that
tell the groups apart (e.g. ``lcam 0.95/0.9``). `plot_run_dirs` draws the
figure of a list of workdirs, with labels of the caller's choice if given.

The figure has three panels against epochs: test error (%), mean training
loss (log scale), and the fraction of each epoch's steps whose loss was below
the epoch's running mean (LCAM's "below" phase). ``--table`` prints the final
and best test accuracy of each group (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any

import numpy as np

from train import config as config_lib
from train import metric_writers

CONFIG_FILENAME = "config.json"

# Where a differing field goes in a group label; lower comes first.
_LABEL_ORDER = ("optimizer", "model", "data", "schedule")


class NotARunError(ValueError):
  """A directory that is not a training workdir (no metrics.jsonl)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run, read from its workdir.

  Attributes:
    path: the workdir.
    name: the workdir's base name.
    config: the run's config as a nested dict (empty without config.json).
    epochs: the epoch records, deduplicated and sorted by epoch.
  """
  path: str
  name: str
  config: Mapping[str, Any]
  epochs: Sequence[Mapping[str, Any]]

  def curve(self, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of an epoch-record field; NaN where missing."""
    epochs = np.array([record["epoch"] for record in self.epochs], float)
    values = np.array([_as_float(record.get(field)) for record in self.epochs])
    return epochs, values


@dataclasses.dataclass(frozen=True)
class RunGroup:
  """Runs of one experiment that differ only in their seed.

  Attributes:
    label: a short name that tells the group apart from the others.
    runs: the runs, in the order given.
  """
  label: str
  runs: Sequence[Run]


def _as_float(value: Any) -> float:
  return math.nan if value is None else float(value)


def load_run(path: str | os.PathLike[str]) -> Run:
  """Reads a training workdir.

  Args:
    path: the workdir (or its ``metrics.jsonl``).

  Returns:
    The run; its ``epochs`` may be empty if no epoch has finished yet.

  Raises:
    NotARunError: if there is no ``metrics.jsonl`` at ``path``.
  """
  path = os.fspath(path)
  if os.path.basename(path) == metric_writers.METRICS_FILENAME:
    path = os.path.dirname(path) or "."
  metrics_file = os.path.join(path, metric_writers.METRICS_FILENAME)
  if not os.path.isfile(metrics_file):
    what = "does not exist" if not os.path.exists(path) else (
        f"has no {metric_writers.METRICS_FILENAME}")
    raise NotARunError(f"{path} {what}: it is not a training workdir")
  config_file = os.path.join(path, CONFIG_FILENAME)
  config = {}
  if os.path.isfile(config_file):
    with open(config_file, encoding="utf-8") as f:
      config = json.load(f)
  records = metric_writers.read_metrics(metrics_file)
  name = os.path.basename(os.path.normpath(os.path.abspath(path)))
  return Run(path=path, name=name, config=config,
             epochs=tuple(records.get("epoch", ())))


def flatten_config(
    config: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
  """Flattens a nested config into dotted keys.

  >>> flatten_config({"seed": 0, "optimizer": {"name": "lcam", "lr": 0.1}})
  {'seed': 0, 'optimizer.name': 'lcam', 'optimizer.lr': 0.1}
  """
  flat = {}
  for key, value in config.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, prefix=f"{dotted}."))
    else:
      flat[dotted] = value
  return flat


def experiment_key(run: Run) -> str:
  """A key equal for runs of the same experiment (configs equal but seeds).

  A run without a config is an experiment of its own.
  """
  if not run.config:
    return "path:" + os.path.abspath(run.path)
  fields = {key: value for key, value in flatten_config(run.config).items()
            if config_lib.identifies_experiment(key)}
  return json.dumps(fields, sort_keys=True, default=str)


def group_runs(
    runs: Iterable[Run], labels: Sequence[str] | None = None
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
  if labels is not None:
    labels = list(labels)
    if len(labels) != len(runs):
      raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    by_label = {}
    for run, label in zip(runs, labels):
      by_label.setdefault(str(label), []).append(run)
    return [RunGroup(label=label, runs=tuple(members))
            for label, members in by_label.items()]
  members = {}
  for run in runs:
    members.setdefault(experiment_key(run), []).append(run)
  configs = [flatten_config(group[0].config) for group in members.values()]
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


def name_label(runs: Sequence[Run]) -> str:
  """A label from the runs' directory names, without a seed suffix.

  >>> runs = [Run(path=n, name=n, config={}, epochs=()) for n in
  ...         ("wrn_lcam_seed0", "wrn_lcam_seed1")]
  >>> name_label(runs)
  'wrn_lcam'
  """
  names = [run.name for run in runs]
  if len(names) == 1:
    return names[0]
  common = os.path.commonprefix(names)
  common = re.sub(r"[_\-.]+(seed|s)?$", "", common)
  return common if len(common) >= 2 else ",".join(names)


def _make_labels_unique(groups: list[RunGroup]) -> list[RunGroup]:
  """Appends the first run's name to labels shared by several groups."""
  counts = {}
  for group in groups:
    counts[group.label] = counts.get(group.label, 0) + 1
  return [
      group if counts[group.label] == 1 else dataclasses.replace(
          group, label=f"{group.label} ({group.runs[0].name})")
      for group in groups
  ]


@dataclasses.dataclass(frozen=True)
class GroupCurve:
  """A field of a group's epoch records, aligned by epoch over the seeds.

  Attributes:
    epochs: the epochs any run reached, sorted.
    values: ``[num_runs, num_epochs]``, NaN where a run has no value.
  """
  epochs: np.ndarray
  values: np.ndarray

  @property
  def mean(self) -> np.ndarray:
    return _nan_reduce(np.nanmean, self.values)

  @property
  def low(self) -> np.ndarray:
    return _nan_reduce(np.nanmin, self.values)

  @property
  def high(self) -> np.ndarray:
    return _nan_reduce(np.nanmax, self.values)


def _nan_reduce(reduce, values: np.ndarray) -> np.ndarray:
  """Reduces over runs ignoring NaN; NaN where every run is NaN."""
  result = np.full(values.shape[1], np.nan)
  present = ~np.all(np.isnan(values), axis=0)
  if present.any():
    result[present] = reduce(values[:, present], axis=0)
  return result


def group_curve(group: RunGroup, field: str) -> GroupCurve:
  """Aligns one epoch-record field of a group's runs by epoch."""
  curves = [run.curve(field) for run in group.runs]
  epochs = np.unique(np.concatenate([e for e, _ in curves] + [np.zeros(0)]))
  values = np.full((len(curves), len(epochs)), np.nan)
  for row, (run_epochs, run_values) in enumerate(curves):
    values[row, np.searchsorted(epochs, run_epochs)] = run_values
  return GroupCurve(epochs=epochs, values=values)


@dataclasses.dataclass(frozen=True)
class AccuracySummary:
  """Test accuracy of one group, over its seeds (accuracies in [0, 1]).

  Attributes:
    label: the group's label.
    num_runs: the number of runs (seeds) with a test accuracy.
    final: each run's accuracy at its last evaluated epoch.
    best: each run's best accuracy.
    best_epoch: the epoch of each run's best accuracy.
    last_epoch: each run's last evaluated epoch.
  """
  label: str
  num_runs: int
  final: np.ndarray
  best: np.ndarray
  best_epoch: np.ndarray
  last_epoch: np.ndarray


def summarize_accuracy(group: RunGroup) -> AccuracySummary:
  """Final and best test accuracy of each run of a group."""
  final, best, best_epoch, last_epoch = [], [], [], []
  for run in group.runs:
    epochs, accuracy = run.curve("test_accuracy")
    evaluated = ~np.isnan(accuracy)
    if not evaluated.any():
      continue
    epochs, accuracy = epochs[evaluated], accuracy[evaluated]
    final.append(accuracy[-1])
    last_epoch.append(epochs[-1])
    best_index = int(np.argmax(accuracy))  # The first epoch at the best.
    best.append(accuracy[best_index])
    best_epoch.append(epochs[best_index])
  return AccuracySummary(
      label=group.label, num_runs=len(final), final=np.array(final),
      best=np.array(best), best_epoch=np.array(best_epoch),
      last_epoch=np.array(last_epoch))


def format_mean_std(values: np.ndarray, scale: float = 100.0) -> str:
  """``mean ± std`` (sample std, ddof=1) of values, scaled; mean alone if one.

  >>> format_mean_std(np.array([0.8, 0.9]))
  '85.00 ± 7.07'
  >>> format_mean_std(np.array([0.8]))
  '80.00'
  """
  if len(values) == 0:
    return "n/a"
  mean = float(np.mean(values)) * scale
  if len(values) == 1:
    return f"{mean:.2f}"
  std = float(np.std(values, ddof=1)) * scale
  return f"{mean:.2f} ± {std:.2f}"


def format_epoch_range(epochs: np.ndarray) -> str:
  """``a`` or ``lo-hi`` for the epochs of several runs.

  >>> format_epoch_range(np.array([120.0, 118.0]))
  '118-120'
  """
  if len(epochs) == 0:
    return "n/a"
  low, high = int(np.min(epochs)), int(np.max(epochs))
  return f"{low}" if low == high else f"{low}-{high}"


def summary_table(groups: Sequence[RunGroup]) -> str:
  """A text table of each group's final and best test accuracy.

  Accuracies are in %, as mean ± sample standard deviation over the group's
  seeds (the mean alone for one seed). ``seeds`` counts the runs that have a
  test accuracy; ``epochs`` is the last evaluated epoch, ``best at`` the
  epoch of the best accuracy (a range over seeds).

  Args:
    groups: the run groups.

  Returns:
    The table, one line per group, without a trailing newline.
  """
  header = ("run group", "seeds", "epochs", "final acc %", "best acc %",
            "best at")
  rows = []
  for group in groups:
    summary = summarize_accuracy(group)
    rows.append((summary.label, str(summary.num_runs),
                 format_epoch_range(summary.last_epoch),
                 format_mean_std(summary.final), format_mean_std(summary.best),
                 format_epoch_range(summary.best_epoch)))
  widths = [max(len(row[i]) for row in [header] + rows)
            for i in range(len(header))]

  def line(row):
    first = row[0].ljust(widths[0])
    rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:]))
    return "  ".join([first, *rest]).rstrip()

  rule = "  ".join("-" * width for width in widths)
  return "\n".join([line(header), rule] + [line(row) for row in rows])


def describe_runs(runs: Sequence[Run]) -> str:
  """How many runs a group has: ``"3 seeds"``, or ``"3 runs"`` if seeds repeat.

  Runs count as seeds only when each has a distinct ``seed`` in its config.

  >>> runs = [Run(path="", name="", config={"seed": s}, epochs=())
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


def tick_values(low: float, high: float, log_scale: bool,
                max_ticks: int = 6) -> list[float]:
  """A few round values between ``low`` and ``high`` for an axis's ticks.

  Within a factor of 10, or on a linear axis, they are evenly spaced round
  decimals (steps of 1, 2, 2.5 or 5 times a power of 10), however narrow the
  range. On a log axis over a wider range they are 1, 2 and 5 (or fewer)
  times powers of 10.

  >>> tick_values(0.83, 1.63, log_scale=True)
  [1.0, 1.2, 1.4, 1.6]
  >>> tick_values(0.05, 2.3, log_scale=True)
  [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  if not (math.isfinite(low) and math.isfinite(high)) or low > high:
    return []
  if low == high:
    return [low]
  if log_scale and low > 0 and high / low > 10:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
      ticks = [float(f"{m}e{e}") for e in range(first, last + 1)
               for m in mantissas if low <= m * 10.0 ** e <= high]
      if len(ticks) <= max_ticks:
        return ticks
    every = math.ceil(len(ticks) / max_ticks)
    return ticks[::every]
  locator = ticker.MaxNLocator(nbins=max_ticks - 1, steps=[1, 2, 2.5, 5, 10])
  ticks = [float(t) for t in locator.tick_values(low, high)]
  span = high - low
  # Rounded to the step's digits, so that labels and values agree.
  return [round(t, 12) for t in ticks
          if low - 1e-9 * span <= t <= high + 1e-9 * span]


def tick_labels(ticks: Sequence[float]) -> list[str]:
  """Plain decimal labels: as few digits as tell the values apart, no powers.

  Evenly spaced ticks share one number of decimals; others (log ticks) each
  get their own shortest form.

  >>> tick_labels([1.0, 1.2, 1.4])
  ['1.0', '1.2', '1.4']
  >>> tick_labels([2.3172, 2.3174, 2.3176])
  ['2.3172', '2.3174', '2.3176']
  >>> tick_labels([0.05, 0.1, 1.0, 2.0])
  ['0.05', '0.1', '1', '2']
  """
  if not ticks:
    return []
  steps = np.diff(ticks)
  scale = max(abs(t) for t in ticks) or 1.0
  evenly_spaced = len(ticks) > 1 and np.allclose(
      steps, steps[0], rtol=1e-6, atol=1e-12 * scale)
  if not evenly_spaced:
    return [np.format_float_positional(t, precision=12, trim="-")
            for t in ticks]
  for decimals in range(13):
    labels = [f"{t:.{decimals}f}" for t in ticks]
    if all(abs(float(label) - t) <= 1e-9 * scale
           for label, t in zip(labels, ticks)):
      return labels
  return [f"{t:.12g}" for t in ticks]


def _set_value_ticks(panel, low: float, high: float, log_scale: bool) -> None:
  """Limits with a margin, round ticks and plain decimal labels on the y axis."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  if log_scale:
    panel.set_yscale("log")
    margin = (high / low) ** 0.05 if high > low else 1.05
    low, high = low / margin, high * margin
  else:
    margin = 0.05 * (high - low) if high > low else 0.05 * (abs(high) or 1.0)
    low, high = low - margin, high + margin
  ticks = tick_values(low, high, log_scale)
  if len(ticks) > 1 and not (log_scale and high / low > 10):
    # Evenly spaced ticks: widen the limits to the next tick when it is near,
    # so that both ends of the axis are labelled.
    step, span = ticks[1] - ticks[0], high - low
    below, above = ticks[0] - step, ticks[-1] + step
    if low - below <= 0.2 * span and (below > 0 or not log_scale):
      low = below
    if above - high <= 0.2 * span:
      high = above
    ticks = tick_values(low, high, log_scale)
  panel.set_ylim(low, high)
  panel.yaxis.set_major_locator(ticker.FixedLocator(ticks))
  panel.yaxis.set_major_formatter(ticker.FixedFormatter(tick_labels(ticks)))
  panel.yaxis.set_minor_locator(ticker.NullLocator())
  panel.yaxis.set_minor_formatter(ticker.NullFormatter())


# (field, panel title, y label, transform of the values, log scale)
_PANELS = (
    ("test_accuracy", "Test error", "test error (%)",
     lambda accuracy: 100.0 * (1.0 - accuracy), False),
    ("train_loss", "Training loss", "mean training loss (log)",
     lambda loss: loss, True),
    ("phase_below_fraction", "Steps in the below phase",
     "fraction of steps per epoch", lambda fraction: fraction, False),
)


def plot_runs(
    groups: Sequence[RunGroup], output_path: str | os.PathLike[str]
):
  """Draws the groups' curves against epochs and saves the figure.

  Three panels: test error in %, mean training loss (log scale) and the
  fraction of steps in the below-mean phase. Each group is a line (the mean
  over seeds) with a band from the lowest to the highest seed. The x axis
  shows whole epochs, the y axes round values with plain decimal labels.

  Args:
    groups: the run groups.
    output_path: the image file; its extension picks the format (png, pdf,
      svg...). Missing parent directories are created.

  Returns:
    The `matplotlib.figure.Figure`, as saved.
  """
  # The object-oriented API renders without pyplot, so no global backend.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  figure = Figure(figsize=(16, 4.8), layout="constrained")
  axes = figure.subplots(1, len(_PANELS), sharex=True)
  legend_lines, legend_labels = [], []
  # The lowest and highest value drawn in each panel, bands included.
  drawn_range = [[math.inf, -math.inf] for _ in _PANELS]
  for index, group in enumerate(groups):
    group_line = _draw_group(axes, group, f"C{index % 10}", drawn_range)
    if group_line is not None:
      runs = describe_runs(group.runs)
      legend_lines.append(group_line)
      legend_labels.append(
          f"{group.label} ({runs}, min-max)" if len(group.runs) > 1
          else f"{group.label} ({runs})")
  _style_panels(axes, drawn_range)
  if legend_lines:
    figure.legend(legend_lines, legend_labels, loc="outside lower center",
                  ncol=min(len(legend_lines), 4), frameon=False)
  output_path = os.fspath(output_path)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  figure.savefig(output_path, dpi=120)
  return figure


def _draw_group(axes, group: RunGroup, color: str, drawn_range):
  """Draws one group in every panel and widens ``drawn_range``; its line."""
  several = len(group.runs) > 1
  group_line = None
  for panel_index, (panel, (field, _, _, transform, log_scale)) in enumerate(
      zip(axes, _PANELS)):
    curve = group_curve(group, field)
    mean = transform(curve.mean)
    drawn = ~np.isnan(mean)
    if log_scale:
      drawn &= mean > 0
    if not drawn.any():
      continue
    (line,) = panel.plot(curve.epochs[drawn], mean[drawn], color=color,
                         linewidth=1.4)
    group_line = group_line or line
    values = [mean[drawn]]
    if several:
      low, high = transform(curve.low), transform(curve.high)
      panel.fill_between(curve.epochs[drawn], low[drawn], high[drawn],
                         color=color, alpha=0.2, linewidth=0)
      values += [low[drawn], high[drawn]]
    values = np.concatenate(values)
    values = values[np.isfinite(values) & ((values > 0) | (not log_scale))]
    if values.size:
      span = drawn_range[panel_index]
      span[0] = min(span[0], float(values.min()))
      span[1] = max(span[1], float(values.max()))
  return group_line


def _style_panels(axes, drawn_range) -> None:
  """Titles, labels, grids and ticks: round values, whole epochs."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  for panel, (_, title, ylabel, _, log_scale), (low, high) in zip(
      axes, _PANELS, drawn_range):
    panel.set_title(title)
    panel.set_xlabel("epoch")
    panel.set_ylabel(ylabel)
    panel.grid(True, which="major", alpha=0.3)
    if panel is not axes[2] and low <= high:
      _set_value_ticks(panel, low, high, log_scale)
  axes[2].set_ylim(0.0, 1.0)
  # Whole epochs only; sharex gives every panel the same ticks.
  axes[0].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def load_runs(
    run_dirs: Iterable[str | os.PathLike[str]],
    labels: Sequence[str] | None = None,
) -> tuple[list[Run], list[str] | None, list[str]]:
  """Reads workdirs, dropping repeats and runs without a finished epoch.

  Args:
    run_dirs: training workdirs.
    labels: optional, one group label per workdir (see `group_runs`).

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


def plot_run_dirs(
    run_dirs: Sequence[str | os.PathLike[str]],
    output_path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> list[RunGroup]:
  """Draws the curves of training workdirs into one figure.

  Runs are grouped as by ``python -m train.plot`` (configs equal but for the
  seed), or by ``labels`` when given. Workdirs without a finished epoch are
  left out.

  Args:
    run_dirs: training workdirs (with ``metrics.jsonl``).
    output_path: the image file (png, pdf, svg...).
    labels: optional, one group label per workdir; workdirs with the same
      label form one group.

  Returns:
    The groups drawn.

  Raises:
    NotARunError: for a directory that is not a training workdir.
    ValueError: if no run has a finished epoch, or the labels do not match.
  """
  runs, run_labels, _ = load_runs(run_dirs, labels)
  if not runs:
    raise ValueError("no run has a finished epoch; nothing to plot")
  groups = group_runs(runs, run_labels)
  plot_runs(groups, output_path)
  return groups


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m train.plot",
      description="Plot test error, training loss and LCAM phase fractions "
      "of training runs; runs differing only by seed are averaged.")
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="training workdirs (with metrics.jsonl)")
  parser.add_argument("-o", "--output", metavar="FILE.png",
                      help="image to write (png, pdf, svg)")
  parser.add_argument("--table", action="store_true",
                      help="print final and best test accuracy per group "
                      "(the default when no -o is given)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: returns the exit status (0 on success)."""
  args = _parse_args(argv)
  try:
    runs, _, skipped = load_runs(args.run_dirs)
  except NotARunError as error:
    _print_message(f"error: {error}")
    return 2
  except (OSError, ValueError) as error:  # An unreadable config.json.
    _print_message(f"error: {error}")
    return 1
  for path in skipped:
    _print_message(f"warning: {path} has no finished epoch yet; skipped")
  if not runs:
    _print_message("error: no run has a finished epoch; nothing to plot")
    return 1
  groups = group_runs(runs)
  if args.output:
    plot_runs(groups, args.output)
    _print_message(f"wrote {args.output}")
  if args.table or not args.output:
    print(summary_table(groups))
  return 0


def _print_message(message: str) -> None:
  print(f"train.plot: {message}", file=sys.stderr)


if __name__ == "__main__":
  sys.exit(main())
