"""Tests of study.statistics against independent computations."""

import math

import numpy as np
import pytest
from scipy import stats

from study import statistics

ARM = np.array([0.712, 0.731, 0.705, 0.726, 0.719])
AGAINST = np.array([0.701, 0.722, 0.709, 0.711, 0.703])
OTHER = np.array([0.690, 0.735, 0.702, 0.741])  # another size and spread


def _welch_by_hand(a, b):
  """Difference of means, its standard error and Welch-Satterthwaite df."""
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  return np.mean(a) - np.mean(b), math.sqrt(va + vb), df


def _paired_by_hand(a, b):
  d = a - b
  return np.mean(d), np.std(d, ddof=1) / math.sqrt(len(d)), len(d) - 1


@pytest.mark.parametrize("test, by_hand, b", [
    ("paired", _paired_by_hand, AGAINST), ("welch", _welch_by_hand, AGAINST),
    ("welch", _welch_by_hand, OTHER)])
def test_t_test_and_tost_equal_the_formulas(test, by_hand, b):
  mean, se, df = by_hand(ARM, b)
  got = statistics.t_test(ARM, b, test)
  np.testing.assert_allclose(got["mean"], mean)
  np.testing.assert_allclose(got["ci95"], [mean - stats.t.ppf(0.975, df) * se,
                                           mean + stats.t.ppf(0.975, df) * se])
  np.testing.assert_allclose(got["p_value"],
                             2 * stats.t.sf(abs(mean / se), df))

  margin = 0.01
  tost = statistics.equivalence_test(ARM, b, test, margin)
  p_lower = stats.t.sf((mean + margin) / se, df)  # H0: difference <= -m
  p_upper = stats.t.cdf((mean - margin) / se, df)  # H0: difference >= m
  np.testing.assert_allclose(tost["p_value"], max(p_lower, p_upper))
  half = stats.t.ppf(0.95, df) * se
  np.testing.assert_allclose(tost["ci90"], [mean - half, mean + half])
  assert tost["margin"] == margin
  assert tost["verdict"] == ("equivalent" if -margin < mean - half
                             and mean + half < margin
                             else "not shown equivalent")


def test_equivalence_verdict_agrees_with_the_tost_p_value():
  rng = np.random.default_rng(0)
  verdicts = set()
  for _ in range(50):
    a = 0.7 + 0.01 * rng.standard_normal(6)
    b = a + 0.003 * rng.standard_normal(6) + rng.uniform(-0.01, 0.01)
    for test in statistics.TESTS:
      tost = statistics.equivalence_test(a, b, test, 0.01)
      assert (tost["verdict"] == "equivalent") == (tost["p_value"] < 0.05)
      verdicts.add(tost["verdict"])
  assert verdicts == {"equivalent", "not shown equivalent"}


@pytest.mark.parametrize("effect_size, test, seeds", [
    (0.5, "paired", 34), (0.8, "paired", 15),  # G*Power, one-sample t
    (0.5, "welch", 64), (0.8, "welch", 26)])   # Cohen (1988), table 2.4.1
def test_seeds_for_power_match_textbook_values(effect_size, test, seeds):
  assert statistics.seeds_for_power(effect_size, test) == seeds
  assert statistics.seeds_for_power(-effect_size, test) == seeds
  assert statistics.power(effect_size, seeds - 1, test) < 0.8
  assert statistics.power(effect_size, seeds, test) >= 0.8


@pytest.mark.parametrize("test", statistics.TESTS)
def test_power_matches_simulation(test):
  """The rejection rate of simulated t-tests, with no noncentral t."""
  rng = np.random.default_rng(1)
  effect_size, seeds, trials = 0.8, 8, 40_000
  a = rng.standard_normal((trials, seeds)) + effect_size
  if test == "paired":  # a holds the differences
    t = a.mean(1) / (a.std(1, ddof=1) / math.sqrt(seeds))
    df = seeds - 1
  else:
    b = rng.standard_normal((trials, seeds))
    pooled = np.sqrt((a.var(1, ddof=1) + b.var(1, ddof=1)) / 2)
    t = (a.mean(1) - b.mean(1)) / (pooled * math.sqrt(2 / seeds))
    df = 2 * seeds - 2
  simulated = np.mean(np.abs(t) > stats.t.ppf(0.975, df))
  assert statistics.power(effect_size, seeds, test) == pytest.approx(
      simulated, abs=0.01)


