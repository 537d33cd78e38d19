"""A study's figures of its final metric: ``comparisons.png``, ``finals.png``.

`write_figures` draws them beside ``summary.md`` from `study.report.summarize`'s
result and the finished runs, so a figure and the tables can never disagree:

- ``comparisons.png`` (`comparisons_figure`): a forest plot, one row per
  comparison of the study (``arm − against``, the primary ones first and
  marked), the difference with its 95% interval by the study's primary test
  (thin) and the TOST's interval (thick: 90%, or 95% for each of two
  primary comparisons), the ±margin band shaded where the study declares
  ``equivalence_margin``, and zero marked.
- ``finals.png`` (`finals_figure`): a strip plot, one row per arm, each
  seed's final value a dot (jittered by a fixed rule, not at random), and the
  arm's mean with its 95% interval as a bar.

An accuracy is shown in % and its differences in points; a loss in its own
units (nats, 4 decimals), with the axis saying that lower is better
(`study.statistics.metric_direction` decides, or the study's declared
``metric_direction``). `curves_panel` gives ``curves.png`` the metric's own
curve where it is not an accuracy. Each file is written through
`study.files.write_atomically` as a PNG without a date or the plotting
library's version, so the same runs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import os
from typing import Any

import numpy as np

from study import arms as arms_lib
from study import files
from study import statistics
from train import record

COMPARISONS_FILENAME = "comparisons.png"
FINALS_FILENAME = "finals.png"
DPI = 120
# A PNG from matplotlib has no date; its one varying text chunk is
# "Software" (matplotlib's version), which None leaves out.
PNG_METADATA = {"Software": None}
# A row of the forest plot whose interval stays this many margins away from
# zero is drawn clipped at the window's edge (its numbers are beside it).
_NEAR_MARGINS = 3.0
_JITTER = 0.5  # Dots of one arm spread over this height, in rows.
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclasses.dataclass(frozen=True)
class Units:
  """How a metric's values are shown.

  Attributes:
    scale: multiplies a value (and a difference) for display.
    value: the unit of a value (``%``, ``nats``, or empty: the field's own).
    difference: the unit of a difference of two values.
    digits: decimals of a displayed value.
    direction: ``higher`` or ``lower``, whichever is better.
  """
  scale: float
  value: str
  difference: str
  digits: int
  direction: str


def metric_units(metric: str, declared: str | None = None) -> Units:
  """The units of a metric, from its name.

  An accuracy or an error (a fraction) shows in % with differences in
  points; a loss (a cross-entropy) in nats, never scaled; anything else in
  its own units. The direction is `study.statistics.metric_direction`'s
  (``declared``: the study's ``metric_direction``, if any).

  Example:
    >>> metric_units("test_loss").value, metric_units("val_accuracy").value
    ('nats', '%')
  """
  name = metric.lower()
  direction = statistics.metric_direction(metric, declared)
  if name.endswith(("accuracy", "error")):
    return Units(100.0, "%", "points", 2, direction)
  if "loss" in name:
    return Units(1.0, "nats", "nats", 4, direction)
  return Units(1.0, "", "", 3, direction)


def summary_units(summary: Mapping[str, Any]) -> Units:
  """The units of a summary's metric, in the direction its study declares."""
  return metric_units(summary["metric"], summary.get("metric_direction"))


def _metric_name(metric: str) -> str:
  """``test_accuracy`` -> ``test accuracy``, ``val_loss`` -> ``validation
  loss``."""
  name = metric.replace("_", " ")
  return "validation" + name[3:] if metric.startswith("val_") else name


def _with_unit(text: str, unit: str, direction: str) -> str:
  """An axis label: ``text, unit (higher is better)``."""
  return f"{text}{', ' + unit if unit else ''} ({direction} is better)"


def _scaled(interval, scale: float):
  return None if interval is None else [scale * x for x in interval]


def _signed(value: float, digits: int) -> str:
  return f"{value:+.{digits}f}".replace("-", "−")


@dataclasses.dataclass(frozen=True)
class _Row:
  label: str
  primary: bool
  mean: float | None
  ci95: list[float] | None
  tost: list[float] | None  # The TOST's interval, at `tost_level` %.
  tost_level: str | None
  note: str


def _comparison_rows(summary: Mapping[str, Any], units: Units) -> list[_Row]:
  test = summary["primary_test"]
  rows = []
  for c in summary["comparisons"]:
    difference = c[test]
    tost = c["equivalence"]
    mean = difference["mean"]
    mean = None if mean is None else units.scale * mean
    ci95 = _scaled(difference["ci95"], units.scale)
    numbers = "–" if mean is None else _signed(mean, units.digits)
    if ci95 is not None:
      numbers += (f" [{_signed(ci95[0], units.digits)}, "
                  f"{_signed(ci95[1], units.digits)}]")
    verdicts = ([tost["verdict"]] if tost else []) + [c["verdict"]]
    rows.append(_Row(
        label=f"{c['arm']} − {c['against']}",
        primary=c["role"] == "primary", mean=mean, ci95=ci95,
        tost=_scaled(statistics.tost_interval(tost), units.scale)
        if tost else None,
        tost_level=statistics.tost_level(tost.get("alpha", statistics.ALPHA))
        if tost else None,
        note=f"{numbers}   {', '.join(verdicts)}"))
  return rows


def _window(rows: Sequence[_Row], margin: float | None) -> tuple[float, float]:
  """The x range: every interval, or with a margin, ±(the rows near zero).

  With a margin ``m``, the window is symmetric, at least ±1.5 m, and holds
  every row whose 95% interval comes within ``_NEAR_MARGINS`` m of zero; a
  row far beyond it (a difference of many margins) is drawn clipped.
  """
  def ends(row):
    values = [v for v in (row.ci95 or []) + (row.tost or []) + [row.mean]
              if v is not None]
    return (min(values), max(values)) if values else None

  spans = [span for span in map(ends, rows) if span is not None]
  if margin is None:
    low = min([0.0] + [s[0] for s in spans])
    high = max([0.0] + [s[1] for s in spans])
    pad = 0.08 * (high - low or 1.0)
    return low - pad, high + pad
  near = _NEAR_MARGINS * margin
  half = max([1.5 * margin] + [max(-s[0], s[1]) for s in spans
                               if s[0] <= near and s[1] >= -near])
  return -1.08 * half, 1.08 * half


def _clipped_segment(axes, interval, y, window, **style) -> None:
  """A horizontal segment, cut at the window with an arrow head where cut;
  one wholly outside is an arrow head at the edge, marked "off scale"."""
  low, high = interval
  left, right = window
  inset = 0.012 * (right - left)  # Arrow heads just inside the frame.
  if high < left or low > right:
    outside_left = high < left
    edge = left + inset if outside_left else right - inset
    axes.plot([edge], [y], marker="<" if outside_left else ">",
              color=style["color"], markersize=9, zorder=3)
    axes.annotate("off scale", (edge, y), xytext=(9 if outside_left else -9,
                                                   0),
                  textcoords="offset points", va="center", fontsize=8,
                  ha="left" if outside_left else "right",
                  color=style["color"])
    return
  axes.plot([max(low, left), min(high, right)], [y, y],
            solid_capstyle="butt", **style)
  for cut, edge, marker in ((low < left, left + inset, "<"),
                            (high > right, right - inset, ">")):
    if cut:
      axes.plot([edge], [y], marker=marker, color=style["color"],
                markersize=9, zorder=3)


def comparisons_figure(summary: Mapping[str, Any]):
  """The forest plot of a study's comparisons (``comparisons.png``).

  One row per comparison, in the study's order, labelled ``arm − against``
  (the primary ones marked): a dot at the difference of the final metric
  (arm minus against, by the primary test), a thin line for its 95%
  interval and a thick one for the TOST's interval (90%; 95% for each of two
  primary comparisons, `study.statistics.tost_level`), the ±margin band
  shaded when the study declares one, a line at zero. Right of each row:
  the difference and 95% interval, the equivalence verdict and the verdict,
  as in ``summary.md``.

  Args:
    summary: `study.report.summarize`'s summary (after
      `study.statistics.json_safe`).

  Returns:
    The `matplotlib.figure.Figure`, or None for a study without comparisons.
  """
  # The object-oriented API renders without pyplot, so no global backend.
  from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  if not summary["comparisons"]:
    return None
  metric = summary["metric"]
  units = summary_units(summary)
  rows = _comparison_rows(summary, units)
  margin = summary["equivalence_margin"]
  margin = None if margin is None else units.scale * margin
  test = {"paired": "paired t-test", "welch": "Welch t-test"}[
      summary["primary_test"]]

  figure = Figure(figsize=(10, 1.9 + 0.5 * len(rows)))
  figure.set_layout_engine("constrained", w_pad=0.1)
  axes = figure.add_subplot()
  window = _window(rows, margin)
  color = "#1f3b73"
  if margin is not None:
    axes.axvspan(-margin, margin, color="#2ca02c", alpha=0.15, linewidth=0)
  axes.axvline(0.0, color="0.3", linewidth=1.0, linestyle="--", zorder=1)
  for y, row in enumerate(rows):
    if row.ci95 is not None:
      _clipped_segment(axes, row.ci95, y, window, color=color, linewidth=1.3,
                       zorder=2)
    if row.tost is not None:
      _clipped_segment(axes, row.tost, y, window, color=color, linewidth=5.5,
                       alpha=0.55, zorder=2)
    if row.mean is not None and window[0] <= row.mean <= window[1]:
      axes.plot([row.mean], [y], "o", color="white", markeredgecolor=color,
                markeredgewidth=1.6, markersize=7, zorder=4)
  _row_labels(axes, [row.label + ("  (primary)" if row.primary else "")
                     for row in rows], [row.note for row in rows],
              [row.primary for row in rows])
  axes.set_xlim(*window)
  better, worse = "arm better", "arm worse"
  left, right = ((worse, better) if units.direction == "higher"
                 else (better, worse))
  axes.set_xlabel(
      _with_unit(f"difference in final {_metric_name(metric)}, arm − against",
                 units.difference, units.direction)
      + f"\n← {left}      {right} →")
  axes.grid(True, axis="x", alpha=0.3)
  axes.tick_params(axis="y", length=0)
  axes.set_title(
      f"Final {_metric_name(metric)}, arm − against (right: difference "
      f"[95% interval], {'equivalence, ' if margin is not None else ''}"
      "verdict)", loc="left", fontsize=10)
  handles = []
  if any(row.ci95 is not None for row in rows):
    handles.append(mlines.Line2D([], [], color=color, linewidth=1.3,
                                 label=f"95% interval ({test})"))
  levels = list(dict.fromkeys(row.tost_level for row in rows
                               if row.tost is not None))
  if levels:  # Two levels: the primary comparisons' first.
    handles.append(mlines.Line2D(
        [], [], color=color, linewidth=5.5, alpha=0.55,
        label=f"{'/'.join(levels)}% interval (TOST"
              f"{', primary/secondary' if len(levels) > 1 else ''})"))
  if margin is not None:
    handles.append(patches.Patch(
        color="#2ca02c", alpha=0.15, linewidth=0,
        label=f"equivalence margin ±{margin:.{units.digits}f}"
              f"{' ' + units.difference if units.difference else ''}"))
  if handles:
    figure.legend(handles=handles, loc="outside lower center",
                  ncol=len(handles), frameon=False, fontsize=9)
  return figure


def _row_labels(axes, labels: Sequence[str], notes: Sequence[str],
                bold: Sequence[bool] | None = None) -> None:
  """Rows top down: ``labels`` left of the axes, ``notes`` right of them (as
  tick labels of a second axis, so that the layout makes room for both)."""
  rows = range(len(labels))
  axes.set_ylim(len(labels) - 0.5, -0.5)  # The first row on top.
  axes.set_yticks(rows, labels)
  right = axes.secondary_yaxis("right")
  right.set_yticks(rows, notes, fontsize=9)
  for side in (axes, right):
    side.tick_params(axis="y", length=0)
    for label, strong in zip(side.get_yticklabels(),
                             bold or [False] * len(labels)):
      label.set_fontweight("bold" if strong else "normal")


def _jitter(count: int) -> np.ndarray:
  """Vertical offsets of ``count`` dots: a golden-ratio sequence, so the
  same runs always land in the same places and neighbours rarely overlap;
  a lone dot sits on its row."""
  if count == 1:
    return np.zeros(1)
  return ((np.arange(1, count + 1) * _GOLDEN) % 1.0 - 0.5) * _JITTER


def finals_figure(summary: Mapping[str, Any],
                  finished: Mapping[str, Sequence[record.Run]]):
  """The strip plot of each arm's final metric per seed (``finals.png``).

  One row per arm with a finished run, in the study's order and in the
  colours of ``curves.png``: each seed's final value a dot, jittered
  vertically in the runs' order, and the arm's mean with its 95% interval (from
  the summary) as a black bar; right of each row the mean, the interval and
  the number of seeds.

  Args:
    summary: `study.report.summarize`'s summary.
    finished: per arm, its finished runs (`study.report.summarize`'s).

  Returns:
    The `matplotlib.figure.Figure`, or None when no arm has a finished run.
  """
  from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  metric = summary["metric"]
  units = summary_units(summary)
  arms = [arm for arm in summary["arms"] if finished.get(arm)]
  if not arms:
    return None
  figure = Figure(figsize=(10, 1.6 + 0.45 * len(arms)))
  figure.set_layout_engine("constrained", w_pad=0.1)
  axes = figure.add_subplot()
  digits = units.digits
  notes = []
  for y, arm in enumerate(arms):
    values = units.scale * np.array(
        [arms_lib.final(run, metric) for run in finished[arm]])
    axes.scatter(values, y + _jitter(len(values)), s=22,
                 color=f"C{y % 10}", alpha=0.75 if len(values) > 1 else 1.0,
                 linewidths=0, zorder=2)
    entry = summary["arms"][arm][f"final_{metric}"]
    note = f"n = {len(values)}"
    if entry["mean"] is not None:
      mean = units.scale * entry["mean"]
      note = f"{mean:.{digits}f}   " + note
      interval = _scaled(entry["ci95"], units.scale)
      if interval is not None:
        axes.plot(interval, [y, y], color="black", linewidth=2.0,
                  solid_capstyle="butt", zorder=3)
        note = (f"{mean:.{digits}f} [{interval[0]:.{digits}f}, "
                f"{interval[1]:.{digits}f}]   n = {len(values)}")
      if len(values) > 1:  # One seed: the dot is the mean.
        axes.plot([mean], [y], "|", color="black", markersize=16,
                  markeredgewidth=2.5, zorder=4)
    notes.append(note)
  _row_labels(axes, arms, notes)
  axes.grid(True, axis="x", alpha=0.3)
  axes.set_xlabel(_with_unit(f"final {_metric_name(metric)}", units.value,
                             units.direction))
  axes.set_title(f"Final {_metric_name(metric)} per seed, by arm", loc="left",
                 fontsize=11)
  handles = [
      mlines.Line2D([], [], marker="o", linestyle="", color="0.45",
                    alpha=0.75, label="one seed's final value")]
  if any(len(finished[arm]) > 1 for arm in arms):
    handles.append(mlines.Line2D(
        [], [], marker="|", color="black", linewidth=2.0, markersize=12,
        markeredgewidth=2.5, label="mean, with its 95% interval"))
  figure.legend(handles=handles, loc="outside lower center",
                ncol=len(handles), frameon=False, fontsize=9)
  return figure


def curves_panel(summary: Mapping[str, Any]) -> tuple[str, str, str] | None:
  """The first panel of a study's ``curves.png``, for `study.plot.plot_runs`.

  None for an accuracy (the test or validation error in %, as
  `study.plot` draws it); else the metric's own curve, as it is:
  ``(field, title, y label)``, e.g. ``("test_loss", "Test loss", "test
  loss, nats (lower is better)")``.
  """
  metric = summary["metric"]
  if metric in (record.TEST_ACCURACY, record.VAL_ACCURACY):
    return None
  units = summary_units(summary)
  name = _metric_name(metric)
  return (metric, name[0].upper() + name[1:],
          _with_unit(name, units.value, units.direction))


def save_png(figure, path: str | os.PathLike[str]) -> None:
  """Writes ``figure`` to ``path`` as a PNG whole or not at all, with no
  date or version in it, so the same figure always gives the same bytes."""
  files.write_atomically(os.fspath(path), lambda f: figure.savefig(
      f, format="png", dpi=DPI, metadata=PNG_METADATA))


def write_figures(workdir: str, summary: Mapping[str, Any],
                  finished: Mapping[str, Sequence[record.Run]]) -> dict:
  """Writes ``comparisons.png`` and ``finals.png`` into ``workdir``.

  A figure with nothing to draw (no comparisons, no finished run) is not
  written.

  Returns:
    File name -> the `matplotlib.figure.Figure` written.
  """
  drawn = {COMPARISONS_FILENAME: comparisons_figure(summary),
           FINALS_FILENAME: finals_figure(summary, finished)}
  drawn = {name: figure for name, figure in drawn.items()
           if figure is not None}
  for name, figure in drawn.items():
    save_png(figure, os.path.join(workdir, name))
  return drawn
