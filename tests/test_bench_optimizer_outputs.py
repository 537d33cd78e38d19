"""bench/optimizer_outputs.py: its runs are deterministic, and --compare
finds a single changed bit."""

import numpy as np
import pytest

import optimizer_outputs as bench


def test_a_run_repeats_and_compare_finds_one_changed_bit(tmp_path, capsys):
  name, optimizer = next(bench.lcam_optimizers())
  first = bench.run(optimizer, vmapped=True)
  again = bench.run(optimizer, vmapped=True)
  assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
  arrays = {f"{name}/{i}": a for i, a in enumerate(first)}
  np.savez(tmp_path / "a.npz", **arrays)
  changed = dict(arrays)
  key = f"{name}/0"
  flipped = changed[key].copy()
  flipped.view(np.uint8)[0] ^= 1
  changed[key] = flipped
  np.savez(tmp_path / "b.npz", **changed)
  assert bench.main(["--compare", str(tmp_path / "a.npz"),
                     str(tmp_path / "a.npz")]) == 0
  assert bench.main(["--compare", str(tmp_path / "a.npz"),
                     str(tmp_path / "b.npz")]) == 1
  assert f"{len(arrays)} arrays compared; 1 differ" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    bench.main(["--compare", str(tmp_path / "a.npz"),
                str(tmp_path / "missing.npz")])
  assert "no such file" in capsys.readouterr().err