def test_no_effect_needs_no_seeds():
  assert statistics.seeds_for_power(0.0, "paired") is None
  assert statistics.seeds_for_power(math.nan, "welch") is None
  assert statistics.seeds_for_power(1e-5, "paired") is None  # > MAX_SEEDS


def test_compare_reports_power_at_the_observed_effect():
  d = ARM - AGAINST
  got = statistics.compare(dict(enumerate(ARM)), dict(enumerate(AGAINST)))
  assert got["seeds_for_80pct_power"] == statistics.seeds_for_power(
      np.mean(d) / np.std(d, ddof=1), "paired")
  welch = statistics.compare(dict(enumerate(ARM)), dict(enumerate(OTHER)),
                             primary_test="welch")
  pooled = math.sqrt((np.var(ARM, ddof=1) + np.var(OTHER, ddof=1)) / 2)
  assert welch["seeds_for_80pct_power"] == statistics.seeds_for_power(
      (np.mean(ARM) - np.mean(OTHER)) / pooled, "welch")


def test_verdict_follows_the_interval():
  def verdict(arm, against, **options):
    return statistics.compare(dict(enumerate(arm)), dict(enumerate(against)),
                              **options)["verdict"]
  assert verdict([0.7, 0.8, 0.75], [0.5, 0.6, 0.56]) == "better"
  assert verdict([0.5, 0.6, 0.56], [0.7, 0.8, 0.75]) == "worse"
  assert verdict([0.7, 0.6, 0.75], [0.6, 0.65, 0.7]) == "inconclusive"
  assert verdict([0.7, 0.8], [0.5, 0.6]) == "too few runs"  # two pairs
  assert verdict([0.7, 0.8, 0.9], [0.5, 0.6], primary_test="welch") == (
      "too few runs")


def test_degenerate_spread_is_too_few_runs_never_better():
  arm = [0.7, 0.8, 0.9]
  # Differences of exactly 0.2, and 0.1 up to rounding (1e-16 apart).
  for against in ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8]):
    got = statistics.compare(dict(enumerate(arm)), dict(enumerate(against)),
                             margin=0.5)
    assert got["verdict"] == "too few runs"
    assert got["paired"]["ci95"] is None and got["paired"]["p_value"] is None
    assert got["equivalence"]["verdict"] == "not shown equivalent"
    assert got["seeds_for_80pct_power"] is None
  # Welch divides by each arm's spread: constant arms are degenerate.
  got = statistics.compare({0: 0.7, 1: 0.7, 2: 0.7}, {0: 0.6, 1: 0.6, 2: 0.6},
                           primary_test="welch")
  assert got["verdict"] == "too few runs"
  assert got["welch"]["mean"] == pytest.approx(0.1)
  # A spread far above rounding is not degenerate.
  assert not statistics.degenerate_spread(
      np.array([0.7, 0.8, 0.9]), np.array([0.6, 0.7, 0.8 - 1e-6]), "paired")


@pytest.mark.parametrize("test, seeds", [("welch", 18), ("paired", 11)])
def test_equivalence_power_matches_a_simulated_tost(test, seeds):
  """The TOST's equivalence rate at a true difference of zero, simulated with
  the project's own test, against the formula (margin one SD)."""
  rng = np.random.default_rng(0)
  trials, margin = 1500, 1.0
  shown = 0
  for _ in range(trials):
    a = rng.normal(size=seeds)
    # Two arms of SD one; paired: differences of SD one.
    b = a - rng.normal(size=seeds) if test == "paired" else rng.normal(
        size=seeds)
    shown += statistics.equivalence_test(
        a, b, test, margin)["verdict"] == "equivalent"
  expected = statistics.equivalence_power(margin, seeds, test)
  assert abs(shown / trials - expected) < 0.04  # 4 SDs of the simulation
  assert statistics.seeds_for_equivalence(margin, test) == seeds
  assert statistics.equivalence_power(margin, seeds - 1, test) < 0.8


def _holm_rejections(p_values, alpha):
  """Holm's procedure as written: reject in increasing order while
  p_(k) <= alpha / (m - k + 1), counting k from 1."""
  order = np.argsort(p_values)
  rejected = set()
  for k, index in enumerate(order):
    if p_values[index] > alpha / (len(p_values) - k):
      break
    rejected.add(int(index))
  return rejected


