"""bench/lcam_overhead.py runs on small trees: every row, the equal-leaf tree
and the vmap case (several seeds in one program)."""

import os
from pathlib import Path
import subprocess
import sys

import pytest

import lcam_overhead as bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "lcam_overhead.py"

ROWS = ("lcam", "sgd+momentum", "injected sgd", "loss_controlled")


@pytest.mark.parametrize("seeds, schedule", [(1, []), (3, ["--schedule"])])
def test_equal_leaf_tree_prints_every_row(capsys, seeds, schedule):
  bench.main(["--tree", "equal", "--leaves", "3", "--leaf-size", "5",
              "--seeds", str(seeds), "--repeats", "1", "--steps", "2",
              *schedule])
  out = capsys.readouterr().out
  assert "3 equal leaves of 5" in out
  assert ("learning-rate schedule" in out) == bool(schedule)
  assert f"{3 * 5 * seeds} float32" in out
  assert ("(vmap)" in out) == (seeds > 1)
  rows = [line.split(":")[0].strip() for line in out.splitlines()
          if "median step" in line]
  assert tuple(rows) == ROWS
  assert "1.000 x sgd+momentum" in out


def test_vmapped_seeds_follow_their_own_losses():
  optimizer = bench.optimizers(steps_per_epoch=4)["lcam"]
  params = bench.random_tree(*bench.equal_leaf_shapes(2, 3))
  stacked = {k: bench.jnp.stack([v] * 2) for k, v in params.items()}
  step = bench.make_step(optimizer, vmapped=True)
  state = bench.jax.vmap(optimizer.init)(stacked)
  grads = bench.jax.tree.map(bench.jnp.ones_like, stacked)
  for i in range(3):
    stacked, state = step(stacked, state, grads, bench.seed_losses(i, 2))
  below = state[1].below_mean
  assert below.shape == (2,) and bool(below[0]) != bool(below[1])


def test_runs_as_a_script_from_any_directory(tmp_path):
  """`python bench/lcam_overhead.py`, as the docs give it, finds the models
  without PYTHONPATH or an installed checkout."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, str(BENCH), "--tree", "equal", "--leaves", "2",
       "--leaf-size", "3", "--repeats", "1", "--steps", "1"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "x sgd+momentum" in result.stdout
