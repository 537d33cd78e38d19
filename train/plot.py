"""Plots and tabulates runs: ``python -m train.plot RUN_DIR... -o FILE.png``.

Reads each run's ``config.json`` and ``metrics.jsonl`` with `train.runs`.
Runs whose configs differ only in their seed (and in logging, checkpoints,
devices or evaluation: `train.config.NON_EXPERIMENT_FIELDS`) are grouped: a
group is drawn as the mean over its runs with a min-max band, and labelled by
the config fields that tell the groups apart (e.g. ``lcam 0.95/0.9``).
`plot_run_dirs` draws the figure of a list of workdirs, with labels of the
caller's choice if given.

The figure has three panels against epochs: test (or validation) error (%),
mean training loss (log scale), and the fraction of each epoch's steps whose
loss was below the epoch's running mean (LCAM's "below" phase). ``--table``
prints the final and best test accuracy of each group (mean ± std over
seeds), as
`train.study_statistics.final_and_best` defines them.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import json
import os
import re
import sys
from typing import Any
import warnings

from flax import traverse_util
import numpy as np

from train import config as config_lib
from train import runs as runs_lib
from train import study_statistics as statistics

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
  runs: Sequence[runs_lib.Run]


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(config, sep=".")


def experiment_key(run: runs_lib.Run) -> str:
  """A key equal for runs of the same experiment (configs equal but seeds).

  A run without a config is an experiment of its own.
  """
  if not run.config:
    return "path:" + os.path.abspath(run.path)
  fields = {key: value for key, value in _flat(run.config).items()
            if config_lib.identifies_experiment(key)}
  return json.dumps(fields, sort_keys=True, default=str)


def group_runs(
    runs: Iterable[runs_lib.Run], labels: Sequence[str] | None = None
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


def name_label(runs: Sequence[runs_lib.Run]) -> str:
  """A label from the runs' directory names, without a seed suffix.

  >>> runs = [runs_lib.Run(path=n, name=n, config={}) for n in
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

  The numbers are `train.study_statistics.final_and_best`'s, as in a
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
    summary = statistics.final_and_best(group.runs, "test_accuracy")
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


def describe_runs(runs: Sequence[runs_lib.Run]) -> str:
  """How many runs a group has: ``"3 seeds"``, or ``"3 runs"`` if seeds repeat.

  Runs count as seeds only when each has a distinct ``seed`` in its config.

  >>> runs = [runs_lib.Run(path="", name="", config={"seed": s})
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


# (field, panel title, y label, transform of the values, log scale)
_PANELS = (
    ("test_accuracy", "Test error", "test error (%)",
     lambda accuracy: 100.0 * (1.0 - accuracy), False),
    ("train_loss", "Training loss", "mean training loss (log)",
     lambda loss: loss, True),
    ("phase_below_fraction", "Steps in the below phase",
     "fraction of steps per epoch", lambda fraction: fraction, False),
)
_VALIDATION_ERROR_PANEL = (
    "val_accuracy", "Validation error", "validation error (%)",
    _PANELS[0][3], False)


def _panels(groups: Sequence[RunGroup]) -> tuple[tuple, ...]:
  """The panels: validation error first for runs that never test."""
  def logged(field):
    return any(record.get(field) is not None for group in groups
               for run in group.runs for record in run.epochs)
  if logged("test_accuracy") or not logged("val_accuracy"):
    return _PANELS
  return (_VALIDATION_ERROR_PANEL, *_PANELS[1:])


def plot_runs(
    groups: Sequence[RunGroup], output_path: str | os.PathLike[str]
):
  """Draws the groups' curves against epochs and saves the figure.

  Three panels: test error in % (validation error for runs that never
  evaluate the test set), mean training loss (log scale) and the
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
  panels = _panels(groups)
  axes = figure.subplots(1, len(panels), sharex=True)
  legend_lines, legend_labels = [], []
  for index, group in enumerate(groups):
    group_line = _draw_group(axes, panels, group, f"C{index % 10}")
    if group_line is not None:
      runs = describe_runs(group.runs)
      legend_lines.append(group_line)
      legend_labels.append(
          f"{group.label} ({runs}, min-max)" if len(group.runs) > 1
          else f"{group.label} ({runs})")
  _style_panels(axes, panels)
  if legend_lines:
    figure.legend(legend_lines, legend_labels, loc="outside lower center",
                  ncol=min(len(legend_lines), 4), frameon=False)
  output_path = os.fspath(output_path)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  figure.savefig(output_path, dpi=120)
  return figure


def _draw_group(axes, panels, group: RunGroup, color: str):
  """Draws one group in every panel; its first line (None if nothing drawn)."""
  group_line = None
  for panel, (field, _, _, transform, log_scale) in zip(axes, panels):
    epochs, mean, low, high = group_curve(group, field)
    mean = transform(mean)
    drawn = ~np.isnan(mean) & ((mean > 0) | (not log_scale))
    if not drawn.any():
      continue
    (line,) = panel.plot(epochs[drawn], mean[drawn], color=color,
                         linewidth=1.4)
    group_line = group_line or line
    if len(group.runs) > 1:
      panel.fill_between(epochs[drawn], transform(low)[drawn],
                         transform(high)[drawn], color=color, alpha=0.2,
                         linewidth=0)
  return group_line


def _style_panels(axes, panels) -> None:
  """Titles, labels, grids; round values in plain decimals, whole epochs."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  for panel, (_, title, ylabel, _, log_scale) in zip(axes, panels):
    panel.set(title=title, xlabel="epoch", ylabel=ylabel)
    panel.grid(True, which="major", alpha=0.3)
    if log_scale:
      panel.set_yscale("log")
    low, high = panel.get_ylim()  # The data's range with matplotlib's margins.
    if log_scale and high / low > 10:
      # 1, 2 and 5 times powers of 10 (powers of 10 alone over 3 decades),
      # each labelled as shortly as it can be.
      panel.yaxis.set_major_locator(ticker.LogLocator(
          subs=(1.0, 2.0, 5.0) if high / low < 1e3 else (1.0,)))
      panel.yaxis.set_major_formatter(ticker.FuncFormatter(
          lambda value, _: np.format_float_positional(
              float(f"{value:.12g}"), trim="-")))
    else:
      # Evenly spaced round values, all with the same decimals.
      panel.yaxis.set_major_locator(ticker.AutoLocator())
      plain = ticker.ScalarFormatter(useOffset=False)  # No 1e-3, no +2.3.
      plain.set_scientific(False)
      panel.yaxis.set_major_formatter(plain)
    panel.yaxis.set_minor_locator(ticker.NullLocator())
  axes[2].set_ylim(0.0, 1.0)
  # Whole epochs only; sharex gives every panel the same ticks.
  axes[0].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


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
    train.runs.NotARunError: for a directory that is not a training workdir.
    ValueError: if no run has a finished epoch, or the labels do not match.
  """
  runs, run_labels, _ = runs_lib.load_runs(run_dirs, labels)
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
    runs, _, skipped = runs_lib.load_runs(args.run_dirs)
  except runs_lib.NotARunError as error:
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
