"""The learning-rate schedules of the reference and the baselines."""

import ml_collections
import numpy as np
import pytest

from train import schedules
from train.configs import default

S = 391  # steps per epoch of the reference


def schedule_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().schedule
  config.update(overrides)
  return config


def test_schedule_a_multiplies_by_0_2_after_epochs_31_61_91():
  schedule = schedules.create_learning_rate_schedule(schedule_config(), S, 150)
  expected = {0: 0.1, 31 * S - 1: 0.1, 31 * S: 0.02, 61 * S - 1: 0.02,
              61 * S: 0.004, 91 * S: 0.0008, 150 * S - 1: 0.0008}
  for step, rate in expected.items():
    assert float(schedule(step)) == pytest.approx(rate, rel=1e-6), step


def test_schedule_b_decays_before_every_step_after_31_epochs():
  schedule = schedules.create_learning_rate_schedule(
      schedule_config(name="exponential"), S, 150)
  assert float(schedule(31 * S - 1)) == pytest.approx(0.1)
  assert float(schedule(31 * S)) == pytest.approx(0.1 * 0.99985)
  assert float(schedule(31 * S + 99)) == pytest.approx(0.1 * 0.99985 ** 100,
                                                       rel=1e-5)


@pytest.mark.parametrize("name", ["step", "exponential"])
def test_warmup_keeps_the_decays_at_their_epochs(name):
  plain = schedules.create_learning_rate_schedule(schedule_config(name=name),
                                                  S, 150)
  warm = schedules.create_learning_rate_schedule(
      schedule_config(name=name, warmup_epochs=5.0), S, 150)
  assert float(warm(0)) == 0.0
  assert float(warm(5 * S // 2)) == pytest.approx(0.05, rel=1e-3)
  # From the warm-up's end on, the rate is the schedule's without warm-up:
  # schedule A still decays after epoch 31 (not 36).
  for step in (5 * S, 31 * S - 1, 31 * S, 36 * S, 61 * S, 91 * S + 7):
    assert float(warm(step)) == float(plain(step)), step
  assert float(warm(31 * S)) < float(warm(31 * S - 1))


@pytest.mark.parametrize("name", ["step", "exponential"])
def test_a_warmup_past_the_first_decay_is_an_error(name):
  config = schedule_config(name=name, warmup_epochs=31.5)
  with pytest.raises(ValueError, match=r"warmup_epochs=31.5 ends after the "
                     r"first decay \(after epoch 31\)"):
    schedules.create_learning_rate_schedule(config, S, 150)


def test_cosine_reaches_the_final_rate_and_warmup_ramps_up():
  config = schedule_config(name="cosine", warmup_epochs=2.0,
                           final_learning_rate=0.001)
  schedule = schedules.create_learning_rate_schedule(config, 10, 20)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.05)
  assert float(schedule(20)) == pytest.approx(0.1)
  assert float(schedule(200)) == pytest.approx(0.001, rel=1e-4)
  rates = np.array([float(schedule(s)) for s in range(20, 200)])
  assert np.all(np.diff(rates) <= 1e-9)


def test_constant_and_unknown():
  schedule = schedules.create_learning_rate_schedule(
      schedule_config(name="constant", learning_rate=0.3), S, 2)
  assert float(schedule(5 * S)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
    schedules.create_learning_rate_schedule(schedule_config(name="linear"), S,
                                            2)


def test_fractional_step_boundaries_decay_at_the_nearest_step():
  schedule = schedules.step_decay(0.1, (1.6, 3.2, 4.8), 0.2, steps_per_epoch=10)
  rates = [float(schedule(step)) for step in (15, 16, 31, 32, 47, 48)]
  np.testing.assert_allclose(rates, [0.1, 0.02, 0.02, 0.004, 0.004, 0.0008],
                             rtol=1e-6)
  # Whole epochs: the same steps as before fractions were allowed.
  whole = schedules.step_decay(0.1, (3, 6, 9), 0.2, steps_per_epoch=352)
  assert float(whole(3 * 352 - 1)) == pytest.approx(0.1)
  assert float(whole(3 * 352)) == pytest.approx(0.02)
  with pytest.raises(ValueError, match="same step"):
    schedules.step_decay(0.1, (1.01, 1.02), 0.2, steps_per_epoch=10)