def test_holm_adjusted_p_values_reject_as_holms_procedure_does():
  rng = np.random.default_rng(0)
  for size in (1, 2, 4, 7):
    for _ in range(50):
      p_values = rng.uniform(0, 0.2, size) ** 2
      adjusted = statistics.holm(list(p_values))
      assert all(p <= a <= 1 for p, a in zip(p_values, adjusted))
      for alpha in (0.01, 0.05, 0.1):
        got = {i for i, a in enumerate(adjusted) if a <= alpha}
        assert got == _holm_rejections(p_values, alpha)


def test_holm_skips_missing_p_values():
  assert statistics.holm([None, 0.02, float("nan"), 0.04]) == [
      None, 0.04, None, 0.04]
  assert statistics.holm([]) == []


def test_a_lower_is_better_metric_turns_the_verdict():
  losses = {0: 1.45, 1: 1.46, 2: 1.44}
  against = {0: 1.50, 1: 1.52, 2: 1.49}
  lower = statistics.compare(losses, against, direction="lower")
  assert lower["paired"]["ci95"][1] < 0  # A lower loss: below zero.
  assert lower["verdict"] == "better"
  assert statistics.compare(against, losses, direction="lower")[
      "verdict"] == "worse"
  assert statistics.compare(losses, against)["verdict"] == "worse"
  assert statistics.metric_direction("val_nll", declared="lower") == "lower"
  assert statistics.metric_direction("val_loss", declared="higher") == (
      "higher")


def test_select_winners_takes_the_lowest_loss_diverged_last_ties_first():
  families = {"sgd": ["lr0.1", "lr0.2", "lr0.4"]}
  select = statistics.select_winners
  assert select(families, {"lr0.1": 1.3, "lr0.2": 1.1, "lr0.4": 1.2},
                direction="lower")["sgd"] == {
                    "winner": "lr0.2", "value": 1.1, "complete": True}
  # A tie goes to the first listed (the lower rate); a diverged arm (no
  # final value) is ranked, and never wins, whatever its direction.
  assert select(families, {"lr0.1": 1.1, "lr0.2": 1.1}, diverged=["lr0.4"],
                direction="lower")["sgd"] == {
                    "winner": "lr0.1", "value": 1.1, "complete": True}
  assert select(families, {}, diverged=["lr0.1", "lr0.2", "lr0.4"],
                direction="lower")["sgd"]["winner"] is None


@pytest.mark.parametrize("test, b, margin", [("paired", AGAINST, 0.018),
                                             ("welch", OTHER, 0.035)])
def test_tost_at_alpha_0025_is_the_95pct_interval(test, b, margin):
  at_5 = statistics.equivalence_test(ARM, b, test, margin)
  at_2_5 = statistics.equivalence_test(ARM, b, test, margin, alpha=0.025)
  assert "alpha" not in at_5 and "ci95" not in at_5
  assert at_2_5["alpha"] == 0.025 and "ci90" not in at_2_5
  # The same one-sided p-values; the interval is the t-test's 95% one.
  assert at_2_5["p_value"] == at_5["p_value"]
  np.testing.assert_allclose(statistics.tost_interval(at_2_5),
                             statistics.t_test(ARM, b, test)["ci95"])
  assert statistics.tost_interval(at_5) == at_5["ci90"]
  # Inside the margin at 90%, not at 95%.
  assert at_5["verdict"] == "equivalent"
  assert at_2_5["verdict"] == "not shown equivalent"
  assert 0.025 < at_2_5["p_value"] < 0.05


def test_power_at_a_smaller_alpha_needs_more_seeds():
  seeds = statistics.seeds_for_power(0.5, "paired", alpha=0.025)
  assert seeds > statistics.seeds_for_power(0.5, "paired") == 34
  assert statistics.power(0.5, seeds, "paired", 0.025) >= 0.8
  assert statistics.power(0.5, seeds - 1, "paired", 0.025) < 0.8
  tost = statistics.seeds_for_equivalence(1.0, "welch", alpha=0.025)
  assert statistics.equivalence_power(1.0, tost, "welch", 0.025) >= 0.8
  assert statistics.equivalence_power(1.0, tost - 1, "welch", 0.025) < 0.8
