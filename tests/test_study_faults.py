"""A study under faults: nothing silent, nothing stuck, no half-written file.

One test per case: colliding arm names, an outcome that cannot be recorded,
a summary that cannot be written, two runners, damaged records, one bad file
among many, read-only folders, `evaluate` on a damaged workdir, exit codes
and failure reasons.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from study import cli
from study import definition as study_lib
from study import files
from study import report
from study import runner
from train import checkpoints
from train import evaluate
from train import loop
from train import record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(**fields) -> ml_collections.ConfigDict:
  definition = {"config": "train/configs/tiny.py",
                "overrides": {"num_epochs": 2}, "arms": {"a": {}, "b": {}},
                "seeds": [0], "baseline": "a", "targets": [0.5]}
  definition.update(fields)
  return ml_collections.ConfigDict(definition, allow_dotted_keys=True)


def _fake_run(workdir, arm, seed, accuracies, num_epochs=None):
  path = study_lib.run_dir(str(workdir), arm, seed)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": seed, "num_epochs": num_epochs or len(accuracies),
               "optimizer": {"name": "sgd"}}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"kind": "run", "step": 1}) + "\n")
    for epoch, accuracy in enumerate(accuracies, start=1):
      f.write(json.dumps({"kind": "epoch", "step": 10 * epoch, "epoch": epoch,
                          "test_accuracy": accuracy, "train_loss": 1.0,
                          "epoch_time_s": 1.0}) + "\n")
  return path


def _finished_study(tmp_path, arms=("a", "b"), seeds=(0, 1, 2)):
  study = _study(arms={arm: {} for arm in arms}, seeds=list(seeds),
                 baseline=arms[0])
  for arm in arms:
    for seed in seeds:
      _fake_run(tmp_path, arm, seed, [0.1, 0.5 + 0.01 * seed])
  study_lib.save_study(study, str(tmp_path))
  return study


# 1. Two arms that map to one folder.


def test_arms_that_share_a_folder_are_refused(tmp_path):
  study = _study(arms={"sgd/lr": {"schedule.learning_rate": 0.01},
                       "sgd lr": {"schedule.learning_rate": 0.3}},
                 baseline="sgd/lr")
  with pytest.raises(study_lib.StudyError,
                     match=r"'sgd lr' and 'sgd/lr' both map to the folder "
                           r"'sgd_lr'"):
    study_lib.check_arm_dirnames(study.arms)
  study_file = tmp_path / "clash.py"
  study_file.write_text(
      "import ml_collections\ndef get_study():\n  return ml_collections."
      f"ConfigDict({study.to_dict()!r}, allow_dotted_keys=True)\n")
  with pytest.raises(study_lib.StudyError, match="both map"):
    study_lib.load_study(str(study_file))
  # A study folder written before the check: summarize says so in one line.
  os.makedirs(tmp_path / "old")
  (tmp_path / "old" / "study.json").write_text(study.to_json())
  assert cli.main(["summarize", str(tmp_path / "old")]) == 1
  with pytest.raises(study_lib.StudyError, match=r"'\.hidden' cannot be"):
    study_lib.check_arm_dirnames([".hidden"])


# 2. An outcome that cannot be recorded, and an empty failure.txt.


def test_an_outcome_that_cannot_be_recorded_is_reported(tmp_path, monkeypatch,
                                                       capsys):
  monkeypatch.setattr(study_lib, "train_command", lambda s, w, arm, seed: [
      sys.executable, "-c", "import sys; print('error: boom'); sys.exit(3)"])

  def disk_full(path, content):
    raise files.WriteError(errno.ENOSPC, f"could not write {path} (No space "
                           "left on device); the old file, if any, is kept")

  monkeypatch.setattr(files, "write_atomically", disk_full)
  monkeypatch.setattr(study_lib, "save_study", lambda study, workdir: None)
  result = runner.run_study(_study(arms={"a": {}}), str(tmp_path),
                            retries=0, poll_s=0.05)
  (status,) = result.runs
  assert status.state == "failed" and "not recorded" in status.reason
  assert "is not recorded: could not write" in capsys.readouterr().err
  # On disk an empty failure.txt (an older writer's) is a failure too.
  (tmp_path / "a" / "seed0" / "failure.txt").write_text("")
  status = study_lib.read_run_status(str(tmp_path), "a", 0)
  assert status.state == "failed" and "empty" in status.reason


# 3. A summary that cannot be written.


def test_a_summary_that_cannot_be_written_keeps_the_old_files(
    tmp_path, monkeypatch, capsys):
  _finished_study(tmp_path)
  assert cli.main(["summarize", str(tmp_path)]) == 0
  old = {name: (tmp_path / name).read_bytes()
         for name in ("summary.json", "summary.md", "curves.png")}
  printed = capsys.readouterr().out
  replace = os.replace

  def full_disk(source, target):
    if target.endswith(("summary.md", "curves.png")):
      raise OSError(errno.ENOSPC, "No space left on device")
    replace(source, target)

  monkeypatch.setattr(os, "replace", full_disk)
  (tmp_path / "a" / "seed0" / "metrics.jsonl").write_text("")  # Changes it.
  assert cli.main(["summarize", str(tmp_path)]) == 1
  captured = capsys.readouterr()
  assert captured.out.startswith("| arm |") and captured.out != printed
  assert captured.err.count("\n") == 1
  assert captured.err.startswith("error: the summary is not saved: could "
                                 "not write")
  for name in ("summary.md", "curves.png"):
    assert (tmp_path / name).read_bytes() == old[name]
  json.loads((tmp_path / "summary.json").read_text())  # Whole, never cut.
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# 4. Two runners on one study.

WAITING_RUN = """
import os, signal, sys, time
path = sys.argv[1]
os.makedirs(path, exist_ok=True)
open(os.path.join(path, "started"), "w").close()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
end = time.time() + 120
while time.time() < end:
  time.sleep(0.05)
