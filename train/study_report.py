"""``summary.md``: a study's summary as Markdown tables.

`summary_markdown` renders the summary that `train.study.summarize` builds
(the contents of ``summary.json``, numbers from `train.study_statistics`):
the arms, where their runs came from, the selection of winners, the
comparisons, and the unfinished and failed runs. Accuracies show in %,
differences in points.
"""

from typing import Any, Mapping, Sequence

from train import study_statistics as statistics

def _percent(value, digits=2) -> str:
  return "–" if value is None else f"{100 * value:.{digits}f}"


def _points(value) -> str:
  return "–" if value is None else f"{100 * value:+.2f}"


def _interval_text(interval, points=False) -> str:
  if interval is None:
    return "–"
  low, high = interval
  if points:
    return f"[{_points(low)}, {_points(high)}]"
  return f"[{_percent(low)}, {_percent(high)}]"


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
  label = _metric_label(metric)
  # Steps in the "below" phase; where recorded, also the steps whose loss was
  # below the running mean (they differ under phases="random").
  fractions = {"phase_below_fraction": "steps in below phase"}
  if any("loss_below_mean_fraction" in s for s in summary["arms"].values()):
    fractions["loss_below_mean_fraction"] = "loss below mean"
  header = (["arm", "n", f"final {label} % (mean ± std)", "95% CI",
             f"best {label} %"]
            + [f"epochs to {_percent(t, 0)}%" for t in targets]
            + ["final train loss", *fractions.values(), "wall time / run"])
  mean_std = statistics.mean_std_text
  rows = []
  for arm, s in summary["arms"].items():
    final_entry = s[f"final_{metric}"]
    rows.append(
        [arm, s["n"], mean_std(final_entry),
         _interval_text(final_entry["ci95"]), mean_std(s[f"best_{metric}"])]
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


def _comparisons_table(summary: dict[str, Any]) -> list[str]:
  test_names = {"paired": "paired t-test", "welch": "Welch t-test"}
  margin = summary["equivalence_margin"]
  equivalence = ("no equivalence margin declared" if margin is None else
                 f"equivalence: TOST at ±{100 * margin:.2f} points")
  rows = []
  for c in summary["comparisons"]:
    paired, welch = c["paired"], c["welch"]
    tost = c["equivalence"] or {"ci90": None, "p_value": None,
                                "verdict": "–"}
    power = c["seeds_for_80pct_power"]
    rows.append([
        c["arm"], c["against"], c["role"], paired["n"],
        _points(paired["mean"]), _interval_text(paired["ci95"], True),
        _p_text(paired["p_value"]), f"{welch['n'][0]}+{welch['n'][1]}",
        _points(welch["mean"]), _interval_text(welch["ci95"], True),
        _p_text(welch["p_value"]), _interval_text(tost["ci90"], True),
        _p_text(tost["p_value"]), tost["verdict"], c["verdict"],
        "–" if power is None else power])
  return [f"Comparisons of the final {_metric_label(summary['metric'])} "
          f"(differences in points; primary test: "
          f"{test_names[summary['primary_test']]}; {equivalence}):",
          ""] + _markdown_table(
              ["arm", "against", "role", "pairs", "paired diff.",
               "paired 95% CI", "paired p", "runs", "Welch diff.",
               "Welch 95% CI", "Welch p", "TOST 90% CI", "TOST p",
               "equivalence", "verdict", "seeds for 80% power"],
              "lll" + "r" * 10 + "llr", rows)


def _selection_lines(summary: dict[str, Any]) -> list[str]:
  label = _metric_label(summary["metric"])
  lines = [f"Selection (the study's rule: {summary['selection_rule']}):", ""]
  for family, chosen in summary["selection"].items():
    value = ("–" if chosen["value"] is None
             else f"{_percent(chosen['value'])} %")
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
  for kind in ("unfinished", "failed"):
    if summary[kind]:
      lines += ["", f"{kind.capitalize()} runs (not averaged): " + "; ".join(
          f"{r['arm']} seed {r['seed']}"
          + (f" ({r['reason']})" if r.get("reason") else "")
          for r in summary[kind]) + "."]
  return "\n".join(lines) + "\n"
