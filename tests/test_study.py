"""Tests of train.study: definitions, pending runs, the pool, the statistics."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from train import study as study_lib
from train import study_statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(REPO, "train", "studies", "*.py"))
    if not path.endswith("__init__.py"))

TINY_STUDY = '''
import ml_collections

def get_study(with_broken_arm: str = ""):
  arms = {"sgd": {"optimizer.name": "sgd"},
          "lcam-0.95/0.9": {"optimizer.name": "lcam"}}
  if with_broken_arm:
    arms["broken"] = {"data.source": "folder:/nonexistent/cifar"}
  return ml_collections.ConfigDict({
      "config": "train/configs/tiny.py",
      "overrides": {"num_epochs": 1, "checkpoint_every_steps": 2},
      "arms": arms, "seeds": [0, 1], "baseline": "sgd",
      "targets": [0.05, 0.99]}, allow_dotted_keys=True)
'''


def _study(**fields) -> ml_collections.ConfigDict:
  definition = {"config": "train/configs/tiny.py", "overrides": {},
                "arms": {"base": {}, "b": {}}, "seeds": [0, 1, 2],
                "baseline": "base", "targets": [0.5]}
  definition.update(fields)
  return ml_collections.ConfigDict(definition, allow_dotted_keys=True)


def _fake_run(workdir, arm, seed, accuracies, *, num_epochs=None,
              optimizer="sgd", epoch_times=None):
  """A run directory with ``config.json`` and one epoch record per accuracy."""
  epoch_times = epoch_times or [2.0] * len(accuracies)
  path = study_lib.run_dir(str(workdir), arm, seed)
  os.makedirs(path)
  config = {"seed": seed, "num_epochs": num_epochs or len(accuracies),
            "optimizer": {"name": optimizer}}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for epoch, (accuracy, time_s) in enumerate(zip(accuracies, epoch_times),
                                               start=1):
      f.write(json.dumps({
          "kind": "epoch", "step": 10 * epoch, "epoch": epoch,
          "test_accuracy": accuracy, "train_loss": 1.0 / epoch,
          "phase_below_fraction": 0.5, "epoch_time_s": time_s}) + "\n")


@pytest.mark.parametrize("name", SHIPPED + ["paper:cifar100",
                                            "cifar10_gpu:folder:/data/c.tar"])
def test_shipped_study_loads_and_names_valid_fields(name):
  study = study_lib.load_study(name)  # Applies every arm's overrides.
  assert study.baseline in study.arms
  # A tuning study (scored on a validation split) runs one seed per
  # configuration; a comparison needs at least three.
  tuning = study.get("metric", "test_accuracy") == "val_accuracy"
  assert len(study.seeds) >= (1 if tuning else 3)
  for arm in study.arms:
    config = study_lib.run_config(study, arm, study.seeds[-1])
    assert config.seed == study.seeds[-1]


def test_cpu_study_is_the_scaled_reference_recipe():
  study = study_lib.load_study("cifar10_cpu")
  assert set(study.arms) == {"sgd-0.9", "sgd-0.95", "lcam-0.95/0.9",
                             "lcam-0.9/0.95"}
  configs = [study_lib.run_config(study, arm, 0) for arm in study.arms]
  for config in configs:
    assert config.schedule.boundaries_epochs == (3, 6, 9)
    assert (config.batch_size, config.schedule.learning_rate,
            config.optimizer.weight_decay) == (128, 0.1, 5e-4)
  # Nothing but the optimizer differs between the arms.
  without_optimizer = [{k: v for k, v in c.to_dict().items()
                        if k != "optimizer"} for c in configs]
  assert all(c == without_optimizer[0] for c in without_optimizer)


def test_unknown_field_is_a_clear_error(tmp_path):
  study = _study(arms={"base": {}, "b": {"optimizer.bogus": 1}})
  with pytest.raises(study_lib.StudyError,
                     match=r"'optimizer.bogus'.*beta_below"):
    study_lib.run_config(study, "b", 0)


def test_commands_lists_exactly_the_pending_runs(tmp_path):
  study = _study()
  _fake_run(tmp_path, "base", 0, [0.5, 0.6])  # finished
  _fake_run(tmp_path, "b", 1, [0.5], num_epochs=2)  # half-way
  commands = study_lib.pending_commands(study, str(tmp_path))
  pending = {(arm, seed) for arm in ("base", "b") for seed in (0, 1, 2)}
  pending.remove(("base", 0))
  assert len(commands) == len(pending)
  for arm, seed in pending:
    workdir = study_lib.run_dir(str(tmp_path), arm, seed)
    assert sum(f"--workdir {workdir} " in c and f"--config.seed={seed}" in c
               for c in commands) == 1


def test_eta_is_remaining_epochs_times_median_epoch_time(tmp_path):
  study = _study()
  # A first epoch slowed by compiling must not dominate the estimate.
  _fake_run(tmp_path, "base", 0, [0.5, 0.6], epoch_times=[30.0, 10.0])
  _fake_run(tmp_path, "b", 1, [0.5], num_epochs=2, epoch_times=[10.0])
  runs = study_lib.study_runs(study, str(tmp_path))
  remaining_epochs = 4 * 2 + 1  # four runs not started, one half-way
  for workers in (1, 3):
    progress = study_lib.StudyProgress(workers, {"base": 2, "b": 2})
    assert progress.eta_seconds(runs) == pytest.approx(
        remaining_epochs * 10.0 / workers)
  assert study_lib.StudyProgress(1, {"base": 2, "b": 2}).eta_seconds(
      study_lib.study_runs(study, str(tmp_path / "empty"))) is None


def test_worker_shares_split_cores_or_gpus():
  assert study_lib.worker_shares(1, [0, 1], gpus=0) == [{"cores": [0, 1]}]
  assert study_lib.worker_shares(2, [0, 1], gpus=0) == [
      {"cores": [0]}, {"cores": [1]}]
  assert study_lib.worker_shares(2, [0, 1], gpus=4) == [{"gpu": 0},
                                                         {"gpu": 1}]


def test_statistics_equal_scipy(tmp_path):
  finals = {"base": {0: 0.60, 1: 0.62, 2: 0.61},
            "b": {0: 0.63, 1: 0.66, 2: 0.62, 3: 0.70},  # base lacks seed 3
            "single": {1: 0.64}}
  for arm, by_seed in finals.items():
    for seed, final in by_seed.items():
      _fake_run(tmp_path, arm, seed, [final - 0.1, final + 0.01, final],
                optimizer="lcam" if arm == "b" else "sgd")
  study = _study(arms={arm: {} for arm in finals}, seeds=[0, 1, 2, 3],
                 targets=[0.6])
  study_lib.save_study(study, str(tmp_path))
  summary, _ = study_lib.summarize(str(tmp_path))

  b = np.array(list(finals["b"].values()))
  got = summary["arms"]["b"]["final_test_accuracy"]
  interval = stats.t.interval(0.95, len(b) - 1, loc=b.mean(),
                              scale=stats.sem(b))
  np.testing.assert_allclose(got["mean"], b.mean())
  np.testing.assert_allclose(got["std"], b.std(ddof=1))
  np.testing.assert_allclose(got["ci95"], interval)
  np.testing.assert_allclose(summary["arms"]["b"]["best_test_accuracy"][
      "mean"], b.mean() + 0.01)
  assert summary["arms"]["b"]["n"] == 4
  assert summary["arms"]["b"]["phase_below_fraction"]["mean"] == 0.5
  assert "phase_below_fraction" not in summary["arms"]["base"]

  single = summary["arms"]["single"]["final_test_accuracy"]
  assert single == {"mean": 0.64, "std": None, "ci95": None}

  paired = summary["paired_difference"]["b"]
  shared = [0, 1, 2]
  arm_values = [finals["b"][s] for s in shared]
  base_values = [finals["base"][s] for s in shared]
  differences = np.subtract(arm_values, base_values)
  assert paired["n"] == 3 and paired["seeds"] == shared
  np.testing.assert_allclose(paired["mean"], differences.mean())
  np.testing.assert_allclose(paired["p_value"], stats.ttest_rel(
      arm_values, base_values).pvalue)
  np.testing.assert_allclose(paired["ci95"], stats.t.interval(
      0.95, 2, loc=differences.mean(), scale=stats.sem(differences)))
  assert paired["verdict"] == ("better" if paired["ci95"][0] > 0 else
                               "no detectable difference at 95%")
  assert summary["paired_difference"]["single"]["verdict"] == (
      "too few paired seeds to tell")

  # Epoch 2 reaches 0.6 in every run of b (final + 0.01 >= 0.61).
  assert summary["arms"]["b"]["epochs_to_target"]["0.6"] == {
      "median": 2.0, "reached": 4, "n": 4}

  # Another baseline: b pairs with itself no more, base pairs with b.
  against_b, _ = study_lib.summarize(str(tmp_path), baseline="b")
  assert against_b["baseline"] == "b"
  assert set(against_b["paired_difference"]) == {"base", "single"}
  np.testing.assert_allclose(against_b["paired_difference"]["base"]["mean"],
                             -differences.mean())
  with pytest.raises(study_lib.StudyError, match=r"Unknown baseline 'nope'"):
    study_lib.summarize(str(tmp_path), baseline="nope")


def test_verdict_follows_the_interval():
  assert study_statistics.paired_difference({0: 0.7, 1: 0.8, 2: 0.75},
                                     {0: 0.5, 1: 0.6, 2: 0.56})[
                                         "verdict"] == "better"
  assert study_statistics.paired_difference({0: 0.5, 1: 0.6, 2: 0.56},
                                     {0: 0.7, 1: 0.8, 2: 0.75})[
                                         "verdict"] == "worse"


def _study_process(study_file, workdir, *extra, wait=True):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  command = [sys.executable, "-m", "train.study", "run", study_file,
             "--workdir", str(workdir), *extra]
  if wait:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _run_records(workdir, arm, seed):
  path = os.path.join(study_lib.run_dir(str(workdir), arm, seed),
                      "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if '"kind": "run"' in line]


def test_tiny_study_end_to_end(tmp_path):
  study_file = tmp_path / "tiny_study.py"
  study_file.write_text(TINY_STUDY)
  spec = f"{study_file}:with_broken_arm"
  workdir = tmp_path / "study"

  # Kill the study (one run at a time) once its first good run is finished.
  process = _study_process(spec, workdir, "--workers", "1", wait=False)
  first = study_lib.run_dir(str(workdir), "lcam-0.95/0.9", 0)
  deadline = time.time() + 300
  while time.time() < deadline and not study_lib.read_run_status(
      str(workdir), "lcam-0.95/0.9", 0).finished:
    time.sleep(0.5)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  assert os.path.isdir(first) and len(_run_records(workdir, "lcam-0.95/0.9",
                                                   0)) == 1

  result = _study_process(spec, workdir, "--workers", "2")
  assert result.returncode == 1, result.stderr  # The broken arm failed.
  # The finished run was not redone; every good run finished.
  assert len(_run_records(workdir, "lcam-0.95/0.9", 0)) == 1
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["arms"]["sgd"]["n"] == summary["arms"]["lcam-0.95/0.9"][
      "n"] == 2
  assert {(r["arm"], r["seed"]) for r in summary["failed"]} == {
      ("broken", 0), ("broken", 1)}
  assert "/nonexistent/cifar" in summary["failed"][0]["log_tail"]
  assert summary["unfinished"] == []
  for name in ("summary.md", "curves.png"):
    assert (workdir / name).stat().st_size > 0
  assert "| sgd | 2 |" in result.stdout
  assert "study: 4 done, 0 running, 2 failed, 0 pending" in result.stderr

  # summarize alone rewrites the three files from the runs.
  (workdir / "summary.md").unlink()
  assert study_lib.main(["summarize", str(workdir)]) == 0
  assert (workdir / "summary.md").exists()
