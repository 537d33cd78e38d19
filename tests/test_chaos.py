"""The command line under stress: random overrides, and `make chaos` in short.

Each example runs the CLI as a user would, so the examples are few.
"""

import importlib.util
from pathlib import Path
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

pytestmark = pytest.mark.campaign  # `make campaigns`; `make chaos` runs it long

REPO = Path(__file__).resolve().parents[1]


def _load_chaos():
  spec = importlib.util.spec_from_file_location("chaos",
                                                REPO / "bench" / "chaos.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


chaos = _load_chaos()

# Fields of the tiny config, with values a user might type: good ones, and
# ones of the wrong sign, size, type or choice. The run's length is not
# fuzzed (every example stops after its first step).
_VALUES = st.sampled_from(
    ["0", "-1", "1", "3", "64", "100000", "0.5", "1e9", "nan", "-inf", "x",
     "True", "[1, 2]", "{", "'{\"b1\": [0.9, 0.8]}'", "sgd", "adamw", "lcam",
     "wrn-10-1", "bogus", "synthetic:num_train=32", "folder:/nonexistent"])
_FIELDS = st.sampled_from(
    ["batch_size", "eval_batch_size", "seed", "log_every_steps",
     "checkpoint_every_steps", "keep_checkpoints", "host_devices",
     "on_nonfinite_loss", "data.source", "data.drop_remainder", "model.name",
     "optimizer.name", "optimizer.beta_below", "optimizer.beta_above",
     "optimizer.momentum", "optimizer.weight_decay",
     "optimizer.loss_control", "schedule.name", "schedule.learning_rate",
     "nope", "optimizer.bogus"])
_OVERRIDES = st.lists(st.tuples(_FIELDS, _VALUES), min_size=1, max_size=3)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(overrides=_OVERRIDES)
def test_random_overrides_succeed_or_give_one_error_line(tmp_path_factory,
                                                         overrides):
  workdir = tmp_path_factory.mktemp("fuzz")
  command = [*chaos.train_command(workdir), "--config.stop_after_steps=1",
             *(f"--config.{field}={value}" for field, value in overrides)]
  result = subprocess.run(command, env=chaos.environment(),
                          capture_output=True, text=True, timeout=600)
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  if result.returncode:
    assert result.returncode in (1, 2), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if not re.match(r"[IWE]\d{4} ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), (
        result.stderr[-3000:])


def test_chaos_runs_end_as_uninterrupted_ones(capsys):
  assert chaos.main(["--trials", "1", "--stops", "2", "--seed", "1"]) == 0
  out = capsys.readouterr().out
  assert "same as uninterrupted: 1" in out
  assert re.search(r"checkpoint (flipped|truncated): 1", out), out