"""

DRIVER = """
import sys
import ml_collections
from study import cli, definition
run, workdir = sys.argv[1:3]
definition.train_command = lambda s, w, arm, seed: [
    sys.executable, run, definition.run_dir(w, arm, seed)]
definition.load_study = lambda spec: ml_collections.ConfigDict({
    "config": "train/configs/tiny.py", "arms": {"a": {}, "b": {}},
    "seeds": [0], "baseline": "a"})
sys.exit(cli.main(["run", "x", "--workdir", workdir, "--workers", "2"]))
"""


def _start_driver(tmp_path):
  (tmp_path / "run.py").write_text(WAITING_RUN)
  (tmp_path / "driver.py").write_text(DRIVER)
  return subprocess.Popen(
      [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "run.py"),
       str(tmp_path / "study")], cwd=REPO, env=dict(os.environ,
                                                     PYTHONPATH=REPO),
      start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _wait_for_started(tmp_path, arms=("a", "b")):
  deadline = time.time() + 120
  while not all((tmp_path / "study" / arm / "seed0" / "started").exists()
                for arm in arms):
    assert time.time() < deadline
    time.sleep(0.05)


def test_a_second_runner_is_refused_at_once_and_touches_nothing(tmp_path):
  first = _start_driver(tmp_path)
  try:
    _wait_for_started(tmp_path)
    before = {p: os.stat(os.path.join(d, p)).st_mtime_ns
              for d, _, names in os.walk(tmp_path / "study") for p in names}
    start = time.time()
    second = _start_driver(tmp_path)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 1 and time.time() - start < 30
    assert err.startswith("error: the study in") and "another" in err
    assert len(err.splitlines()) == 1 and out == ""
    after = {p: os.stat(os.path.join(d, p)).st_mtime_ns
             for d, _, names in os.walk(tmp_path / "study") for p in names}
    assert after == before
  finally:
    os.killpg(first.pid, signal.SIGTERM)
    first.communicate(timeout=60)


# 9. A runner stopped by a signal: runs unfinished, not failed; exit 75.


def test_a_stopped_study_exits_75_with_its_runs_unfinished(tmp_path):
  driver = _start_driver(tmp_path)
  _wait_for_started(tmp_path)
  os.killpg(driver.pid, signal.SIGTERM)
  _, err = driver.communicate(timeout=60)
  assert driver.returncode == cli.STOPPED, err
  statuses = [study_lib.read_run_status(str(tmp_path / "study"), arm, 0)
              for arm in ("a", "b")]
  assert [s.state for s in statuses] == ["unfinished", "unfinished"]
  assert not (tmp_path / "study" / "a" / "seed0" / "failure.txt").exists()


# 5. Damaged records of real runs, and their repair by running them again.


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("study")
  study = _study(arms={"a": {}}, seeds=[0])
  study_lib.save_study(study, str(workdir))
  loop.train_and_evaluate(study_lib.run_config(study, "a", 0),
                          study_lib.run_dir(str(workdir), "a", 0))
  return workdir, study


def _copy(finished_run, tmp_path):
  workdir, study = finished_run
  shutil.copytree(workdir, tmp_path / "study")
  return str(tmp_path / "study"), study


def _rerun(study, workdir):
  loop.train_and_evaluate(study_lib.run_config(study, "a", 0),
                          study_lib.run_dir(workdir, "a", 0))


def test_a_cut_last_line_is_reported_and_repaired(finished_run, tmp_path):
  workdir, study = _copy(finished_run, tmp_path)
  metrics = os.path.join(study_lib.run_dir(workdir, "a", 0), "metrics.jsonl")
  with open(metrics, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  original = json.loads(lines[-1])
  assert original["kind"] == "epoch" and original["epoch"] == 2
  with open(metrics, "wb") as f:
    f.writelines(lines[:-1] + [lines[-1][:25]])  # Cut mid-line.
  status = study_lib.read_run_status(workdir, "a", 0)
  assert status.state == "unfinished" and status.reason == (
      "1 of 2 epochs done")
  _rerun(study, workdir)
  repaired = record.load_run(study_lib.run_dir(workdir, "a", 0)).epochs[-1]
  assert repaired == dict(original, epoch_time_s=None)
  assert study_lib.read_run_status(workdir, "a", 0).state == "finished"


def test_a_lost_config_is_reported_and_written_again(finished_run, tmp_path):
  workdir, study = _copy(finished_run, tmp_path)
  config = os.path.join(study_lib.run_dir(workdir, "a", 0), "config.json")
  os.remove(config)
  status = study_lib.read_run_status(workdir, "a", 0)
  assert status.state == "unfinished"
  assert status.reason == f"damaged record: {config} is missing"
  _rerun(study, workdir)
  assert study_lib.read_run_status(workdir, "a", 0).state == "finished"


def test_an_unreadable_record_says_what_cannot_be_repaired(finished_run,
                                                           tmp_path):
  workdir, study = _copy(finished_run, tmp_path)
  metrics = os.path.join(study_lib.run_dir(workdir, "a", 0), "metrics.jsonl")
  os.remove(metrics)
  os.mkdir(metrics)  # Not a readable file.
  status = study_lib.read_run_status(workdir, "a", 0)
  assert status.state == "unfinished"
  assert status.reason.startswith(f"damaged record: {metrics}: ")
  with pytest.raises(IsADirectoryError):  # The run's one error line.
    _rerun(study, workdir)


# 6. One bad file among many.


def test_bad_bytes_or_a_cut_config_do_not_abort_the_summary(tmp_path,
                                                          capsys):
  _finished_study(tmp_path)
  with open(tmp_path / "a" / "seed1" / "metrics.jsonl", "r+b") as f:
    f.seek(30)
    f.write(b"\xff\xfe")
  config = tmp_path / "b" / "seed2" / "config.json"
  config.write_text(config.read_text()[:12])
  assert cli.main(["summarize", str(tmp_path)]) == 0
  captured = capsys.readouterr()
  assert captured.err == (f"warning: {tmp_path}/a/seed1/metrics.jsonl: "
                          "skipped unreadable lines [2]\n")
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["arms"]["a"]["n"] == 3 and summary["arms"]["b"]["n"] == 2
  (damaged,) = summary["unfinished"]
  assert (damaged["arm"], damaged["seed"]) == ("b", 2)
  assert damaged["reason"].startswith(f"damaged record: {config}: ")
  assert f"b seed 2 (damaged record: {config}" in captured.out


# 7 and 8. Read-only folders, and `evaluate` that changes nothing.


def test_a_read_only_study_folder_is_one_line(tmp_path, monkeypatch, capsys):
  _finished_study(tmp_path)

  def read_only(path, content):
    raise files.WriteError(errno.EROFS, f"could not write {path} "
                           "(Read-only file system); the old file, if any, "
                           "is kept")

  monkeypatch.setattr(files, "write_atomically", read_only)
  assert cli.main(["summarize", str(tmp_path)]) == 1
  captured = capsys.readouterr()
  assert captured.out.startswith("| arm |")
  assert captured.err == ("error: the summary is not saved: could not write "
                          f"{tmp_path}/summary.json (Read-only file system); "
                          "the old file, if any, is kept\n")

  def no_lock(workdir):
    raise OSError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(runner.devices, "hold", no_lock)
  monkeypatch.setattr(study_lib, "load_study", lambda spec: _study())
  assert cli.main(["run", "x", "--workdir", str(tmp_path)]) == 1
  assert capsys.readouterr().err == (
      f"error: cannot lock the study folder {tmp_path} (Read-only file "
      "system).\n")


def test_evaluate_leaves_a_damaged_workdir_as_it_is(finished_run, tmp_path,
                                                    capsys):
  workdir, _ = _copy(finished_run, tmp_path)
  run = study_lib.run_dir(workdir, "a", 0)
  directory = os.path.join(run, "checkpoints")
  steps = checkpoints.committed_steps(directory)
  newest = os.path.join(directory, str(steps[-1]))
  for folder, _, names in os.walk(newest):
    for name in names:
      if name != "checksums.json" and not name.startswith("_"):
        with open(os.path.join(folder, name), "r+b") as f:
          f.write(b"\x00" * 16)
  before = sorted(os.path.relpath(os.path.join(d, n), run)
                  for d, _, names in os.walk(run) for n in names)
  assert evaluate.main([run]) == 0
  assert capsys.readouterr().out.startswith(f"step {steps[-2]} ")
  after = sorted(os.path.relpath(os.path.join(d, n), run)
                 for d, _, names in os.walk(run) for n in names)
  assert after == before and not os.path.exists(
      os.path.join(directory, "corrupt"))


# 10. The failure reason is the run's own error line.


def test_the_failure_reason_is_the_runs_last_error_line(tmp_path):
  _finished_study(tmp_path, seeds=(0, 1, 2))
  failed = tmp_path / "b" / "seed2"
  (failed / "metrics.jsonl").write_text("")
  (failed / "failure.txt").write_text(
      "exit status 1; the end of train.log:\nI1206 12:00 Starting\n"
      "error: The training loss is nan at step 7 (epoch 2).\n")
  summary, _ = report.summarize(str(tmp_path))
  (entry,) = summary["failed"]
  assert entry["reason"] == ("error: The training loss is nan at step 7 "
                             "(epoch 2).")
  assert "exit status 1" in entry["log_tail"]


def test_every_run_is_in_exactly_one_state(tmp_path):
  """A sweep of the states: each run is finished, diverged, failed or
  unfinished, with a reason, and the summary lists every one that is not
  averaged."""
  study = _study(arms={"f": {}, "d": {}, "x": {}, "u": {}, "n": {}},
                 seeds=[0], baseline="f")
  _fake_run(tmp_path, "f", 0, [0.1, 0.5])
  diverged = _fake_run(tmp_path, "d", 0, [0.1], num_epochs=2)
  with open(os.path.join(diverged, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"kind": "diverged", "step": 14, "epoch": 1.4}) + "\n")
  failed = _fake_run(tmp_path, "x", 0, [0.1], num_epochs=2)
  with open(os.path.join(failed, "failure.txt"), "w") as f:
    f.write("exit status 1; the end of train.log:\nerror: bad\n")
  _fake_run(tmp_path, "u", 0, [0.1], num_epochs=2)
  study_lib.save_study(study, str(tmp_path))
  states = {s.arm: (s.state, s.reason)
            for s in study_lib.study_runs(study, str(tmp_path))}
  assert states == {
      "f": ("finished", "2 epochs"),
      "d": ("diverged", "the training loss was not finite at step 14"),
      "x": ("failed", "error: bad"),
      "u": ("unfinished", "1 of 2 epochs done"),
      "n": ("unfinished", "not started")}
  summary, _ = report.summarize(str(tmp_path))
  listed = {kind: [r["arm"] for r in summary[kind]]
            for kind in ("diverged", "failed", "unfinished")}
  assert listed == {"diverged": ["d"], "failed": ["x"],
                    "unfinished": ["n", "u"]}
  assert summary["arms"]["f"]["n"] == 1
