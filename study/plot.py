"""Plots runs: ``python -m study.plot RUN_DIR... -o FILE.png``.

Reads each run's ``config.json`` and ``metrics.jsonl`` (`train.record`),
groups runs of one experiment (`study.groups`: configs equal but for the
seed) and draws each group as the mean over its runs with a min-max band.
`plot_run_dirs` draws the figure of a list of workdirs, with labels of the
caller's choice if given.

The figure has three panels against epochs: test (or validation) error (%),
mean training loss (log scale), and the fraction of each epoch's steps whose
loss was below the epoch's running mean (LCAM's "below" phase). ``--table``
prints the final and best test accuracy of each group
(`study.groups.summary_table`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import os
import sys

import numpy as np

from study import files
from study import groups as groups_lib
from study.groups import RunGroup
from train import record

# (field, panel title, y label, transform of the values, log scale)
_PANELS = (
    (record.TEST_ACCURACY, "Test error", "test error (%)",
     lambda accuracy: 100.0 * (1.0 - accuracy), False),
    (record.TRAIN_LOSS, "Training loss", "mean training loss (log)",
     lambda loss: loss, True),
    (record.PHASE_BELOW_FRACTION, "Steps in the below phase",
     "fraction of steps per epoch", lambda fraction: fraction, False),
)
_VALIDATION_ERROR_PANEL = (
    record.VAL_ACCURACY, "Validation error", "validation error (%)",
    _PANELS[0][3], False)


def _panels(groups: Sequence[RunGroup],
            metric_panel: tuple[str, str, str] | None = None
            ) -> tuple[tuple, ...]:
  """The panels: ``metric_panel`` first where given, else validation error
  first for runs that never test."""
  if metric_panel is not None:
    field, title, ylabel = metric_panel
    return ((field, title, ylabel, lambda values: values, False),
            *_PANELS[1:])

  def logged(field):
    return any(record.get(field) is not None for group in groups
               for run in group.runs for record in run.epochs)
  if logged(record.TEST_ACCURACY) or not logged(record.VAL_ACCURACY):
    return _PANELS
  return (_VALIDATION_ERROR_PANEL, *_PANELS[1:])


def plot_runs(
    groups: Sequence[RunGroup], output_path: str | os.PathLike[str],
    metric_panel: tuple[str, str, str] | None = None,
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
    metric_panel: ``(field, title, y label)``: that epoch field's values, as
      they are, in the first panel instead of the error (a study's loss:
      `study.figures.curves_panel`).

  Returns:
    The `matplotlib.figure.Figure`, as saved.
  """
  # The object-oriented API renders without pyplot, so no global backend.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  figure = Figure(figsize=(16, 4.8), layout="constrained")
  panels = _panels(groups, metric_panel)
  axes = figure.subplots(1, len(panels), sharex=True)
  legend_lines, legend_labels = [], []
  for index, group in enumerate(groups):
    group_line = _draw_group(axes, panels, group, f"C{index % 10}")
    if group_line is not None:
      runs = groups_lib.describe_runs(group.runs)
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
  extension = os.path.splitext(os.fspath(output_path))[1].lstrip(".")
  files.write_atomically(os.fspath(output_path), lambda f: figure.savefig(
      f, dpi=120, format=extension or "png"))
  return figure


def _draw_group(axes, panels, group: RunGroup, color: str):
  """Draws one group in every panel; its first line (None if nothing drawn)."""
  group_line = None
  for panel, (field, _, _, transform, log_scale) in zip(axes, panels):
    epochs, mean, low, high = groups_lib.group_curve(group, field)
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

  Runs are grouped as by ``python -m study.plot`` (configs equal but for the
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
    train.record.NotARunError: for a directory that is not a training workdir.
    ValueError: if no run has a finished epoch, or the labels do not match.
  """
  runs, run_labels, _ = record.load_runs(run_dirs, labels)
  if not runs:
    raise ValueError("no run has a finished epoch; nothing to plot")
  groups = groups_lib.group_runs(runs, run_labels)
  plot_runs(groups, output_path)
  return groups


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m study.plot",
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
    runs, _, skipped = record.load_runs(args.run_dirs)
  except record.NotARunError as error:
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
  groups = groups_lib.group_runs(runs)
  if args.output:
    plot_runs(groups, args.output)
    _print_message(f"wrote {args.output}")
  if args.table or not args.output:
    print(groups_lib.summary_table(groups))
  return 0


def _print_message(message: str) -> None:
  print(f"study.plot: {message}", file=sys.stderr)


if __name__ == "__main__":
  sys.exit(main())
