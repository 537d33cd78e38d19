"""A study's summary: ``summary.json``, ``summary.md`` and ``curves.png``.

`summarize` reads a study directory's runs and computes, with `study.arms`
and `study.statistics`, each arm's statistics and provenance, the
comparisons, the selection of winners, and the unfinished and failed runs
(the contents of ``summary.json``); `summary_markdown` renders them as
Markdown tables (accuracies in %, differences in points; a loss in nats:
`study.figures.metric_units`); `write_summary` writes both and the figures.
`power_plan` sizes a next study from a finished one's spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
from typing import Any

import ml_collections
import numpy as np

from study import arms as arms_lib
from study import definition as study_lib
from study import figures
from study import files
from study import groups as groups_lib
from study import plot
from study import statistics
from train import record


def _value_text(value, units: figures.Units, signed=False) -> str:
  """A value (or, ``signed``, a difference) in ``units``: ``71.23``,
  ``+0.42`` (accuracy, points), ``1.4823`` (a loss, nats)."""
  if value is None:
    return "–"
  return f"{units.scale * value:{'+' if signed else ''}.{units.digits}f}"


def _interval_text(interval, units: figures.Units, signed=False) -> str:
  if interval is None:
    return "–"
  low, high = interval
  return (f"[{_value_text(low, units, signed)}, "
          f"{_value_text(high, units, signed)}]")


def _unit_suffix(units: figures.Units) -> str:
  """A column name's unit: `` %`` for an accuracy, `` (nats)`` for a loss."""
  if not units.value:
    return ""
  return " %" if units.value == "%" else f" ({units.value})"


def _target_text(target: float, units: figures.Units) -> str:
  """``70%`` for an accuracy, ``1.5 nats`` for a loss."""
  if units.value == "%":
    return f"{units.scale * target:.0f}%"
  return f"{units.scale * target:g} {units.value}".rstrip()


def _p_text(p_value) -> str:
  return "–" if p_value is None else f"{p_value:.3f}"


def _reach_text(entry) -> str:
  median = "–" if entry["median"] is None else f"{entry['median']:g}"
  return f"{median} ({entry['reached']}/{entry['n']})"


def _metric_label(metric: str) -> str:
  """``test_accuracy`` -> ``test acc.``"""
  return metric.replace("_accuracy", " acc.").replace("_", " ")


def _markdown_table(header: Sequence[str], aligns: str,
                    rows: Sequence[Sequence[Any]]) -> list[str]:
  """A Markdown table; ``aligns`` holds ``l`` or ``r`` for each column."""
  def line(cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in aligns) + "|"
  return [line(header), rule] + [line(row) for row in rows]


def _arms_table(summary: dict[str, Any]) -> list[str]:
  metric, targets = summary["metric"], summary["targets"]
  units = figures.summary_units(summary)
  label = _metric_label(metric) + _unit_suffix(units)
  # Steps in the "below" phase; where recorded, also the steps whose loss was
  # below the running mean (they differ under phases="random").
  fractions = {record.PHASE_BELOW_FRACTION: "steps in below phase"}
  if any(record.LOSS_BELOW_MEAN_FRACTION in s
         for s in summary["arms"].values()):
    fractions[record.LOSS_BELOW_MEAN_FRACTION] = "loss below mean"
  header = (["arm", "n", f"final {label} (mean ± std)", "95% CI",
             f"best {label}"]
            + [f"epochs to {_target_text(t, units)}" for t in targets]
            + ["final train loss", *fractions.values(), "wall time / run"])
  mean_std = statistics.mean_std_text
  rows = []
  for arm, s in summary["arms"].items():
    final_entry = s[f"final_{metric}"]
    rows.append(
        [arm, s["n"], mean_std(final_entry, units.scale, units.digits),
         _interval_text(final_entry["ci95"], units),
         mean_std(s[f"best_{metric}"], units.scale, units.digits)]
        + [_reach_text(s["epochs_to_target"][str(t)]) for t in targets]
        + [mean_std(s["final_train_loss"], 1.0, 4)]
        + [mean_std(s[f], 1.0, 3) if s.get(f) else "–" for f in fractions]
        + [f"{s['wall_time_s'] / 60:.1f} min" if s["wall_time_s"] else "–"])
  return _markdown_table(header, "l" + "r" * (len(header) - 1), rows)


