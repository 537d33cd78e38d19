"""The statistics of a study: per arm over seeds, and paired against a baseline.

Every test and interval comes from scipy: Student-t intervals of the mean over
seeds (`scipy.stats.t`) and paired t-tests (`scipy.stats.ttest_rel`) over the
seeds two arms share. `train.study` reads a study's runs and calls these.
"""

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from train import metric_writers
from train import plot


def mean_std_ci(values: Sequence[float], confidence: float = 0.95):
  """Mean, sample std and Student-t interval; no std or interval from one value.

  Example:
    >>> mean_std_ci([0.5])
    {'mean': 0.5, 'std': None, 'ci95': None}
  """
  values = np.asarray(values, float)
  if len(values) == 0:
    return {"mean": None, "std": None, "ci95": None}
  if len(values) == 1:
    return {"mean": float(values[0]), "std": None, "ci95": None}
  mean = float(np.mean(values))
  return {"mean": mean, "std": float(np.std(values, ddof=1)),
          "ci95": _t_interval(values, confidence)}


def _t_interval(values: np.ndarray, confidence: float) -> list[float]:
  """The Student-t interval of the mean (a point when the values are equal)."""
  mean, sem = float(np.mean(values)), float(stats.sem(values))
  if sem == 0.0:
    return [mean, mean]
  low, high = stats.t.interval(confidence, len(values) - 1, loc=mean,
                               scale=sem)
  return [float(low), float(high)]


def epochs_to_target(runs: Sequence[plot.Run], target: float):
  """The median over runs of the first epoch reaching ``target`` test accuracy.

  A run that never reaches it counts as infinitely late, so the median is
  None when half of the runs or more never get there.
  """
  firsts = []
  for run in runs:
    epochs, accuracy = run.curve("test_accuracy")
    reached = epochs[accuracy >= target]
    firsts.append(float(reached[0]) if len(reached) else math.inf)
  median = float(np.median(firsts)) if firsts else math.inf
  return {"median": median if math.isfinite(median) else None,
          "reached": int(np.isfinite(firsts).sum()), "n": len(firsts)}


def final(run: plot.Run, field: str) -> float:
  """The last epoch's value of an epoch-record field (NaN without epochs)."""
  _, values = run.curve(field)
  return float(values[-1]) if len(values) else math.nan


def best(run: plot.Run, field: str) -> float:
  """The highest value of an epoch-record field (NaN without epochs)."""
  _, values = run.curve(field)
  return float(np.nanmax(values)) if len(values) else math.nan


def _wall_time_s(run: plot.Run) -> float:
  records = metric_writers.read_metrics(run.path)
  return float(sum(r.get("epoch_time_s") or 0.0 for r in records.get(
      "epoch", [])) + sum(r.get("time_to_first_step_s") or 0.0
                          for r in records.get("run", [])))


def arm_statistics(runs: Sequence[plot.Run],
                   targets: Sequence[float]) -> dict[str, Any]:
  """The statistics of one arm's finished runs."""
  statistics = {
      "n": len(runs),
      "seeds": [run.config.get("seed") for run in runs],
      "final_test_accuracy": mean_std_ci(
          [final(r, "test_accuracy") for r in runs]),
      "best_test_accuracy": mean_std_ci(
          [best(r, "test_accuracy") for r in runs]),
      "epochs_to_target": {str(t): epochs_to_target(runs, t)
                           for t in targets},
      "final_train_loss": {
          k: v for k, v in mean_std_ci(
              [final(r, "train_loss") for r in runs]).items()
          if k != "ci95"},
      "wall_time_s": float(np.mean([_wall_time_s(r) for r in runs]))
                     if runs else None,
  }
  if runs and all(r.config.get("optimizer", {}).get("name") == "lcam"
                  for r in runs):
    fractions = [np.nanmean(r.curve("phase_below_fraction")[1]) for r in runs]
    statistics["phase_below_fraction"] = {
        k: v for k, v in mean_std_ci(fractions).items() if k != "ci95"}
  return statistics


