"""A tuning grid's pick: each family's winner, and whether it sits on an edge.

A tuning study names its arms ``FAMILY-lrRATE-...`` and lists them under
``families`` in the order that breaks ties (the lower rate first, then the
second axis in the study's order). `select` reads the finished runs of one
or more such study folders together (a grid and its extension), ranks a
diverged run last (`study.statistics.select_winners`) and says whether each
winner sits at its family's smallest or largest rate: there the grid is not
finished. `print_selection` prints what the study files'
``python study/studies/NAME.py select`` commands print.
"""

from collections.abc import Callable, Sequence
from typing import Any

from study import arms as arms_lib
from study import definition
from study import statistics

EDGES = ("smallest", "largest")


def learning_rate(arm: str) -> float:
  """The rate in a tuning arm's name.

  Example:
    >>> learning_rate("sgd-lr0.4-m0.9"), learning_rate("adamw-lr0.001-b0.9")
    (0.4, 0.001)
  """
  return float(arm.split("-lr")[1].split("-")[0])


def select(workdirs: Sequence[str], edges: Sequence[str] = EDGES
           ) -> dict[str, Any]:
  """Each family's winner over the finished runs of ``workdirs`` together.

  Args:
    workdirs: Study folders, in tie-breaking order (a family's arms of the
      first come first); the first's metric and direction rank them.
    edges: The edges that leave a grid unfinished: ``"smallest"``,
      ``"largest"`` or both.

  Returns:
    ``{"families", "finals" (arm -> value, ``"diverged"``, or absent while
    pending), "metric", "selection"}``, the latter as
    `study.statistics.select_winners` gives it with ``"edge"``: the edge of
    ``edges`` the winner sits on, or None.
  """
  families: dict[str, list[str]] = {}
  finals: dict[str, float | str] = {}
  first = definition.read_study(workdirs[0])
  metric = first.get("metric", definition.DEFAULT_METRIC)
  direction = statistics.metric_direction(metric,
                                          first.get("metric_direction"))
  for workdir in workdirs:
    study = definition.read_study(workdir)
    for family, members in study.families.items():
      families.setdefault(family, []).extend(members)
    for status in definition.study_runs(study, workdir):
      if status.state == "finished":
        finals[status.arm] = arms_lib.final(status.run, metric)
      elif status.state == "diverged":
        finals[status.arm] = "diverged"
  selection = statistics.select_winners(
      families, {arm: v for arm, v in finals.items() if v != "diverged"},
      diverged=[arm for arm, v in finals.items() if v == "diverged"],
      direction=direction)
  for family, chosen in selection.items():
    rates = sorted(map(learning_rate, families[family]))
    rate = chosen["winner"] and learning_rate(chosen["winner"])
    at = {"smallest": rates[0], "largest": rates[-1]}
    chosen["edge"] = next((edge for edge in edges
                           if chosen["winner"] and rate == at[edge]), None)
  return {"families": families, "finals": finals, "metric": metric,
          "selection": selection}


def print_selection(chosen: dict[str, Any],
                    format_value: Callable[[float], str]) -> int:
  """Prints every arm's final value (``format_value``) and each family's
  pick; returns 0 once every family is complete with its winner inside its
  grid, 1 otherwise."""
  for family, members in chosen["families"].items():
    print(f"{family}:")
    for arm in members:
      value = chosen["finals"].get(arm)
      text = value if isinstance(value, str) else (
          "pending" if value is None else format_value(value))
      print(f"  {arm}: {text}")
    pick = chosen["selection"][family]
    print(f"  winner: {pick['winner']}"
          + ("" if pick["complete"] else " (not final: runs pending)")
          + (f" -- at the {pick['edge']} rate: extend this family"
             if pick["edge"] else ""))
  return 0 if all(p["complete"] and not p["edge"]
                  for p in chosen["selection"].values()) else 1