def _known(values, text=str) -> str:
  """Distinct values, ``–`` for an unknown one."""
  return ", ".join("–" if v is None else text(v) for v in values) or "–"


def _versions_text(versions) -> str:
  if not isinstance(versions, Mapping):
    return str(versions)
  return " ".join(f"{name} {version}" for name, version in versions.items())


def _provenance_table(summary: dict[str, Any]) -> list[str]:
  rows = []
  for arm, s in summary["arms"].items():
    p = s["provenance"]
    restarts = ", ".join(f"{seed}: {count}" for seed, count in zip(
        s["seeds"], p["restarts"])) or "–"
    rows.append([
        arm, _known(p["commits"], lambda c: str(c)[:10]),
        _known(p["tracked_changes"], lambda c: "yes" if c else "no"),
        restarts, _known(p["devices"]), _known(p["device_kinds"]),
        _known(p["data_fingerprints"]),
        _known(p["versions"], _versions_text)])
  return ["Where the runs came from (every start of every run; – where a "
          "record does not say):", ""] + _markdown_table(
              ["arm", "commits", "uncommitted changes", "restarts per seed",
               "devices", "device kind", "data", "versions"], "llllrlll",
              rows)


def _comparisons_note(summary: dict[str, Any], units: figures.Units) -> str:
  """The line above the comparisons: units, test, levels and adjustments."""
  test = {"paired": "paired t-test", "welch": "Welch t-test"}[
      summary["primary_test"]]
  margin = summary["equivalence_margin"]
  equivalence = ("no equivalence margin declared" if margin is None else
                 f"equivalence: TOST at ±{_value_text(margin, units)} "
                 f"{units.difference}".rstrip())
  primaries = summary.get("primary_comparisons", 1)
  unit = units.difference or "the metric's units"
  head = (f"Comparisons of the final {_metric_label(summary['metric'])} "
          f"(differences in {unit}; primary test: {test}; ")
  if primaries == 1:
    return (head + f"{equivalence}; Holm p: the primary test's p-values of "
            "the secondary comparisons, adjusted as one family):")
  alpha = statistics.ALPHA / primaries
  return (head + f"{equivalence}; {primaries} primary comparisons, each at "
          f"alpha {alpha:g} (its TOST CI {statistics.tost_level(alpha)}%, its "
          f"seeds for 80% power at alpha {alpha:g}), the secondary ones at "
          f"alpha {statistics.ALPHA:g} (TOST CI {statistics.tost_level()}%); "
          "Holm p (primary), Holm p (secondary): the primary test's p-values "
          "of the primary and of the secondary comparisons, each adjusted as "
          "one family):")


def _comparisons_table(summary: dict[str, Any]) -> list[str]:
  units = figures.summary_units(summary)
  primaries = summary.get("primary_comparisons", 1)
  holm_roles = ("primary", "secondary") if primaries > 1 else ("secondary",)
  rows = []
  for c in summary["comparisons"]:
    paired, welch = c["paired"], c["welch"]
    tost = c["equivalence"]
    tost_cells = ["–", "–", "–"] if tost is None else [
        _interval_text(statistics.tost_interval(tost), units, True),
        _p_text(tost["p_value"]), tost["verdict"]]
    power = c["seeds_for_80pct_power"]
    rows.append([
        c["arm"], c["against"], c["role"], paired["n"],
        _value_text(paired["mean"], units, True),
        _interval_text(paired["ci95"], units, True),
        _p_text(paired["p_value"]), f"{welch['n'][0]}+{welch['n'][1]}",
        _value_text(welch["mean"], units, True),
        _interval_text(welch["ci95"], units, True), _p_text(welch["p_value"]),
        *tost_cells, c["verdict"]]
        + [_p_text(c["holm_p_value"] if c["role"] == role else None)
           for role in holm_roles]
        + ["–" if power is None else power])
  return [_comparisons_note(summary, units), ""] + _markdown_table(
      ["arm", "against", "role", "pairs", "paired diff.", "paired 95% CI",
       "paired p", "runs", "Welch diff.", "Welch 95% CI", "Welch p",
       "TOST 90% CI" if primaries == 1 else "TOST CI", "TOST p",
       "equivalence", "verdict"]
      + [f"Holm p ({role})" for role in holm_roles] + ["seeds for 80% power"],
      "lll" + "r" * 10 + "ll" + "r" * len(holm_roles) + "r", rows)


