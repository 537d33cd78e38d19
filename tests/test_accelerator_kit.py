"""The accelerator kit (bench/accelerator.py) keeps working: its smoke run on
the CPU, and its pieces."""

import importlib.util
import json
import os
from pathlib import Path
import subprocess
import sys
import zipfile

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "bench" / "accelerator.py"


def _load_kit():
  spec = importlib.util.spec_from_file_location("accelerator_kit", KIT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


kit = _load_kit()


def _has_torch():
  return importlib.util.find_spec("torch") is not None


def test_smoke_run_reports_every_part(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  out = tmp_path / "kit"
  done = subprocess.run(
      [sys.executable, str(KIT), "--smoke", "--out", str(out),
       "--wheelhouse", str(tmp_path / "no-wheels")],
      env=env, capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert set(kit.PARTS) <= set(report)
  for part in kit.PARTS:
    assert not report[part].get("dropped"), (part, report[part])

  machine = report["machine"]
  assert machine["status"] == "done" and machine["device_count"] >= 1
  assert machine["peak"]["bfloat16"]["tflops"] > 0

  rows = report["model"]["rows"]
  assert [(r["model"], r["dtype"]) for r in rows] == [
      ("wrn-10-1", "bfloat16"), ("wrn-10-1", "float32")]
  for row in rows:
    assert "error" not in row, row
    assert row["images_per_s"] > 0 and row["flops"] > 0
    assert row["fraction_of_peak"] > 0

  peer = report["peer"]
  if _has_torch():
    assert peer["runs"]["eager"]["images_per_s"] > 0
    assert peer["jax_over_pytorch"] > 0
  else:
    assert peer["status"] == "skipped"

  loop = report["loop"]
  assert loop["returncode"] == 0 and loop["epochs_done"] == 2, loop
  assert [e["epoch"] for e in loop["per_epoch"]] == [1, 2]
  assert all(0 <= e["test_accuracy"] <= 1 for e in loop["per_epoch"])
  assert loop["time_to_first_step_s"] > 0 and loop["images_per_s"] > 0
  assert loop["loop_over_bare"] > 0 and loop["projected_150_epochs_h"] > 0
  assert report["kit"]["xla"]["flags"] == report["machine"]["xla_flags"].split()

  markdown = (out / "report.md").read_text()
  for heading in ("## Machine", "## Model", "## Peer", "## Loop"):
    assert heading in markdown


def test_a_tiny_budget_drops_parts_and_says_so(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  out = tmp_path / "kit"
  done = subprocess.run(
      [sys.executable, str(KIT), "--smoke", "--out", str(out), "--budget-s",
       "1", "--no-xla-flags", "--wheelhouse", str(tmp_path / "none")],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert all(report[part]["status"] == "dropped" for part in kit.PARTS)
  assert "of the budget left" in (out / "report.md").read_text()


def _fake_wheel(directory: Path, name: str) -> Path:
  """A minimal pure-Python wheel with one module ``name``."""
  wheel = directory / f"{name}-1.0-py3-none-any.whl"
  dist_info = f"{name}-1.0.dist-info"
  files = {
      f"{name}.py": "VALUE = 42\n",
      f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
                               "Version: 1.0\n",
      f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                            "Root-Is-Purelib: true\nTag: py3-none-any\n",
  }
  files[f"{dist_info}/RECORD"] = "".join(
      f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"])
  with zipfile.ZipFile(wheel, "w") as archive:
    for path, text in files.items():
      archive.writestr(path, text)
  return wheel


def test_missing_wheels_are_installed_into_the_target(tmp_path):
  wheelhouse = tmp_path / "whl"
  wheelhouse.mkdir()
  _fake_wheel(wheelhouse, "kit_fake_module")
  (wheelhouse / "pytest-99.0-py3-none-any.whl").write_bytes(b"")  # present
  target = tmp_path / "site"
  result = kit.install_missing_wheels(str(wheelhouse), str(target))
  assert result["installed"] == ["kit-fake-module"]
  assert result["present"] == ["pytest"]
  assert (target / "kit_fake_module.py").read_text() == "VALUE = 42\n"

  empty = kit.install_missing_wheels(str(tmp_path / "absent"), str(target))
  assert empty["installed"] == [] and empty["target"] is None


def test_xla_flags_can_be_left_alone():
  chosen = kit.choose_xla_flags({"XLA_FLAGS": "--xla_dump_to=/tmp/x"},
                                use_flags=False)
  assert chosen["flags"] == ["--xla_dump_to=/tmp/x"] and not chosen["added"]


def test_loop_summary_projects_the_reference_run():
  records = {
      "run": [{"time_to_first_step_s": 30.0, "devices": 1}],
      "train": [{"epoch": 0.5, "images_per_sec": 500.0},
                {"epoch": 1.5, "images_per_sec": 1000.0},
                {"epoch": 2.5, "images_per_sec": 1200.0}],
      "epoch": [{"epoch": e, "test_accuracy": 0.3 + 0.1 * e,
                 "train_loss": 2.0 / e, "epoch_time_s": t}
                for e, t in ((1, 70.0), (2, 40.0), (3, 40.0))],
  }
  arrivals = {1: 100.0, 2: 145.0, 3: 190.0}
  summary = kit.summarize_loop(records, arrivals, bare_images_per_s=1000.0)
  assert summary["epochs_done"] == 3
  assert summary["epoch_train_s"] == 40.0 and summary["epoch_wall_s"] == 45.0
  assert summary["images_per_s"] == 1100.0  # epochs after the first
  assert summary["loop_over_bare"] == 1.1
  assert summary["projected_150_epochs_h"] == (30 + 150 * 45) / 3600
