"""Tests of train/config.py: loading, overrides, checks and field lists."""

from pathlib import Path
import re

from flax import traverse_util
import pytest

from train import config as config_lib
from train.configs import default
from train.configs import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("field, message", [
    ("optimizer.bogus",
     r"^config.optimizer has no field 'bogus'; its fields are: averaging, b1, "
     r"b2, below_probability, beta_above, beta_below, .*weight_decay\.$"),
    ("nope.x", r"^config has no field 'nope'; its fields are: batch_size, "
     r".*stop_after_steps, task\.$"),
    ("batch_size.x", r"^config.batch_size has no field 'x'; its fields are: "
     r"none \(it is a value\)\.$"),
])
def test_an_unknown_config_field_is_named_with_the_valid_ones(field, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.check_field(tiny.get_config(), field)
  config = tiny.get_config()
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.override(config, {"seed": 3, field: 1})
  config.lock()
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.override(config, {field: 1})


def test_override_sets_dotted_fields_and_rejects_other_types():
  config = config_lib.override(
      tiny.get_config(), {"optimizer.lag": False, "seed": 3,
                          "schedule.boundaries_epochs": (1, 2)})
  assert (config.optimizer.lag, config.seed) == (False, 3)
  assert config.schedule.boundaries_epochs == (1, 2)
  with pytest.raises(config_lib.ConfigError, match="batch_size"):
    config_lib.override(config, {"batch_size": "x"})


def test_a_missing_or_failing_config_file_is_named():
  with pytest.raises(config_lib.ConfigError,
                     match=r"^no such file\. The files in train/configs are: "
                     r"default.py, quick.py, .*\.$"):
    config_lib.load("train/configs/nope.py")
  with pytest.raises(config_lib.ConfigError, match=re.escape(
      "Bad reference experiment 'cifar10,C,0.9/0.9': DATASET is cifar10 or "
      "cifar100, SCHEDULE is A or B.")):
    config_lib.load(f"{REPO}/train/configs/reference.py:cifar10,C,0.9/0.9")
  with pytest.raises(config_lib.ConfigError, match="defines no get_study"):
    config_lib.load(f"{REPO}/train/configs/tiny.py", "get_study")
  config = config_lib.load(f"{REPO}/train/configs/reference.py:cifar100,B,"
                           "0.93/0.9")
  assert config.optimizer.beta_below == 0.93


def test_the_lists_of_run_fields_name_fields_of_the_config():
  flat = traverse_util.flatten_dict(default.get_config().to_dict(), sep=".")
  sections = {field.split(".")[0] for field in flat if "." in field}
  for field in config_lib.NON_EXPERIMENT_FIELDS + (
      config_lib.RESUME_INVARIANT_FIELDS) + tuple(config_lib.CHOICES):
    assert field in flat or field in sections, field


def test_identifies_experiment():
  assert config_lib.identifies_experiment("optimizer.beta_below")
  assert config_lib.identifies_experiment("schedule.name")
  for field in ("seed", "optimizer.phase_seed", "data.cache_dir",
                "log_every_steps", "distributed.process_id"):
    assert not config_lib.identifies_experiment(field), field


def test_validate_names_the_field():
  config_lib.validate(tiny.get_config(), device_count=8)
  with pytest.raises(config_lib.ConfigError, match=r"config.parallel='x'"):
    config_lib.validate(config_lib.override(tiny.get_config(),
                                            {"parallel": "x"}))
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.keep_checkpoints must be >= 0, got -1"):
    config_lib.validate(config_lib.override(tiny.get_config(),
                                            {"keep_checkpoints": -1}))
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.batch_size \(64\) and "
                     r"config.eval_batch_size \(64\) must be divisible by the "
                     r"number of devices \(3\)\.$"):
    config_lib.validate(tiny.get_config(), device_count=3)


def test_a_runs_config_json_is_a_config(tmp_path):
  """`python -m train --config WORKDIR/config.json` runs a run again: its
  JSON (with nulls for unset fields) loads as the config it was."""
  config = tiny.get_config()
  config.optimizer.beta_below = 0.93
  path = tmp_path / "config.json"
  path.write_text(config.to_json(indent=2))
  assert "null" in path.read_text()
  loaded = config_lib.load(str(path))
  assert loaded == config and loaded.data.data_dir is None
  assert config_lib.override(loaded, {"num_epochs": 1}).num_epochs == 1
  (tmp_path / "bad.json").write_text('{"seed": 0, "bogus": 1}')
  with pytest.raises(config_lib.ConfigError, match="not a config of this"):
    config_lib.load(str(tmp_path / "bad.json"))
  (tmp_path / "cut.json").write_text('{"seed": ')
  with pytest.raises(config_lib.ConfigError, match="unreadable"):
    config_lib.load(str(tmp_path / "cut.json"))