def _selection_lines(summary: dict[str, Any]) -> list[str]:
  label = _metric_label(summary["metric"])
  units = figures.summary_units(summary)
  lines = [f"Selection (the study's rule: {summary['selection_rule']}):", ""]
  for family, chosen in summary["selection"].items():
    value = ("–" if chosen["value"] is None else
             f"{_value_text(chosen['value'], units)} {units.value}".rstrip())
    lines.append(f"- {family}: {chosen['winner'] or '–'} ({label} {value})"
                 + ("" if chosen["complete"] else
                    "; not final: some arms have no finished run"))
  return lines


def summary_markdown(summary: dict[str, Any]) -> str:
  """``summary.md``: the same numbers as ``summary.json``, as tables."""
  lines = _arms_table(summary) + [""] + _provenance_table(summary)
  if summary.get("selection"):
    lines += [""] + _selection_lines(summary)
  if summary["comparisons"]:
    lines += [""] + _comparisons_table(summary)
  for kind in ("diverged", "unfinished", "failed"):
    if summary.get(kind):
      lines += ["", f"{kind.capitalize()} runs (not averaged): " + "; ".join(
          f"{r['arm']} seed {r['seed']}"
          + (f" ({r['reason']})" if r.get("reason") else "")
          for r in summary[kind]) + "."]
  return "\n".join(lines) + "\n"


def comparison_pairs(study: ml_collections.ConfigDict,
                     baseline: str | None = None) -> list[tuple[str, str]]:
  """The ``(arm, against)`` pairs to compare, the primary one first.

  The study's ``comparisons``, or every arm against its ``baseline``; a
  ``baseline`` given here overrides both (every arm against it).

  Raises:
    study_lib.StudyError: for an unknown ``baseline``.
  """
  if baseline is not None and baseline not in study.arms:
    raise study_lib.StudyError(f"Unknown baseline {baseline!r}: the study "
                               f"has {list(study.arms)}.")
  if baseline is None and study.get("comparisons") is not None:
    return [(arm, against) for arm, against in study.comparisons]
  baseline = study.baseline if baseline is None else baseline
  return [(arm, baseline) for arm in study.arms if arm != baseline]