def paired_difference(arm: dict[int, float], baseline: dict[int, float],
                      confidence: float = 0.95) -> dict[str, Any]:
  """Arm minus baseline over the seeds both have: paired t-test and interval.

  Args:
    arm: seed -> the arm's value (e.g. final test accuracy).
    baseline: seed -> the baseline's value.
    confidence: of the interval.

  Returns:
    ``{mean, ci95, p_value, n, verdict}``; the interval and p-value are None
    with fewer than two pairs.
  """
  seeds = sorted(set(arm) & set(baseline))
  differences = np.array([arm[s] - baseline[s] for s in seeds])
  result = {"mean": float(np.mean(differences)) if seeds else None,
            "ci95": None, "p_value": None, "n": len(seeds), "seeds": seeds}
  if len(seeds) >= 2:
    result["ci95"] = _t_interval(differences, confidence)
    if np.ptp(differences) > 0:  # Else the t statistic is undefined.
      result["p_value"] = float(stats.ttest_rel(
          [arm[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
  result["verdict"] = verdict(result)
  return result


def verdict(difference: dict[str, Any]) -> str:
  """Better, worse, or no detectable difference at 95%, in words."""
  if difference["ci95"] is None:
    return "too few paired seeds to tell"
  low, high = difference["ci95"]
  if low > 0:
    return "better"
  if high < 0:
    return "worse"
  return "no detectable difference at 95%"


def _percent(value, digits=2) -> str:
  return "–" if value is None else f"{100 * value:.{digits}f}"


def _mean_std_text(entry, scale=100.0, digits=2) -> str:
  if entry["mean"] is None:
    return "–"
  text = f"{scale * entry['mean']:.{digits}f}"
  if entry["std"] is not None:
    text += f" ± {scale * entry['std']:.{digits}f}"
  return text


def _interval_text(entry) -> str:
  if entry.get("ci95") is None:
    return "–"
  low, high = entry["ci95"]
  return f"[{_percent(low)}, {_percent(high)}]"


def _reach_text(entry) -> str:
  median = "–" if entry["median"] is None else f"{entry['median']:g}"
  return f"{median} ({entry['reached']}/{entry['n']})"


def summary_markdown(summary: dict[str, Any]) -> str:
  """``summary.md``: the same numbers as ``summary.json``, as tables."""
  targets = summary["targets"]
  lines = [
      "| arm | n | final test acc. % (mean ± std) | 95% CI | best test acc. %"
      " | " + " | ".join(f"epochs to {_percent(t, 0)}%" for t in targets)
      + " | final train loss | steps below mean | wall time / run |",
      "|---|---:|---:|---:|---:|" + "---:|" * len(targets) + "---:|---:|---:|"]
  for arm, s in summary["arms"].items():
    reach = [_reach_text(s["epochs_to_target"][str(t)]) for t in targets]
    below = s.get("phase_below_fraction")
    lines.append(
        f"| {arm} | {s['n']} | {_mean_std_text(s['final_test_accuracy'])} | "
        f"{_interval_text(s['final_test_accuracy'])} | "
        f"{_mean_std_text(s['best_test_accuracy'])} | "
        + "".join(f"{text} | " for text in reach)
        + f"{_mean_std_text(s['final_train_loss'], 1.0, 4)} | "
        + (f"{_mean_std_text(below, 1.0, 3)} | " if below else "– | ")
        + (f"{s['wall_time_s'] / 60:.1f} min |" if s["wall_time_s"] else
           "– |"))
  lines += ["", f"Paired against the baseline `{summary['baseline']}` "
            "(final test accuracy, same seeds; paired t-test):", "",
            "| arm | pairs | difference (points) | 95% CI | p-value | verdict |",
            "|---|---:|---:|---:|---:|---|"]
  for arm, d in summary["paired_difference"].items():
    mean = "–" if d["mean"] is None else f"{100 * d['mean']:+.2f}"
    p_value = "–" if d["p_value"] is None else f"{d['p_value']:.3f}"
    lines.append(f"| {arm} | {d['n']} | {mean} | {_interval_text(d)} | "
                 f"{p_value} | {d['verdict']} |")
  for kind in ("unfinished", "failed"):
    if summary[kind]:
      lines += ["", f"{kind.capitalize()} runs (not averaged): " + ", ".join(
          f"{r['arm']} seed {r['seed']}" for r in summary[kind]) + "."]
  return "\n".join(lines) + "\n"
