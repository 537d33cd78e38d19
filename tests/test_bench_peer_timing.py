"""bench/peer_timing.py: the loop's runs and a peer's timings, interleaved."""

import argparse
import os
import subprocess
import sys
import types

import pytest

from bench import peer_timing
from train import data
from train.configs import tiny

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "bench")


def test_the_peer_is_timed_around_each_resumed_run_of_the_loop(capsys):
  calls = []

  def time_peer(num_steps):
    calls.append(num_steps)
    return 100.0 * len(calls)

  args = argparse.Namespace(devices=0, steps=4, segments=2)
  loop_rates, peer_rates = peer_timing.interleaved_rates(
      tiny.get_config(), args, time_peer)
  assert calls == [3, 2, 2, 2]  # A warm-up, then before, between, after.
  assert peer_rates == [200.0, 300.0, 400.0]
  assert len(loop_rates) == 2 and min(loop_rates) > 0
  torch = types.SimpleNamespace(__version__="0.0", get_num_threads=lambda: 2)
  peer_timing.print_comparison("tiny", "images", [2.0, 4.0, 3.0], "peer:",
                               [1.0, 2.0], torch)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("tiny, ") and "torch 0.0 with 2 threads" in out[0]
  assert out[-1] == "ratio harness / PyTorch: 2.00"


def test_rate_counts_units_per_second_of_the_calls():
  calls = []
  rate = peer_timing.rate(lambda x, y: calls.append((x, y)), "x", "y", 5, 32)
  assert calls == [("x", "y")] * 5 and rate > 0


def test_bad_input_ends_a_comparison_with_one_line():
  def missing_corpus():
    raise data.DataNotFoundError("No text file 'x': give text:PATH.")

  with pytest.raises(SystemExit) as exit_info:
    peer_timing.run_main(missing_corpus)
  assert exit_info.value.code == "error: No text file 'x': give text:PATH."
  with pytest.raises(SystemExit) as exit_info:
    peer_timing.run_main(lambda: 0)
  assert exit_info.value.code == 0


def test_the_comparisons_stop_with_one_line_on_a_missing_corpus(tmp_path):
  for script in ("lm_vs_torch.py", "lm_step_profile.py"):
    result = subprocess.run(
        [sys.executable, os.path.join(BENCH, script), "--source",
         f"text:{tmp_path / 'missing.txt'}"],
        capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: No text file '{tmp_path / 'missing.txt'}': give text:PATH "
        "of a UTF-8 text file."], result.stderr