def summarize(workdir: str, baseline: str | None = None,
              compare: Sequence[tuple[str, str]] | None = None,
              margin: float | None = None):
  """The statistics of a study directory.

  A finished run whose final metric is null or NaN is failed, not averaged.

  Args:
    workdir: the study directory.
    baseline: compare every arm with this one instead of the study's
      ``comparisons`` (or ``baseline``).
    compare: ``(arm, against)`` pairs to compare instead, the first
      primary (the first ``primary_comparisons`` of them).
    margin: an equivalence margin instead of the study's.

  Returns:
    ``(summary, finished)``: the contents of ``summary.json`` (per arm its
    statistics and provenance, the comparisons of `comparison_pairs`, the
    unfinished and failed runs) and, per arm, its finished runs as
    `train.record.Run`.

  Raises:
    study_lib.StudyError: for a directory without a study or with bad statistics
      fields, or an unknown ``baseline``.
  """
  study = study_lib.read_study(workdir)
  if compare is not None:
    study.comparisons = [list(pair) for pair in compare]
  if margin is not None:
    study.equivalence_margin = margin
  metric, primary_test, margin, direction, primaries = (
      study_lib.check_statistics_fields(study))
  pairs = comparison_pairs(study, baseline)
  primaries = min(primaries, max(len(pairs), 1))  # Post hoc: fewer pairs.
  statuses = study_lib.study_runs(study, workdir)
  finished = {arm: [] for arm in study.arms}
  failed = [{"arm": s.arm, "seed": s.seed, "reason": s.reason,
             "log_tail": s.failure}
            for s in statuses if s.state == "failed"]
  for status in statuses:
    if status.finished:
      if np.isfinite(arms_lib.final(status.run, metric)):
        finished[status.arm].append(status.run)
      else:
        failed.append({"arm": status.arm, "seed": status.seed,
                       "reason": f"final {metric} is null or NaN",
                       "log_tail": None})
  targets = list(study.get("targets", ()))
  final_by_seed = {arm: {r.config["seed"]: arms_lib.final(r, metric)
                         for r in runs} for arm, runs in finished.items()}
  # Each of k primary comparisons at level 0.05 / k; the secondary at 0.05.
  comparisons = [
      {"arm": arm, "against": against,
       "role": "primary" if index < primaries else "secondary",
       **statistics.compare(
           final_by_seed[arm], final_by_seed[against],
           primary_test=primary_test, margin=margin, direction=direction,
           alpha=statistics.ALPHA / (primaries if index < primaries else 1))}
      for index, (arm, against) in enumerate(pairs)]
  for c in comparisons:
    c["holm_p_value"] = None
  # One family of the secondary comparisons; one of the primary ones if k > 1.
  for role in ("primary", "secondary") if primaries > 1 else ("secondary",):
    family = [c for c in comparisons if c["role"] == role]
    for c, p in zip(family, statistics.holm(
        [c[primary_test]["p_value"] for c in family])):
      c["holm_p_value"] = p
  arms = {arm: arms_lib.arm_statistics(runs, targets, metric, direction)
          for arm, runs in finished.items()}
  diverged = [{"arm": s.arm, "seed": s.seed, "reason": s.reason}
              for s in statuses if s.state == "diverged"]
  selection = {}
  if study.get("families"):
    selection = statistics.select_winners(
        study.families, {arm: arms[arm][f"final_{metric}"]["mean"]
                         for arm in arms},
        diverged=[arm for arm in study.arms if all(
            s.state == "diverged" for s in statuses if s.arm == arm)],
        direction=direction)
  # The two fields are in the summary only where the study declares them.
  return {
      "metric": metric,
      **({"metric_direction": direction} if "metric_direction" in study
         else {}),
      "selection": selection,
      "selection_rule": study.get("selection"),
      "primary_test": primary_test,
      **({"primary_comparisons": primaries} if "primary_comparisons" in study
         else {}),
      "equivalence_margin": margin,
      "baseline": study.baseline if baseline is None else baseline,
      "targets": targets,
      "arms": arms,
      "comparisons": comparisons,
      # Diverged runs are a result: listed, never averaged (only when any).
      **({"diverged": diverged} if diverged else {}),
      "unfinished": [
          {"arm": s.arm, "seed": s.seed, "epochs_done": s.epochs_done,
           "num_epochs": s.num_epochs, "reason": s.reason}
          for s in statuses if s.state == "unfinished"],
      "failed": failed,
  }, finished


class SummaryNotWritten(files.WriteError):
  """A file of the summary could not be written; `markdown` is the summary."""

  def __init__(self, markdown: str, error: files.WriteError):
    super().__init__(error.errno, error.strerror)
    self.markdown = markdown


def write_summary(workdir: str) -> str:
  """Writes ``summary.json`` (strict JSON), ``summary.md`` and the figures
  (``curves.png``, ``comparisons.png``, ``finals.png``: `study.figures`).

  Each file is written whole or not at all (`study.files`).

  Returns:
    The contents of ``summary.md``.

  Raises:
    SummaryNotWritten: a file could not be written (the others may have
      been); it carries the summary, to be shown all the same.
  """
  summary, finished = summarize(workdir)
  summary = statistics.json_safe(summary)
  markdown = summary_markdown(summary)
  groups = [groups_lib.RunGroup(label=arm, runs=runs)
            for arm, runs in finished.items() if runs]
  try:
    files.write_atomically(os.path.join(workdir, "summary.json"), json.dumps(
        summary, indent=2, allow_nan=False) + "\n")
    files.write_atomically(os.path.join(workdir, "summary.md"), markdown)
    if groups:
      plot.plot_runs(groups, os.path.join(workdir, "curves.png"),
                     figures.curves_panel(summary))
    figures.write_figures(workdir, summary, finished)
  except files.WriteError as e:
    raise SummaryNotWritten(markdown, e) from e
  return markdown


