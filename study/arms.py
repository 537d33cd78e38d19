"""What an arm's runs measured: final and best values, epochs to a target,
phase fractions, wall time, and where the runs came from.

Every function reads runs as `train.record.Run`; `arm_statistics` is one
arm's entry of a study's ``summary.json``.
"""

from collections.abc import Sequence
import math
from typing import Any

import numpy as np

from study import statistics
from train import record


def epochs_to_target(runs: Sequence[record.Run], target: float,
                     metric: str = record.TEST_ACCURACY,
                     direction: str = "higher"):
  """The median first epoch at which a run's ``metric`` reaches ``target``.

  Reaching is being at or above it, or at or below it where lower is better
  (``direction``: a loss falling to the target). A run that never reaches it
  counts as infinitely late, so the median is None when half of the runs or
  more never get there.
  """
  sign = statistics.direction_sign(direction)
  firsts = []
  for run in runs:
    epochs, values = run.curve(metric)
    reached = epochs[sign * values >= sign * target]
    firsts.append(float(reached[0]) if len(reached) else math.inf)
  median = float(np.median(firsts)) if firsts else math.inf
  return {"median": median if math.isfinite(median) else None,
          "reached": int(np.isfinite(firsts).sum()), "n": len(firsts)}


def final(run: record.Run, field: str) -> float:
  """The last epoch's value of an epoch-record field (NaN without one).

  This is "final" everywhere: in a study's summary and in ``study.plot``'s
  table. A run whose last epoch record has no value of the field (it was
  not evaluated then, or the value was NaN) has no final value, even if an
  earlier epoch has one.
  """
  _, values = run.curve(field)
  return float(values[-1]) if len(values) else math.nan


def _best_index(values: np.ndarray, direction: str) -> int:
  """The index of the first best of finite ``values`` (highest or lowest)."""
  return int(np.argmax(statistics.direction_sign(direction) * values))


def best(run: record.Run, field: str, direction: str = "higher") -> float:
  """The best value of an epoch-record field: the highest, or the lowest
  where lower is better (``direction``); NaN without epochs."""
  _, values = run.curve(field)
  values = values[np.isfinite(values)]
  return float(values[_best_index(values, direction)]) if len(values) else (
      math.nan)


def best_epoch(run: record.Run, field: str, direction: str = "higher"
               ) -> float:
  """The first epoch at the `best` value of a field (NaN without values)."""
  epochs, values = run.curve(field)
  finite = np.isfinite(values)
  return float(epochs[finite][_best_index(values[finite], direction)]) if (
      finite.any()) else math.nan


def final_and_best(runs: Sequence[record.Run],
                   metric: str = record.TEST_ACCURACY,
                   direction: str = "higher") -> dict[str, Any]:
  """The `final` and `best` ``metric`` of the runs that have a final value.

  Runs without a `final` value are left out (a study counts a finished one
  as failed). ``final`` and ``best`` are `mean_std_ci` over the runs left;
  ``last_epoch`` and ``best_epoch`` list, per run left, the epoch of its
  final value and the first epoch at its best (`best_epoch`).
  """
  runs = [run for run in runs if np.isfinite(final(run, metric))]
  return {"n": len(runs),
          "final": statistics.mean_std_ci([final(r, metric) for r in runs]),
          "best": statistics.mean_std_ci(
              [best(r, metric, direction) for r in runs]),
          "last_epoch": [float(run.curve(metric)[0][-1]) for run in runs],
          "best_epoch": [best_epoch(run, metric, direction) for run in runs]}


def below_fractions(run: record.Run) -> tuple[float, ...]:
  """A loss-controlled run's fraction of steps in the below phase, epoch by
  epoch.

  Raises:
    ValueError: an epoch records no fraction (the run is not loss-controlled).
  """
  _, fractions = run.curve(record.PHASE_BELOW_FRACTION)
  if not len(fractions) or np.isnan(fractions).any():
    raise ValueError(f"{run.path} records no {record.PHASE_BELOW_FRACTION} "
                     "in some epoch: not a loss-controlled run.")
  return tuple(float(f) for f in fractions)


def _finite_mean(values: np.ndarray) -> float:
  values = values[np.isfinite(values)]
  return float(np.mean(values)) if len(values) else math.nan


def _wall_time_s(run: record.Run) -> float:
  return float(sum(r.get(record.EPOCH_TIME_S) or 0.0 for r in run.epochs)
               + sum(r.get(record.TIME_TO_FIRST_STEP_S) or 0.0
                     for r in run.starts))


def arm_statistics(runs: Sequence[record.Run], targets: Sequence[float],
                   metric: str = record.TEST_ACCURACY,
                   direction: str = "higher") -> dict[str, Any]:
  """The statistics of one arm's finished runs, on the epoch field ``metric``
  (better ``direction``: ``"higher"`` or ``"lower"``).

  Runs of a loss-controlled optimizer also get the mean over epochs of the
  fraction of steps in the "below" phase (``phase_below_fraction``), and,
  where recorded, of steps whose loss was below the running mean
  (``loss_below_mean_fraction``): the same under the loss rule, different
  under ``phases="random"``.
  """
  summary = final_and_best(runs, metric, direction)
  entry = {
      "n": len(runs),
      "seeds": [run.config.get("seed") for run in runs],
      f"final_{metric}": summary["final"],
      f"best_{metric}": summary["best"],
      "epochs_to_target": {str(t): epochs_to_target(runs, t, metric,
                                                    direction)
                           for t in targets},
      "final_train_loss": {
          k: v for k, v in statistics.mean_std_ci(
              [final(r, record.TRAIN_LOSS) for r in runs]).items()
          if k != "ci95"},
      "wall_time_s": float(np.mean([_wall_time_s(r) for r in runs]))
                     if runs else None,
  }
  for field in (record.PHASE_BELOW_FRACTION, record.LOSS_BELOW_MEAN_FRACTION):
    fractions = [_finite_mean(r.curve(field)[1]) for r in runs]
    if runs and np.isfinite(fractions).all():
      entry[field] = {
          k: v for k, v in statistics.mean_std_ci(fractions).items()
          if k != "ci95"}
  entry["provenance"] = provenance(runs)
  return entry


# Provenance key in the summary -> field of the "run" records.
PROVENANCE_FIELDS = dict(zip(
    ("commits", "tracked_changes", "versions", "data_fingerprints",
     "device_kinds", "devices", "processes", "cpus"),
    record.PROVENANCE_FIELDS, strict=True))


def _distinct(values) -> list[Any]:
  """The distinct values in order of first appearance (dicts by content)."""
  kept = []
  for value in values:
    if value not in kept:
      kept.append(value)
  return kept


def provenance(runs: Sequence[record.Run]) -> dict[str, Any]:
  """Where an arm's runs came from, over every start of every run.

  Returns:
    For each key of `PROVENANCE_FIELDS`, the distinct values of that field
    in the runs' ``"kind": "run"`` records (None for a record without it, as
    written before the field existed; ``cpus`` is left out when no run
    recorded its processor); and ``restarts``: per run, in the order of the
    runs, its starts after the first.

  Example:
    >>> provenance([])["restarts"]
    []
  """
  summary = {key: _distinct(start.get(field) for run in runs
                            for start in run.all_starts)
             for key, field in PROVENANCE_FIELDS.items()}
  if summary["cpus"] in ([], [None]):  # Runs from before it was recorded.
    del summary["cpus"]
  summary["restarts"] = [max(len(run.all_starts) - 1, 0) for run in runs]
  return summary
