"""The statistics of a study: per arm over seeds, and comparisons of arms.

Every test and interval comes from scipy: Student-t intervals of the mean over
seeds (`scipy.stats.t`), paired t-tests over the seeds two arms share
(`scipy.stats.ttest_rel`), Welch t-tests over all their runs
(`scipy.stats.ttest_ind` with ``equal_var=False``), equivalence tests (TOST)
built from one-sided versions of the same tests, and the power of a t-test
from the noncentral t (`scipy.stats.nct`). A difference is always ``arm -
against``; whether above zero is better depends on the metric
(`metric_direction`: an accuracy higher, a loss lower). What each arm's runs
measured is `study.arms`'; `study.report` calls both.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

import numpy as np
from scipy import stats

TESTS = ("paired", "welch")
MIN_RUNS = 3  # Fewer pairs (paired) or runs per arm (Welch): "too few runs".
POWER = 0.8
ALPHA = 0.05
DIRECTIONS = ("higher", "lower")  # Which values of a metric are better.
MAX_SEEDS = 10**6  # seeds_for_80pct_power is None beyond this.


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


# -----------------------------------------------------------------------------
# Comparing two arms.


def _samples(arm: Mapping[int, float], against: Mapping[int, float],
             test: str) -> tuple[np.ndarray, np.ndarray]:
  """What ``test`` compares: the values of the shared seeds, in the same
  order (paired), or every value of each arm (Welch)."""
  if test == "paired":
    seeds = sorted(set(arm) & set(against))
    return (np.array([arm[s] for s in seeds], float),
            np.array([against[s] for s in seeds], float))
  return (np.array(list(arm.values()), float),
          np.array(list(against.values()), float))


def degenerate_spread(a: np.ndarray, b: np.ndarray, test: str) -> bool:
  """Whether the spread that ``test`` divides by is zero, up to rounding.

  Paired: the differences ``a - b`` are all equal; Welch: the values of each
  arm are. Equal means a range within ``1e-12 + 1e-9 * max |value|``, so
  floating-point near-ties count (their t statistic is huge and meaningless).

  Example:
    >>> a = np.array([0.7, 0.8, 0.9])
    >>> degenerate_spread(a, a - 0.1, "paired")  # differences 0.1 +- 1e-16
    True
  """
  tolerance = 1e-12 + 1e-9 * float(np.max(np.abs(np.concatenate([a, b]))))
  spreads = [np.ptp(a - b)] if test == "paired" else [np.ptp(a), np.ptp(b)]
  return bool(max(spreads) <= tolerance)


def _enough(a: np.ndarray, b: np.ndarray, test: str,
            runs: int = MIN_RUNS) -> bool:
  """Whether each side has ``runs`` values and no `degenerate_spread`; two
  suffice to compute a test, a verdict needs `MIN_RUNS`."""
  return min(len(a), len(b)) >= runs and not degenerate_spread(a, b, test)


def _scipy_test(a: np.ndarray, b: np.ndarray, test: str, **options):
  if test == "paired":
    return stats.ttest_rel(a, b, **options)
  return stats.ttest_ind(a, b, equal_var=False, **options)


def t_test(a: np.ndarray, b: np.ndarray, test: str) -> dict[str, Any]:
  """The difference ``a - b``: its mean, 95% t interval and two-sided p-value.

  Paired (``a[i]`` and ``b[i]`` from the same seed; `scipy.stats.ttest_rel`):
  the differences ``d`` have mean ``d̄`` and interval
  ``d̄ ± t(0.975, n-1) s_d / √n``. Welch (`scipy.stats.ttest_ind` with
  ``equal_var=False``): ``ā - b̄ ± t(0.975, ν) se`` with
  ``se² = s_a²/n_a + s_b²/n_b`` and the Welch–Satterthwaite
  ``ν = se⁴ / ((s_a²/n_a)²/(n_a-1) + (s_b²/n_b)²/(n_b-1))``.

  Returns:
    ``{mean, ci95, p_value, n}``, ``n`` the pairs (paired) or
    ``[n_a, n_b]`` (Welch); the interval and p-value are None with fewer
    than two values on a side or a `degenerate_spread`.
  """
  n = len(a) if test == "paired" else [len(a), len(b)]
  result = {"mean": None, "ci95": None, "p_value": None, "n": n}
  if len(a) and len(b):
    result["mean"] = float(np.mean(a - b) if test == "paired" else
                           np.mean(a) - np.mean(b))
  if _enough(a, b, test, runs=2):
    outcome = _scipy_test(a, b, test)
    result["ci95"] = [float(x) for x in outcome.confidence_interval(0.95)]
    result["p_value"] = float(outcome.pvalue)
  return result


def tost_level(alpha: float = ALPHA) -> str:
  """The confidence in % of a level-``alpha`` TOST's interval, ``1 - 2 alpha``.

  Example:
    >>> tost_level(), tost_level(0.025)
    ('90', '95')
  """
  return f"{100 * (1 - 2 * alpha):g}"


def tost_interval(equivalence: Mapping[str, Any]) -> list[float] | None:
  """The ``1 - 2 alpha`` interval of an `equivalence_test` result."""
  return equivalence["ci" + tost_level(equivalence.get("alpha", ALPHA))]


def equivalence_test(a: np.ndarray, b: np.ndarray, test: str,
                     margin: float, alpha: float = ALPHA) -> dict[str, Any]:
  """TOST: two one-sided level-``alpha`` ``test``s that the difference lies
  within ±margin.

  The null hypotheses are ``Δ <= -margin`` (tested as ``a + margin`` against
  ``b``, alternative "greater") and ``Δ >= margin`` (``a - margin``,
  "less"); ``p_value`` is the larger of the two one-sided p-values. The
  verdict is ``equivalent`` iff the ``1 - 2 alpha`` interval of the
  difference (90% at the default 5%) lies inside ``(-margin, margin)`` (the
  same as ``p_value < alpha``) and the runs suffice for a verdict at all
  (see `verdict`).

  Returns:
    ``{margin, ci90, p_value, verdict}``; at another ``alpha`` than 5%, with
    ``alpha`` and the interval named for its `tost_level` (``ci95`` at
    0.025; `tost_interval` reads either). The interval and p-value are None
    where `t_test` has none.
  """
  key = "ci" + tost_level(alpha)
  result = {"margin": margin, **({} if alpha == ALPHA else {"alpha": alpha}),
            key: None, "p_value": None, "verdict": "not shown equivalent"}
  if not _enough(a, b, test, runs=2):
    return result
  low, high = (float(x) for x in
               _scipy_test(a, b, test).confidence_interval(1 - 2 * alpha))
  result[key] = [low, high]
  result["p_value"] = float(max(
      _scipy_test(a + margin, b, test, alternative="greater").pvalue,
      _scipy_test(a - margin, b, test, alternative="less").pvalue))
  if _enough(a, b, test) and -margin < low and high < margin:
    result["verdict"] = "equivalent"
  return result


def direction_sign(direction: str) -> float:
  """``+1`` where higher is better, ``-1`` where lower is: a value times it
  is higher when better.

  Example:
    >>> direction_sign("higher"), direction_sign("lower")
    (1.0, -1.0)
  """
  return 1.0 if direction == "higher" else -1.0


def verdict(difference: Mapping[str, Any], enough: bool,
            direction: str = "higher") -> str:
  """``better`` or ``worse`` when the 95% interval excludes zero.

  Better is above zero where higher is better (``direction``), below zero
  where lower is. ``too few runs`` when not ``enough`` (fewer than
  `MIN_RUNS` pairs or runs per arm, or a `degenerate_spread`), else
  ``inconclusive``.

  Example:
    >>> verdict({"ci95": [-0.03, -0.01]}, True, "lower")
    'better'
  """
  if not enough or difference["ci95"] is None:
    return "too few runs"
  low, high = sorted(direction_sign(direction) * x
                     for x in difference["ci95"])
  if low > 0:
    return "better"
  if high < 0:
    return "worse"
  return "inconclusive"


def holm(p_values: Sequence[float | None]) -> list[float | None]:
  """Holm's step-down adjustment, for p-values read as one family of tests.

  With ``m`` p-values in increasing order ``p_(1) <= ... <= p_(m)``, the
  ``k``-th becomes ``max over j <= k of min(1, (m - j + 1) p_(j))``: a test
  whose adjusted p-value is below 5% rejects at a 5% family-wise error rate.
  A missing p-value (None or NaN: no test) stays None and is not counted in
  ``m``.

  Example:
    >>> holm([0.25, 0.125, 0.0625, None])
    [0.25, 0.25, 0.1875, None]
  """
  present = sorted((p, i) for i, p in enumerate(p_values)
                   if p is not None and np.isfinite(p))
  adjusted: list[float | None] = [None] * len(p_values)
  running = 0.0
  for rank, (p, index) in enumerate(present):
    running = max(running, min(1.0, (len(present) - rank) * p))
    adjusted[index] = running
  return adjusted


def power(effect_size: float, seeds: int, test: str,
          alpha: float = ALPHA) -> float:
  """The power of the two-sided level-``alpha`` t-test, from `scipy.stats.nct`.

  ``effect_size`` is the mean difference over its standard deviation: of
  the differences (paired), or over the pooled ``√((s_a² + s_b²)/2)``
  (Welch, taken as the equal-variance test with ``seeds`` runs per arm).
  Paired: ``df = n - 1``, noncentrality ``δ = d √n``; two arms:
  ``df = 2n - 2``, ``δ = d √(n/2)``. The power is
  ``P(T > c) + P(T < -c)`` for ``T ~ nct(df, δ)`` and ``c`` the
  ``1 - alpha/2`` quantile of ``t(df)``.

  Example:
    >>> round(power(0.5, 34, "paired"), 3)  # Cohen's table: 34 pairs
    0.808
  """
  if test == "paired":
    df, noncentrality = seeds - 1, effect_size * math.sqrt(seeds)
  else:
    df, noncentrality = 2 * seeds - 2, effect_size * math.sqrt(seeds / 2)
  critical = stats.t.ppf(1 - alpha / 2, df)
  return float(stats.nct.sf(critical, df, noncentrality)
               + stats.nct.cdf(-critical, df, noncentrality))


def seeds_for_power(effect_size: float, test: str, target: float = POWER,
                    alpha: float = ALPHA) -> int | None:
  """The fewest seeds per arm (pairs) at which `power` (at ``alpha``)
  reaches ``target``.

  None when there is no effect (zero or undefined) or it needs more than
  `MAX_SEEDS`.

  Example:
    >>> seeds_for_power(0.5, "paired"), seeds_for_power(0.5, "welch")
    (34, 64)
  """
  if not math.isfinite(effect_size) or effect_size == 0:
    return None
  return _fewest_seeds(lambda n: power(effect_size, n, test, alpha), target)


def equivalence_power(margin: float, seeds: int, test: str,
                      alpha: float = ALPHA) -> float:
  """The power of the TOST at ``±margin`` when the true difference is zero.

  ``margin`` is in standard deviations, as ``effect_size`` in `power`. With
  the standard error ``se`` of the difference (``1/√n`` paired, ``√(2/n)``
  for two arms of ``n``) and ``c`` the ``1 - alpha`` quantile of ``t(df)``,
  the TOST shows equivalence when ``|D| < margin - c·se``; taking ``D/se`` as
  ``t(df)`` gives ``2 F(margin/se - c) - 1`` (Chow, Shao and Wang, *Sample
  Size Calculations in Clinical Research*, 2nd ed., section 3.2), or 0.

  Example:
    >>> round(equivalence_power(1.0, 20, "welch"), 3)
    0.852
  """
  if test == "paired":
    df, se = seeds - 1, 1 / math.sqrt(seeds)
  else:
    df, se = 2 * seeds - 2, math.sqrt(2 / seeds)
  slack = margin / se - stats.t.ppf(1 - alpha, df)
  return max(0.0, float(2 * stats.t.cdf(slack, df) - 1))


def seeds_for_equivalence(margin: float, test: str, target: float = POWER,
                          alpha: float = ALPHA) -> int | None:
  """The fewest seeds per arm (pairs) at which `equivalence_power` (at
  ``alpha``) reaches ``target``; None for a margin that is not positive, or
  above `MAX_SEEDS`.

  Example:
    >>> seeds_for_equivalence(1.0, "welch")
    18
  """
  if not math.isfinite(margin) or margin <= 0:
    return None
  return _fewest_seeds(lambda n: equivalence_power(margin, n, test, alpha),
                       target)


def _fewest_seeds(power_of, target: float) -> int | None:
  """The smallest n >= 2 with ``power_of(n) >= target``, for a power that
  grows with n: doubling, then bisecting; None above `MAX_SEEDS`."""
  low, high = 1, 2  # power_of(low) < target, or low is too few to test.
  while power_of(high) < target:
    if high >= MAX_SEEDS:
      return None
    low, high = high, 2 * high
  while high - low > 1:
    middle = (low + high) // 2
    if power_of(middle) < target:
      low = middle
    else:
      high = middle
  return high


def effect_size(a: np.ndarray, b: np.ndarray, test: str) -> float:
  """The observed effect in standard deviations (see `power`); NaN if none."""
  if not _enough(a, b, test, runs=2):
    return math.nan
  if test == "paired":
    differences = a - b
    return float(np.mean(differences) / np.std(differences, ddof=1))
  pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
  return float((np.mean(a) - np.mean(b)) / pooled)


def compare(arm: Mapping[int, float], against: Mapping[int, float], *,
            primary_test: str = "paired", margin: float | None = None,
            direction: str = "higher", alpha: float = ALPHA
            ) -> dict[str, Any]:
  """One arm against another, by the paired and the Welch t-test.

  Args:
    arm: seed -> the arm's value (e.g. final test accuracy).
    against: seed -> the other arm's value.
    primary_test: ``"paired"`` or ``"welch"``: the test that gives the
      verdict, the equivalence test and the seeds needed.
    margin: the equivalence margin, declared before the runs; None for no
      equivalence test.
    direction: ``"higher"`` or ``"lower"``, whichever value is better
      (`metric_direction`): what the verdict calls better.
    alpha: the level of the equivalence test and of the power calculation
      (``0.05 / k`` for each of k primary comparisons).

  Returns:
    ``{paired, welch}`` (each `t_test`'s, paired with its ``seeds``),
    ``equivalence`` (`equivalence_test`'s, or None without a margin),
    ``verdict`` (`verdict`'s) and ``seeds_for_80pct_power`` (`seeds_for_power`
    at the observed effect size and ``alpha``).
  """
  samples = {test: _samples(arm, against, test) for test in TESTS}
  result = {test: t_test(*samples[test], test) for test in TESTS}
  result["paired"]["seeds"] = sorted(set(arm) & set(against))
  a, b = samples[primary_test]
  result["equivalence"] = None if margin is None else equivalence_test(
      a, b, primary_test, margin, alpha)
  result["verdict"] = verdict(result[primary_test],
                              _enough(a, b, primary_test), direction)
  result["seeds_for_80pct_power"] = seeds_for_power(
      effect_size(a, b, primary_test), primary_test, alpha=alpha)
  return result


def metric_direction(metric: str, declared: str | None = None) -> str:
  """Whether a higher or a lower value of the field ``metric`` is better.

  ``declared`` (a study's ``metric_direction``) decides where given;
  otherwise the name: a loss or an error (a name that holds ``loss`` or
  ``error``) is better lower, anything else (an accuracy) higher. This is
  the one place that decides it.

  Example:
    >>> metric_direction("val_accuracy"), metric_direction("test_loss")
    ('higher', 'lower')
    >>> metric_direction("val_nll", declared="lower")
    'lower'
  """
  if declared is not None:
    return declared
  name = metric.lower()
  return "lower" if "loss" in name or "error" in name else "higher"


def json_safe(tree: Any) -> Any:
  """``tree`` with every non-finite float made None, for strict JSON.

  Example:
    >>> json_safe({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
  """
  if isinstance(tree, Mapping):
    return {key: json_safe(value) for key, value in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [json_safe(value) for value in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def mean_std_text(entry: Mapping[str, Any], scale: float = 100.0,
                  digits: int = 2) -> str:
  """``mean ± std`` of a `mean_std_ci` entry, scaled; the mean alone without
  a std, ``–`` without values.

  Example:
    >>> mean_std_text(mean_std_ci([0.8, 0.9]))
    '85.00 ± 7.07'
  """
  if entry["mean"] is None:
    return "–"
  text = f"{scale * entry['mean']:.{digits}f}"
  if entry["std"] is not None:
    text += f" ± {scale * entry['std']:.{digits}f}"
  return text


def select_winners(families: Mapping[str, Sequence[str]],
                   finals: Mapping[str, float | None],
                   tie: float = 1e-9,
                   diverged: Sequence[str] = (),
                   direction: str = "higher") -> dict[str, Any]:
  """Per family, the arm with the best mean final metric: the highest, or
  the lowest where lower is better (``direction``).

  Args:
    families: family -> its arms, in the order that breaks ties (the first
      of arms within ``tie`` of the best wins).
    finals: arm -> its mean final metric (None: no finished run).
    tie: values this close count as equal.
    diverged: arms whose runs diverged: a result, ranked last (they can
      win only a family where every arm diverged, and then none wins).

  Returns:
    family -> ``{winner, value, complete}``; ``complete`` is False while an
    arm of the family has no finished run (the winner may still change), and
    the winner is None when none has.

  Example:
    >>> select_winners({"sgd": ["a", "b", "c"]}, {"a": 0.7, "b": 0.7, "c": 0.6})
    {'sgd': {'winner': 'a', 'value': 0.7, 'complete': True}}
    >>> select_winners({"sgd": ["a", "b"]}, {"a": 0.6}, diverged=["b"])
    {'sgd': {'winner': 'a', 'value': 0.6, 'complete': True}}
    >>> select_winners({"sgd": ["a", "b"]}, {"a": 1.5, "b": 1.2},
    ...                direction="lower")["sgd"]["winner"]
    'b'
  """
  sign = direction_sign(direction)
  selection = {}
  for family, arms in families.items():
    known = [(arm, sign * finals.get(arm)) for arm in arms
             if finals.get(arm) is not None]
    best = max((value for _, value in known), default=None)
    winner = next((arm for arm, value in known if value >= best - tie), None)
    best_value = None if best is None else sign * best
    ranked = len(known) + sum(arm in diverged for arm in arms
                              if finals.get(arm) is None)
    selection[family] = {"winner": winner, "value": best_value,
                         "complete": ranked == len(arms)}
  return selection