def pooled_spread(summary: Mapping[str, Any], arms: Sequence[str]
                  ) -> tuple[float, int, list[str]]:
  """The pooled standard deviation of ``arms``' final metric in a summary.

  Each arm's variance is weighted by its degrees of freedom; an arm with
  fewer than two finished runs adds nothing.

  Returns:
    ``(sd, degrees of freedom, one line per arm with its n and sd)``.

  Raises:
    StudyError: no arm has two finished runs.
  """
  metric = summary["metric"]
  lines, squares, dfs = [], 0.0, 0
  for arm in arms:
    entry = summary["arms"][arm][f"final_{metric}"]
    n = summary["arms"][arm]["n"]
    if entry["std"] is None:
      continue
    squares += (n - 1) * entry["std"] ** 2
    dfs += n - 1
    lines.append(f"  {arm}: n {n}, sd {entry['std']:.5f}")
  if not dfs:
    raise study_lib.StudyError(f"None of the arms {', '.join(arms)} has two "
                               "finished runs to measure a spread from.")
  return (squares / dfs) ** 0.5, dfs, lines


def seeds_for_margin(sd: float, margin: float, test: str, alpha: float
                     ) -> tuple[int | None, int | None]:
  """Seeds per arm for 80% power at ``margin`` when runs spread by ``sd``.

  Returns:
    ``(TOST at ±margin when the true difference is 0, the two-sided test
    of a true difference of margin)``, each at level ``alpha``; for
    ``paired`` the spread of a difference is taken as that of two
    independent runs (``√2 sd``), which is what pairing gives when it
    removes no noise. A study needs the larger.
  """
  scale = sd * (2 ** 0.5 if test == "paired" else 1.0)
  return (statistics.seeds_for_equivalence(margin / scale, test, alpha=alpha),
          statistics.seeds_for_power(margin / scale, test, alpha=alpha))


def power_plan(workdir: str, margin: float, test: str,
               arms: Sequence[str] | None = None,
               primaries: int | None = None) -> str:
  """The seeds per arm a study at ``margin`` needs, from ``workdir``'s spread.

  The spread is `pooled_spread` of the arms' final metric, the seeds
  `seeds_for_margin`'s two figures; a study needs the larger. With
  ``primaries`` (default: the study's ``primary_comparisons``) k above 1,
  both tests are at level 0.05 / k, as each primary comparison of such a
  study is.
  """
  summary, _ = summarize(workdir)
  metric = summary["metric"]
  arms = study_lib.select_arms(summary["arms"], arms)
  if not margin > 0:
    raise study_lib.StudyError(f"--margin must be above 0, got {margin}.")
  if primaries is None:
    primaries = summary.get("primary_comparisons", 1)
  if primaries < 1:
    raise study_lib.StudyError(
        f"--primaries must be at least 1, got {primaries}.")
  alpha = statistics.ALPHA / primaries
  sd, dfs, lines = pooled_spread(summary, arms)
  tost, detect = seeds_for_margin(sd, margin, test, alpha)
  each = ("" if primaries == 1 else
          f", each of {primaries} primary comparisons at alpha {alpha:g}")
  return "\n".join(
      [f"final {metric} of {workdir}, per arm:"] + lines + [
          f"pooled sd: {sd:.5f} ({dfs} degrees of freedom); margin "
          f"{margin:g} = {margin / sd:.3f} sd",
          f"seeds per arm for 80% power, {test} test{each}:",
          f"  TOST at ±{margin:g}, true difference 0: {tost}",
          f"  a true difference of {margin:g}, two-sided {100 * alpha:g}%: "
          f"{detect}",
          f"a study at this margin needs {max(tost or 0, detect or 0)} "
          "seeds per arm"]) + "\n"


def _pairs(texts: Sequence[str] | None) -> list[tuple[str, str]] | None:
  """``["a:b"]`` -> ``[("a", "b")]``; arm names may not hold a colon."""
  if texts is None:
    return None
  pairs = [tuple(text.split(":")) for text in texts]
  bad = [text for text, pair in zip(texts, pairs) if len(pair) != 2]
  if bad:
    raise study_lib.StudyError(f"--compare takes ARM:AGAINST, got {bad[0]!r}.")
  return pairs


def print_post_hoc(args) -> None:
  """The summary with the command line's comparisons; no file is written."""
  summary, _ = summarize(args.workdir, args.baseline, _pairs(args.compare),
                         args.margin)
  print("Post hoc: comparisons chosen on the command line, not the study's "
        "pre-registered ones; nothing was written.\n")
  print(summary_markdown(statistics.json_safe(summary)), end="")
