"""Tests of the study package: definitions, runs, the pool, the summary."""

import glob
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from study import arms as study_arms
from study import cli
from study import definition as study_lib
from study import hosts
from study import report as study_report
from study import runner as study_runner
from study import statistics
from study import tuning
from train import devices
from train import loop
from train import optimizers
from train import record as record_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(REPO, "study", "studies", "*.py"))
    if not path.endswith("__init__.py"))
# Studies whose arms derive from an earlier stage's committed folder, and
# that folder: they load once it is committed and final.
DERIVED = {"shakespeare_pilot": "shakespeare_tuning",
           "shakespeare_confirm": "shakespeare_pilot"}

TINY_STUDY = """
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
"""


def _study_module(name: str):
  """``study/studies/NAME.py`` imported as a module."""
  path = os.path.join(REPO, "study", "studies", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _study(**fields) -> ml_collections.ConfigDict:
  definition = {"config": "train/configs/tiny.py", "overrides": {},
                "arms": {"base": {}, "b": {}}, "seeds": [0, 1, 2],
                "baseline": "base", "targets": [0.5]}
  definition.update(fields)
  return ml_collections.ConfigDict(definition, allow_dotted_keys=True)


def _fake_run(workdir, arm, seed, accuracies, *, num_epochs=None,
              optimizer="sgd", loss_control="", epoch_times=None,
              run_lines=("{}",), metric="test_accuracy"):
  """A run directory with ``config.json`` and one epoch record per accuracy.

  Loss-controlled runs (LCAM, or ``loss_control``) record phase fractions;
  ``run_lines`` are the raw ``"kind": "run"`` lines, as JSON objects to
  which the kind and step are added (or any text, written as it is).
  """
  epoch_times = epoch_times or [2.0] * len(accuracies)
  path = study_lib.run_dir(str(workdir), arm, seed)
  os.makedirs(path)
  config = {"seed": seed, "num_epochs": num_epochs or len(accuracies),
            "optimizer": {"name": optimizer, "loss_control": loss_control}}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for line in run_lines:
      try:
        record = {"kind": "run", "step": 1, **json.loads(line)}
        f.write(json.dumps(record) + "\n")
      except ValueError:
        f.write(line + "\n")
    for epoch, (accuracy, time_s) in enumerate(zip(accuracies, epoch_times),
                                               start=1):
      record = {"kind": "epoch", "step": 10 * epoch, "epoch": epoch,
                metric: accuracy, "train_loss": 1.0 / epoch,
                "epoch_time_s": time_s}
      if optimizer == "lcam" or loss_control:
        record["phase_below_fraction"] = 0.5
      if optimizer == "lcam-random":  # The placebo: draws, and the loss.
        record.update(phase_below_fraction=0.3, loss_below_mean_fraction=0.6)
      f.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("name", SHIPPED + ["paper:cifar100",
                                            "cifar10_gpu:folder:/data/c.tar"])
def test_shipped_study_loads_and_names_valid_fields(name):
  if name in DERIVED and not os.path.isdir(
      os.path.join(REPO, "results", DERIVED[name])):
    pytest.skip(f"results/{DERIVED[name]} is not committed yet")
  study = study_lib.load_study(name)  # Applies every arm's overrides.
  assert study.baseline in study.arms
  # A tuning study (scored on a validation split) runs one seed per
  # configuration; a comparison needs at least three.
  tuning = study.get("metric", "test_accuracy").startswith("val_")
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
                     match=r"arm 'b'.*optimizer has no field 'bogus'.*"
                     r"beta_below"):
    study_lib.run_config(study, "b", 0)


def test_commands_lists_exactly_the_pending_runs(tmp_path):
  study = _study()
  _fake_run(tmp_path, "base", 0, [0.5, 0.6])  # finished
  _fake_run(tmp_path, "b", 1, [0.5], num_epochs=2)  # half-way
  commands = study_runner.pending_commands(study, str(tmp_path))
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
    progress = study_runner.StudyProgress(workers, {"base": 2, "b": 2})
    assert progress.eta_seconds(runs) == pytest.approx(
        remaining_epochs * 10.0 / workers)
  assert study_runner.StudyProgress(1, {"base": 2, "b": 2}).eta_seconds(
      study_lib.study_runs(study, str(tmp_path / "empty"))) is None


def test_worker_shares_split_cores_or_gpus():
  assert hosts.worker_shares(1, [0, 1], gpus=[]) == [{"cores": [0, 1]}]
  assert hosts.worker_shares(2, [0, 1], gpus=[]) == [
      {"cores": [0]}, {"cores": [1]}]
  assert hosts.worker_shares(2, [0, 1], gpus=["0", "1", "2", "3"]) == [
      {"gpu": "0"}, {"gpu": "1"}]


@pytest.mark.parametrize("visible, gpus", [
    ("2,3", ["2", "3"]), ("-1", []), ("", []), ("3,-1,1", ["3"]),
    ("MIG-1a2b, GPU-9f", ["MIG-1a2b", "GPU-9f"])])
def test_gpu_shares_are_the_parents_visible_gpus(visible, gpus):
  assert hosts.visible_gpus({"CUDA_VISIBLE_DEVICES": visible}) == gpus
  shares = hosts.worker_shares(len(gpus) or 1, [0, 1], gpus=gpus)
  children = [hosts.child_environment(share, {"CUDA_VISIBLE_DEVICES":
                                                  visible})
              for share in shares]
  if gpus:
    assert [env["CUDA_VISIBLE_DEVICES"] for env in children] == gpus
  else:  # No GPU: the runs split the cores and keep what the parent had.
    assert children == [{"CUDA_VISIBLE_DEVICES": visible}]


def test_runs_that_share_a_gpu_share_its_memory():
  shares = hosts.worker_shares(5, [0], gpus=["2", "3"],
                                   memory_fraction=0.9)
  assert [s["gpu"] for s in shares] == ["2", "3", "2", "3", "2"]
  fractions = [float(hosts.child_environment(s, {}).get(
      "XLA_PYTHON_CLIENT_MEM_FRACTION", "nan")) for s in shares]
  np.testing.assert_allclose(fractions, [0.3, 0.45, 0.3, 0.45, 0.3])
  alone = hosts.worker_shares(2, [0], gpus=["2", "3"])
  assert all("XLA_PYTHON_CLIENT_MEM_FRACTION" not in
             hosts.child_environment(s, {}) for s in alone)


def test_a_tpu_host_runs_one_run_at_a_time(tmp_path):
  assert hosts.worker_shares(4, [0, 1, 2], gpus=[], tpu=True) == [
      {"cores": [0, 1, 2]}]
  # The TPU is found by its PCI ids, as JAX finds it; a Google network card
  # (gVNIC, device 0x0042) is not a TPU.
  def pci(folder, *devices):
    for index, (vendor, device) in enumerate(devices):
      (folder / str(index)).mkdir(parents=True)
      (folder / str(index) / "vendor").write_text(vendor + "\n")
      (folder / str(index) / "device").write_text(device + "\n")
    return str(folder)

  assert hosts.host_has_tpu(pci(tmp_path / "tpu", ("0x8086", "0x1234"),
                                       ("0x1ae0", "0x0063")))
  assert not hosts.host_has_tpu(pci(tmp_path / "nic",
                                           ("0x1ae0", "0x0042")))
  assert not hosts.host_has_tpu(str(tmp_path / "none"))


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
  summary, _ = study_report.summarize(str(tmp_path))

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

  # Every arm against the baseline, the first one primary.
  assert [(c["arm"], c["against"], c["role"]) for c in
          summary["comparisons"]] == [("b", "base", "primary"),
                                      ("single", "base", "secondary")]
  paired = summary["comparisons"][0]["paired"]
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
  welch = summary["comparisons"][0]["welch"]
  assert welch["n"] == [4, 3]
  np.testing.assert_allclose(welch["mean"], b.mean() - np.mean(base_values))
  assert summary["comparisons"][0]["verdict"] == (
      "better" if paired["ci95"][0] > 0 else "inconclusive")
  assert summary["comparisons"][0]["equivalence"] is None  # No margin.
  assert summary["comparisons"][1]["verdict"] == "too few runs"

  # Epoch 2 reaches 0.6 in every run of b (final + 0.01 >= 0.61).
  assert summary["arms"]["b"]["epochs_to_target"]["0.6"] == {
      "median": 2.0, "reached": 4, "n": 4}

  # Another baseline: b pairs with itself no more, base pairs with b.
  against_b, _ = study_report.summarize(str(tmp_path), baseline="b")
  assert against_b["baseline"] == "b"
  assert [(c["arm"], c["against"]) for c in against_b["comparisons"]] == [
      ("base", "b"), ("single", "b")]
  np.testing.assert_allclose(against_b["comparisons"][0]["paired"]["mean"],
                             -differences.mean())
  with pytest.raises(study_lib.StudyError, match=r"Unknown baseline 'nope'"):
    study_report.summarize(str(tmp_path), baseline="nope")


def _two_arm_study(tmp_path, finals, **fields):
  """A study of the arms in ``finals`` (arm -> seed -> final), summarized."""
  for arm, by_seed in finals.items():
    for seed, final in by_seed.items():
      _fake_run(tmp_path, arm, seed, [0.1, final])
  seeds = sorted({s for by_seed in finals.values() for s in by_seed})
  study = _study(arms={arm: {} for arm in finals}, seeds=seeds,
                 baseline=next(iter(finals)), **fields)
  study_lib.save_study(study, str(tmp_path))
  return study


def test_declared_comparisons_tests_and_margin(tmp_path):
  finals = {"base": {0: 0.60, 1: 0.62, 2: 0.61, 3: 0.605},
            "b": {0: 0.603, 1: 0.621, 2: 0.612, 3: 0.607},
            "c": {0: 0.70, 1: 0.71, 2: 0.72, 3: 0.69}}
  _two_arm_study(tmp_path, finals, comparisons=[["b", "base"], ["b", "c"]],
                 primary_test="welch", equivalence_margin=0.02)
  summary = json.loads(study_report.write_summary(str(tmp_path)) and (
      tmp_path / "summary.json").read_text())
  assert summary["primary_test"] == "welch"
  assert summary["equivalence_margin"] == 0.02
  first, second = summary["comparisons"]
  assert (first["arm"], first["against"], first["role"]) == (
      "b", "base", "primary")
  assert (second["arm"], second["against"], second["role"]) == (
      "b", "c", "secondary")
  b, base = np.array(list(finals["b"].values())), np.array(
      list(finals["base"].values()))
  welch = stats.ttest_ind(b, base, equal_var=False)
  np.testing.assert_allclose(first["welch"]["p_value"], welch.pvalue)
  # b is within 2 points of base (TOST on Welch), far below c.
  assert first["equivalence"]["verdict"] == "equivalent"
  assert first["equivalence"]["margin"] == 0.02
  assert first["verdict"] == "inconclusive"
  assert second["verdict"] == "worse"
  # One secondary comparison: Holm leaves its p-value; the primary has none.
  assert first["holm_p_value"] is None
  assert second["holm_p_value"] == second["welch"]["p_value"]
  assert second["equivalence"]["verdict"] == "not shown equivalent"
  markdown = (tmp_path / "summary.md").read_text()
  assert "primary test: Welch t-test" in markdown
  assert "| b | base | primary | 4 |" in markdown
  assert "| equivalent | inconclusive |" in markdown
  # --baseline overrides the declared comparisons.
  against_c, _ = study_report.summarize(str(tmp_path), baseline="c")
  assert {(c["arm"], c["against"]) for c in against_c["comparisons"]} == {
      ("base", "c"), ("b", "c")}


def test_equal_differences_are_too_few_runs_never_better(tmp_path):
  # b is base + 0.1 in every seed, up to rounding: no spread to test with.
  base = {0: 0.6, 1: 0.7, 2: 0.8}
  _two_arm_study(tmp_path, {"base": base,
                            "b": {s: v + 0.1 for s, v in base.items()}})
  summary, _ = study_report.summarize(str(tmp_path))
  comparison = summary["comparisons"][0]
  assert comparison["verdict"] == "too few runs"
  assert comparison["paired"]["p_value"] is None
  assert comparison["seeds_for_80pct_power"] is None


def test_bad_final_values_are_failed_runs_and_json_is_strict(tmp_path):
  _fake_run(tmp_path, "base", 0, [0.5, 0.6])
  _fake_run(tmp_path, "base", 1, [0.5, None])  # NaN is written as null
  _fake_run(tmp_path, "b", 0, [0.5, 0.7])
  path = study_lib.run_dir(str(tmp_path), "b", 0)
  with open(os.path.join(path, "metrics.jsonl"), "a") as f:
    # A NaN training loss in a re-logged last epoch; the accuracy stays.
    f.write(json.dumps({"kind": "epoch", "step": 20, "epoch": 2,
                        "test_accuracy": 0.7, "train_loss": None}) + "\n")
  study_lib.save_study(_study(seeds=[0, 1]), str(tmp_path))
  study_report.write_summary(str(tmp_path))

  def no_constants(name):
    raise AssertionError(f"summary.json holds {name}")
  summary = json.loads((tmp_path / "summary.json").read_text(),
                       parse_constant=no_constants)
  assert summary["failed"] == [{
      "arm": "base", "seed": 1, "reason": "final test_accuracy is null or NaN",
      "log_tail": None}]
  assert summary["arms"]["base"]["n"] == 1
  assert summary["arms"]["base"]["final_test_accuracy"]["mean"] == 0.6
  assert summary["arms"]["b"]["final_train_loss"]["mean"] is None
  assert "base seed 1 (final test_accuracy is null or NaN)" in (
      tmp_path / "summary.md").read_text()


def test_validation_metric_shows_no_test_accuracy(tmp_path):
  for arm in ("base", "b"):
    for seed in (0, 1, 2):
      _fake_run(tmp_path, arm, seed, [0.4, 0.5 + 0.01 * seed],
                metric="val_accuracy")
  study_lib.save_study(_study(metric="val_accuracy", targets=[0.45]),
                       str(tmp_path))
  markdown = study_report.write_summary(str(tmp_path))
  text = (tmp_path / "summary.json").read_text()
  summary = json.loads(text)
  assert summary["metric"] == "val_accuracy"
  assert "test_acc" not in text
  assert "test acc" not in markdown and "test_acc" not in markdown
  assert summary["arms"]["b"]["final_val_accuracy"]["mean"] == 0.51
  assert summary["arms"]["b"]["epochs_to_target"]["0.45"]["median"] == 2.0
  assert summary["failed"] == []
  assert "final val acc. %" in markdown


def test_every_loss_controlled_arm_reports_phase_fractions(tmp_path):
  for seed in (0, 1):
    _fake_run(tmp_path, "base", seed, [0.5])
    _fake_run(tmp_path, "b", seed, [0.5], optimizer="adamw",
              loss_control='{"b1": [0.95, 0.9]}')
  study_lib.save_study(_study(seeds=[0, 1]), str(tmp_path))
  summary, _ = study_report.summarize(str(tmp_path))
  assert summary["arms"]["b"]["phase_below_fraction"]["mean"] == 0.5
  assert "phase_below_fraction" not in summary["arms"]["base"]


def test_below_fractions_per_epoch_and_only_of_a_loss_controlled_run(
    tmp_path):
  _fake_run(tmp_path, "lcam", 0, [0.4, 0.5, 0.6], optimizer="lcam")
  _fake_run(tmp_path, "sgd", 0, [0.4, 0.5, 0.6])
  lcam = record_lib.load_run(study_lib.run_dir(str(tmp_path), "lcam", 0))
  assert study_arms.below_fractions(lcam) == (0.5, 0.5, 0.5)
  sgd = record_lib.load_run(study_lib.run_dir(str(tmp_path), "sgd", 0))
  with pytest.raises(ValueError, match="not a loss-controlled run"):
    study_arms.below_fractions(sgd)


def test_provenance_per_arm(tmp_path):
  new = {"commit": "0123456789abcdef", "tracked_changes": False,
         "versions": {"jax": "0.7.0", "numpy": "2.0"},
         "data_fingerprint": "cifar:abc", "device_kind": "cpu",
         "devices": 4, "processes": 1}
  # Seed 0: started three times, twice from the same step (read_metrics
  # keeps one record per step), once on another commit; then killed while
  # writing a fourth start's record.
  _fake_run(tmp_path, "b", 0, [0.5], run_lines=[
      json.dumps(new), json.dumps(new),
      json.dumps({**new, "commit": "fedcba9876543210", "devices": 2})])
  with open(os.path.join(study_lib.run_dir(str(tmp_path), "b", 0),
                         "metrics.jsonl"), "a") as f:
    f.write('{"kind": "run", "step": 11, "comm')
  _fake_run(tmp_path, "b", 1, [0.5], run_lines=[json.dumps(new)])
  _fake_run(tmp_path, "base", 0, [0.5],  # written before provenance
            run_lines=['{"devices": 2, "processes": 1}'])
  _fake_run(tmp_path, "base", 1, [0.5], run_lines=[])
  study_lib.save_study(_study(seeds=[0, 1]), str(tmp_path))
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  b = summary["arms"]["b"]["provenance"]
  assert b["restarts"] == [2, 0]
  assert b["commits"] == ["0123456789abcdef", "fedcba9876543210"]
  assert b["devices"] == [4, 2]
  assert b["tracked_changes"] == [False]
  assert b["versions"] == [{"jax": "0.7.0", "numpy": "2.0"}]
  assert b["data_fingerprints"] == ["cifar:abc"]
  assert b["device_kinds"] == ["cpu"]
  base = summary["arms"]["base"]["provenance"]
  assert base["restarts"] == [0, 0]
  assert base["commits"] == [None] and base["devices"] == [2]
  assert ("| b | 0123456789, fedcba9876 | no | 0: 2, 1: 0 | 4, 2 | cpu | "
          "cifar:abc | jax 0.7.0 numpy 2.0 |") in markdown
  assert "| base | – | – | 0: 0, 1: 0 | 2 | – | – | – |" in markdown


@pytest.mark.parametrize("fields, message", [
    ({"comparisons": [["b", "nope"]]}, r"Bad comparison \['b', 'nope'\]"),
    ({"comparisons": [["b", "b"]]}, r"two different arms"),
    ({"comparisons": "b"}, r"list of \[arm, against\] pairs"),
    ({"primary_test": "anova"}, r"primary_test must be one of"),
    ({"equivalence_margin": 0.0}, r"equivalence_margin must be a number"),
    ({"equivalence_margin": "0.5"}, r"equivalence_margin must be a number"),
    ({"metric": 3}, r"metric must be the name"),
    ({"metric_direction": "down"}, r"metric_direction must be one of"),
    ({"primary_comparisons": 0}, r"primary_comparisons must be a whole"),
    ({"primary_comparisons": 2}, r"from 1 to its 1 comparisons"),
    ({"primary_comparisons": True}, r"primary_comparisons must be a whole"),
])
def test_bad_statistics_fields_are_clear_errors(tmp_path, fields, message):
  study_file = tmp_path / "bad_study.py"
  study_file.write_text(
      "import ml_collections\n\ndef get_study():\n"
      "  return ml_collections.ConfigDict({'config': 'train/configs/tiny.py',"
      " 'arms': {'base': {}, 'b': {}}, 'seeds': [0], 'baseline': 'base', "
      f"**{fields!r}}})\n")
  with pytest.raises(study_lib.StudyError, match=message):
    study_lib.load_study(str(study_file))
  # A study directory written before the check is caught by summarize.
  study_lib.save_study(_study(**fields), str(tmp_path / "study"))
  assert cli.main(["summarize", str(tmp_path / "study")]) == 1


def _study_process(study_file, workdir, *extra, wait=True):
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  command = [sys.executable, "-m", "study", "run", study_file,
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


def _wait_until_no_run_holds_its_workdir(workdir):
  deadline = time.time() + 300
  for lock in glob.glob(os.path.join(workdir, "*", "*",
                                     devices.LOCK_FILENAME)):
    while True:
      try:
        with devices.hold(os.path.dirname(lock)):
          break
      except devices.WorkdirBusyError:
        assert time.time() < deadline
        time.sleep(0.2)


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
  _wait_until_no_run_holds_its_workdir(workdir)  # The next one got SIGTERM.
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
  assert cli.main(["summarize", str(workdir)]) == 0
  assert (workdir / "summary.md").exists()


def test_post_hoc_comparisons_print_and_write_nothing(tmp_path, capsys):
  finals = {"base": {0: 0.60, 1: 0.62, 2: 0.61},
            "b": {0: 0.603, 1: 0.621, 2: 0.612}}
  _two_arm_study(tmp_path, finals)
  assert cli.main(["summarize", str(tmp_path), "--compare", "b:base",
                         "--margin", "0.02"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("Post hoc:")
  assert "| b | base | primary |" in out and "| equivalent |" in out
  assert not (tmp_path / "summary.json").exists()
  assert cli.main(["summarize", str(tmp_path), "--baseline", "b"]) == 0
  assert not (tmp_path / "summary.md").exists()
  assert cli.main(["summarize", str(tmp_path), "--compare", "b"]) == 1
  assert cli.main(["summarize", str(tmp_path), "--compare",
                         "b:nope"]) == 1
  err = capsys.readouterr().err
  assert err.count("error:") == 2 and "ARM:AGAINST" in err and "nope" in err


def test_families_select_their_winner_by_the_rule(tmp_path):
  finals = {"sgd-a": {0: 0.60}, "sgd-b": {0: 0.65}, "lcam-a": {0: 0.64},
            "lcam-b": {0: 0.64}}
  _two_arm_study(tmp_path, finals, metric="test_accuracy",
                 families={"sgd": ["sgd-a", "sgd-b"],
                           "lcam": ["lcam-b", "lcam-a"]},
                 selection="the best final accuracy; ties: the first listed")
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["selection"]["sgd"]["winner"] == "sgd-b"
  assert summary["selection"]["lcam"] == {"winner": "lcam-b", "value": 0.64,
                                          "complete": True}
  assert "- sgd: sgd-b" in markdown and "ties: the first listed" in markdown
  study = study_lib.read_study(str(tmp_path))
  study.families = {"sgd": ["sgd-a", "nope"]}
  with pytest.raises(study_lib.StudyError, match=r"unknown.*nope"):
    study_lib.check_statistics_fields(study)


def test_power_plan_pools_the_spread_and_takes_the_larger_count(tmp_path,
                                                                capsys):
  finals = {"a": {0: 0.600, 1: 0.610, 2: 0.605},
            "b": {0: 0.700, 1: 0.690, 2: 0.695, 3: 0.700}}
  _two_arm_study(tmp_path, finals)
  assert cli.main(["power", str(tmp_path), "--margin", "0.01"]) == 0
  out = capsys.readouterr().out
  sd = math.sqrt((2 * np.var([0.6, 0.61, 0.605], ddof=1)
                  + 3 * np.var([0.7, 0.69, 0.695, 0.7], ddof=1)) / 5)
  assert f"pooled sd: {sd:.5f} (5 degrees of freedom)" in out
  tost = statistics.seeds_for_equivalence(0.01 / sd, "welch")
  detect = statistics.seeds_for_power(0.01 / sd, "welch")
  assert f"needs {max(tost, detect)} seeds per arm" in out
  assert cli.main(["power", str(tmp_path), "--margin", "0.01",
                         "--arms", "nope"]) == 1
  assert cli.main(["power", str(tmp_path), "--margin", "-1"]) == 1
  assert capsys.readouterr().err.count("error:") == 2


LOSSES = {"base": {0: 1.50, 1: 1.52, 2: 1.51, 3: 1.49},
          "b": {0: 1.45, 1: 1.46, 2: 1.44, 3: 1.45}}


@pytest.mark.parametrize("metric, fields", [
    ("test_loss", {}), ("val_nll", {"metric_direction": "lower"})])
def test_a_loss_study_takes_lower_as_better(tmp_path, metric, fields):
  # Each run's loss falls to 0.05 below its final value at epoch 2, then
  # rises to it: its best is that minimum; it reaches 1.42 there, or never.
  for arm, by_seed in LOSSES.items():
    for seed, final in by_seed.items():
      _fake_run(tmp_path, arm, seed, [2.0, final - 0.05, final],
                metric=metric)
  study_lib.save_study(_study(
      arms={"base": {}, "b": {}}, seeds=[0, 1, 2, 3], metric=metric,
      targets=[1.42], equivalence_margin=0.01, families={"all": ["base", "b"]},
      selection="the lowest final loss", **fields), str(tmp_path))
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary.get("metric_direction") == fields.get("metric_direction")
  assert summary["selection"]["all"] == {"winner": "b", "value": 1.45,
                                         "complete": True}
  comparison = summary["comparisons"][0]
  assert comparison["paired"]["ci95"][1] < 0
  assert comparison["verdict"] == "better"
  b = summary["arms"]["b"]
  np.testing.assert_allclose(b[f"best_{metric}"]["mean"], 1.40)  # The min.
  assert b["epochs_to_target"]["1.42"] == {"median": 2.0, "reached": 4,
                                           "n": 4}
  assert summary["arms"]["base"]["epochs_to_target"]["1.42"] == {
      "median": None, "reached": 0, "n": 4}
  if metric == "test_loss":  # In nats, 4 decimals, never x100.
    assert ("| arm | n | final test loss (nats) (mean ± std) | 95% CI | "
            "best test loss (nats) | epochs to 1.42 nats |") in markdown
    assert "| b | 4 | 1.4500 ± 0.0082 |" in markdown
    assert "- all: b (test loss 1.4500 nats)" in markdown
    assert ("(differences in nats; primary test: paired t-test; "
            "equivalence: TOST at ±0.0100 nats;") in markdown
    assert "| b | base | primary | 4 | -0.0550 | [" in markdown


def _primaries_study(tmp_path, **fields):
  """b and d near base (primary), c far above it (secondary); Welch."""
  finals = {"base": {0: 0.600, 1: 0.620, 2: 0.610, 3: 0.605},
            "b": {0: 0.603, 1: 0.621, 2: 0.612, 3: 0.607},
            "d": {0: 0.615, 1: 0.640, 2: 0.622, 3: 0.619},
            "c": {0: 0.700, 1: 0.710, 2: 0.720, 3: 0.690}}
  _two_arm_study(tmp_path, finals,
                 comparisons=[["b", "base"], ["d", "base"], ["c", "base"]],
                 primary_test="welch", equivalence_margin=0.02, **fields)
  return {arm: np.array(list(by_seed.values()))
          for arm, by_seed in finals.items()}


def test_two_primary_comparisons_at_alpha_0025_holm_adjusted(tmp_path):
  values = _primaries_study(tmp_path, primary_comparisons=2)
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["primary_comparisons"] == 2
  b, d, c = summary["comparisons"]
  assert [x["role"] for x in (b, d, c)] == ["primary", "primary",
                                            "secondary"]
  # Holm over the two primaries, by hand: the smaller p doubled, the larger
  # at least that.
  p_b, p_d = (stats.ttest_ind(values[arm], values["base"],
                              equal_var=False).pvalue for arm in ("b", "d"))
  low, high = sorted([p_b, p_d])
  holm = {p_b: 2 * low if p_b == low else max(2 * low, high)}
  holm[p_d] = 2 * low if p_d == low else max(2 * low, high)
  np.testing.assert_allclose(b["holm_p_value"], holm[p_b])
  np.testing.assert_allclose(d["holm_p_value"], holm[p_d])
  assert c["holm_p_value"] == c["welch"]["p_value"]  # A family of one.
  # Each primary's TOST at 0.025: the Welch 95% interval.
  for row, arm in ((b, "b"), (d, "d")):
    tost = row["equivalence"]
    assert tost["alpha"] == 0.025
    np.testing.assert_allclose(tost["ci95"], stats.ttest_ind(
        values[arm], values["base"], equal_var=False).confidence_interval(
            0.95))
    pooled = math.sqrt((np.var(values[arm], ddof=1)
                        + np.var(values["base"], ddof=1)) / 2)
    effect = (values[arm].mean() - values["base"].mean()) / pooled
    assert row["seeds_for_80pct_power"] == statistics.seeds_for_power(
        effect, "welch", alpha=0.025)
  assert d["seeds_for_80pct_power"] > statistics.seeds_for_power(
      (values["d"].mean() - values["base"].mean()) / math.sqrt(
          (np.var(values["d"], ddof=1) + np.var(values["base"], ddof=1)) / 2),
      "welch")
  assert "alpha" not in c["equivalence"] and "ci90" in c["equivalence"]
  assert "| TOST CI | TOST p | equivalence | verdict | Holm p (primary) | " \
         "Holm p (secondary) | seeds for 80% power |" in markdown
  assert ("2 primary comparisons, each at alpha 0.025 (its TOST CI 95%, its "
          "seeds for 80% power at alpha 0.025)") in markdown
  assert f"| {holm[p_b]:.3f} | – |" in markdown


def test_one_primary_comparison_by_default(tmp_path):
  values = _primaries_study(tmp_path)
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert "primary_comparisons" not in summary
  b, d, c = summary["comparisons"]
  assert [x["role"] for x in (b, d, c)] == ["primary", "secondary",
                                            "secondary"]
  assert b["holm_p_value"] is None and "alpha" not in b["equivalence"]
  np.testing.assert_allclose(b["equivalence"]["ci90"], stats.ttest_ind(
      values["b"], values["base"], equal_var=False).confidence_interval(0.90))
  assert [d["holm_p_value"], c["holm_p_value"]] == statistics.holm(
      [d["welch"]["p_value"], c["welch"]["p_value"]])
  assert "Holm p (primary)" not in markdown and "| TOST 90% CI |" in markdown


def test_power_plan_at_the_studys_primary_alpha(tmp_path, capsys):
  _primaries_study(tmp_path, primary_comparisons=2)
  assert cli.main(["power", str(tmp_path), "--margin", "0.01",
                   "--arms", "base,b"]) == 0
  out = capsys.readouterr().out
  sd = math.sqrt((np.var([0.6, 0.62, 0.61, 0.605], ddof=1)
                  + np.var([0.603, 0.621, 0.612, 0.607], ddof=1)) / 2)
  counts = [statistics.seeds_for_equivalence(0.01 / sd, "welch", alpha=alpha)
            for alpha in (0.025, 0.05)]
  detects = [statistics.seeds_for_power(0.01 / sd, "welch", alpha=alpha)
             for alpha in (0.025, 0.05)]
  assert "each of 2 primary comparisons at alpha 0.025" in out
  assert f"two-sided 2.5%: {detects[0]}" in out
  assert f"needs {max(counts[0], detects[0])} seeds per arm" in out
  assert cli.main(["power", str(tmp_path), "--margin", "0.01",
                   "--arms", "base,b", "--primaries", "1"]) == 0
  assert f"needs {max(counts[1], detects[1])} seeds per arm" in (
      capsys.readouterr().out)
  assert max(counts[0], detects[0]) > max(counts[1], detects[1])


def test_placebo_arms_show_draws_and_loss_fractions_apart(tmp_path):
  for seed in range(3):
    _fake_run(tmp_path, "lcam", seed, [0.5, 0.6], optimizer="lcam")
    _fake_run(tmp_path, "placebo", seed, [0.5, 0.6], optimizer="lcam-random")
  study_lib.save_study(_study(arms={"lcam": {}, "placebo": {}},
                              seeds=[0, 1, 2], baseline="lcam"),
                       str(tmp_path))
  markdown = study_report.write_summary(str(tmp_path))
  summary = json.loads((tmp_path / "summary.json").read_text())
  placebo = summary["arms"]["placebo"]
  assert placebo["phase_below_fraction"]["mean"] == pytest.approx(0.3)
  assert placebo["loss_below_mean_fraction"]["mean"] == pytest.approx(0.6)
  assert "loss_below_mean_fraction" not in summary["arms"]["lcam"]
  assert "| steps in below phase | loss below mean |" in markdown
  assert "| 0.300 ± 0.000 | 0.600 ± 0.000 |" in markdown


# A stand-in for `python -m train` that saves slowly. Like a run, it takes
# the first SIGINT or SIGTERM as a request to stop and save; like a run
# before `train.signals.StopOnSignals` kept SIGTERM, a second signal kills
# it while it saves.
FAKE_RUN = """
import json, os, signal, sys, time
path, save_s = sys.argv[1], float(sys.argv[2])
signals = []
def on_signal(signum, frame):
  signals.append(signum)
  with open(os.path.join(path, "signals"), "a") as f:
    f.write(f"{signum}\\n")
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)
for s in (signal.SIGINT, signal.SIGTERM):
  signal.signal(s, on_signal)
with open(os.path.join(path, "started.json"), "w") as f:
  json.dump({"argv": sys.argv, "session": os.getsid(0) == os.getpid(),
             "SLURM_NTASKS": os.environ.get("SLURM_NTASKS")}, f)
end = time.time() + 300  # Left behind by a failed test, it still ends.
while not signals and time.time() < end:
  time.sleep(0.05)
time.sleep(min(save_s, max(end - time.time(), 0)))
open(os.path.join(path, "saved"), "w").close()
sys.exit(128 + signals[0])
"""

# Runs a study of two arms whose runs are FAKE_RUN, two at a time.
STUDY_DRIVER = """
import sys
import ml_collections
from study import definition
from study import runner
fake_run, save_s, workdir = sys.argv[1:]
definition.train_command = lambda s, w, arm, seed: [
    sys.executable, fake_run, definition.run_dir(w, arm, seed), save_s]
two_arms = ml_collections.ConfigDict({
    "config": "train/configs/tiny.py", "arms": {"a": {}, "b": {}},
    "seeds": [0], "baseline": "a"})
runner.run_study(two_arms, workdir, workers=2, poll_s=0.2)
"""


def _start_fake_study(tmp_path, save_s):
  """The driver, in its own process group as a shell's foreground job is;
  returns it and its two runs' folders once both runs wait for a signal."""
  (tmp_path / "fake_run.py").write_text(FAKE_RUN)
  (tmp_path / "driver.py").write_text(STUDY_DRIVER)
  workdir = tmp_path / "study"
  driver = subprocess.Popen(
      [sys.executable, str(tmp_path / "driver.py"), str(tmp_path /
                                                        "fake_run.py"),
       str(save_s), str(workdir)], cwd=REPO, start_new_session=True,
      env=dict(os.environ, SLURM_NTASKS="2", PYTHONPATH=REPO),
      stderr=subprocess.PIPE,
      text=True)
  runs = [study_lib.run_dir(str(workdir), arm, 0) for arm in ("a", "b")]
  deadline = time.time() + 120
  while not all(os.path.exists(os.path.join(r, "started.json"))
                for r in runs):
    assert time.time() < deadline and driver.poll() is None, (
        driver.communicate()[1])
    time.sleep(0.1)
  return driver, runs


def _wait_for_signals(runs):
  deadline = time.time() + 60
  while not all(os.path.exists(os.path.join(r, "signals")) for r in runs):
    assert time.time() < deadline
    time.sleep(0.05)


# A stand-in for a run whose loss turns non-finite: it records its start and
# the divergence, as `train.loop` does, and exits with an error.
DIVERGING_RUN = """
import json, os, sys
path = sys.argv[1]
os.makedirs(path, exist_ok=True)
with open(os.path.join(path, "starts"), "a") as f:
  f.write("start\\n")
with open(os.path.join(path, "config.json"), "w") as f:
  json.dump({"seed": 0, "num_epochs": 2}, f)
with open(os.path.join(path, "metrics.jsonl"), "a") as f:
  f.write(json.dumps({"kind": "diverged", "step": 7, "epoch": 1.75}) + "\\n")
print("error: The training loss is nan at step 7 (epoch 2).")
sys.exit(1)
"""


def test_a_diverged_run_is_an_outcome_not_retried(tmp_path, monkeypatch):
  (tmp_path / "diverging_run.py").write_text(DIVERGING_RUN)
  monkeypatch.setattr(study_lib, "train_command", lambda s, w, arm, seed: [
      sys.executable, str(tmp_path / "diverging_run.py"),
      study_lib.run_dir(w, arm, seed)])
  workdir = str(tmp_path / "study")
  definition = _study(arms={"a": {}}, seeds=[0], baseline="a")
  for _ in range(2):  # A second study run starts nothing either.
    statuses = study_runner.run_study(definition, workdir, retries=3,
                                      poll_s=0.05).runs
  path = study_lib.run_dir(workdir, "a", 0)
  with open(os.path.join(path, "starts")) as f:
    assert f.read().count("start") == 1
  (status,) = statuses
  assert status.diverged and status.done and not status.finished
  assert study_runner.pending_commands(definition, workdir) == []


def test_ctrl_c_asks_each_run_once_and_the_study_waits_for_its_save(
    tmp_path):
  driver, runs = _start_fake_study(tmp_path, save_s=3)
  try:
    os.killpg(driver.pid, signal.SIGINT)  # What Ctrl-C at a shell does.
    _wait_for_signals(runs)
    stderr = driver.communicate(timeout=120)[1]
  finally:
    driver.kill()
  assert driver.returncode == 0, stderr
  for run in runs:
    with open(os.path.join(run, "signals")) as f:
      assert f.read().split() == [str(int(signal.SIGTERM))]
    assert os.path.exists(os.path.join(run, "saved"))  # Not killed.
    with open(os.path.join(run, "started.json")) as f:
      started = json.load(f)
    assert started["session"]  # The terminal's signals do not reach it.
    assert started["argv"][-1] == "--config.distributed.initialize=no"
    assert started["SLURM_NTASKS"] == "2"  # Inherited, and so ignored.
  assert "study: stopping; each run saves a checkpoint" in stderr


def test_a_second_ctrl_c_kills_the_runs(tmp_path):
  driver, runs = _start_fake_study(tmp_path, save_s=300)
  try:
    os.killpg(driver.pid, signal.SIGINT)
    _wait_for_signals(runs)  # Each run is saving.
    os.killpg(driver.pid, signal.SIGINT)
    stderr = driver.communicate(timeout=120)[1]
  finally:
    driver.kill()
  assert driver.returncode == 0, stderr
  assert "study: killing the runs" in stderr
  assert not any(os.path.exists(os.path.join(r, "saved")) for r in runs)


def test_runs_of_a_killed_study_stop_and_save(tmp_path):
  driver, runs = _start_fake_study(tmp_path, save_s=1)
  try:
    os.kill(driver.pid, signal.SIGKILL)  # Not its runs: they have sessions.
    driver.communicate(timeout=60)
    _wait_for_signals(runs)
  finally:
    driver.kill()
  for run in runs:
    with open(os.path.join(run, "signals")) as f:
      assert f.read().split() == [str(int(signal.SIGTERM))]
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(run, "saved")):
      assert time.time() < deadline
      time.sleep(0.05)


def _run_in_process(study, workdir, arm, seed):
  """One (arm, seed) of ``study`` trained here, as `run_study` would in a
  child process (the runner's process handling is tested above)."""
  loop.train_and_evaluate(study_lib.run_config(study, arm, seed),
                          study_lib.run_dir(str(workdir), arm, seed))


@pytest.mark.campaign  # Eleven tiny runs: `make campaigns`, not `make test`.
def test_a_tiny_two_stage_study_end_to_end(tmp_path):
  """Stage 1 tunes on a validation split and names each family's winner;
  stage 2 compares the winner with the placebo, with a margin, on the test
  set, as `lcam_tuning` and `lcam_confirm` do at full size."""
  data = "synthetic:num_train=192,num_test=64,num_classes=4"
  common = {"data.source": data, "num_epochs": 1, "batch_size": 32,
            "eval_batch_size": 32, "log_every_steps": 1}
  tuning = _study(
      overrides={**common, "data.validation_examples": 64,
                 "data.eval_test": False},
      arms={"sgd": {"optimizer.name": "sgd"},
            "lcam": {"optimizer.name": "lcam"}},
      seeds=[1000], baseline="sgd", metric="val_accuracy",
      families={"sgd": ["sgd"], "lcam": ["lcam"]},
      selection="the best final val_accuracy")
  study_lib.check_statistics_fields(tuning)
  stage1 = tmp_path / "tuning"
  study_lib.save_study(tuning, str(stage1))
  for arm in tuning.arms:
    _run_in_process(tuning, stage1, arm, 1000)
  summary1 = json.loads(study_report.write_summary(str(stage1)) and (
      stage1 / "summary.json").read_text())
  assert summary1["metric"] == "val_accuracy"
  assert summary1["selection"]["lcam"]["winner"] == "lcam"
  assert summary1["selection"]["lcam"]["complete"]
  assert "test acc." not in (stage1 / "summary.md").read_text()
  lcam_run = record_lib.read_metrics(
      study_lib.run_dir(str(stage1), "lcam", 1000))
  (epoch,) = lcam_run["epoch"]
  assert "val_accuracy" in epoch and "test_accuracy" not in epoch
  fraction = epoch["phase_below_fraction"]

  confirm = _study(
      overrides=common,
      arms={"sgd": {"optimizer.name": "sgd"},
            "lcam": {"optimizer.name": "lcam"},
            "placebo": {"optimizer.name": "lcam",
                        "optimizer.phases": "random",
                        "optimizer.below_probability": (fraction,)}},
      seeds=[0, 1, 2], baseline="sgd",
      comparisons=[["lcam", "sgd"], ["lcam", "placebo"]],
      equivalence_margin=0.5, primary_test="welch")
  study_lib.check_statistics_fields(confirm)
  stage2 = tmp_path / "confirm"
  study_lib.save_study(confirm, str(stage2))
  for seed in confirm.seeds:
    for arm in confirm.arms:
      _run_in_process(confirm, stage2, arm, seed)
  summary2 = json.loads(study_report.write_summary(str(stage2)) and (
      stage2 / "summary.json").read_text())
  primary, placebo = summary2["comparisons"]
  assert (primary["arm"], primary["against"], primary["role"]) == (
      "lcam", "sgd", "primary")
  assert placebo["role"] == "secondary"
  for comparison in (primary, placebo):
    assert comparison["paired"]["n"] == 3 and comparison["welch"]["n"] == [3, 3]
    assert comparison["equivalence"]["margin"] == 0.5
    # Accuracies differ by far less than 50 points: equivalent at that margin.
    assert comparison["equivalence"]["verdict"] == "equivalent"
    assert comparison["verdict"] in ("better", "worse", "inconclusive",
                                     "too few runs")
  arms = summary2["arms"]
  assert "loss_below_mean_fraction" in arms["placebo"]
  assert arms["lcam"]["phase_below_fraction"]["mean"] == pytest.approx(
      arms["lcam"]["loss_below_mean_fraction"]["mean"])
  for arm in arms.values():
    assert arm["n"] == 3
    assert arm["provenance"]["restarts"] == [0, 0, 0]
    assert arm["provenance"]["commits"]  # Each run recorded its checkout.


# Each committed study folder, and the study argument that made it.
COMMITTED_STUDIES = {"cifar10_cpu": "cifar10_cpu", "lcam_tuning": "lcam_tuning",
                     "lcam_tuning_edge": "lcam_tuning_edge",
                     "lcam_tuning_rerun": "lcam_tuning",
                     "lcam_confirm": "lcam_confirm",
                     "lcam_confirm_edge": "lcam_confirm_edge"}
# Fields a study file changed after its runs, by its own documented rule:
# stage 1b's union moved to stage 1's grid run again (its docstring).
AMENDED_FIELDS = {"lcam_tuning_edge": {"selection_union"}}


def test_every_committed_study_folder_is_checked_against_its_file():
  folders = {os.path.basename(os.path.dirname(path)) for path in glob.glob(
      os.path.join(REPO, "results", "*", study_lib.STUDY_FILENAME))}
  assert folders <= COMMITTED_STUDIES.keys()


@pytest.mark.parametrize("folder", sorted(COMMITTED_STUDIES))
def test_a_study_file_still_defines_what_its_committed_runs_ran(folder):
  """A study file may be tidied after its runs, never changed: what it
  defines equals the study.json its runs saved."""
  path = os.path.join(REPO, "results", folder, study_lib.STUDY_FILENAME)
  if not os.path.isfile(path):
    pytest.skip(f"results/{folder} is not committed yet")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  defined = json.loads(json.dumps(
      study_lib.load_study(COMMITTED_STUDIES[folder]).to_dict()))
  changed = {field for field in saved.keys() | defined.keys()
             if saved.get(field) != defined.get(field)}
  assert changed == AMENDED_FIELDS.get(folder, set())


@pytest.mark.parametrize("name", ["lcam_confirm", "lcam_confirm_edge"])
def test_confirmation_holds_its_tuning_runs_derivation(name):
  """A confirmation's literals are what its `derive()` reads from the
  committed tuning runs (stage 2: stage 1; stage 2b: stage 1b and stage 1's
  grid run again)."""
  confirm = _study_module(name)
  derived = confirm.derive()
  assert derived["sgd"] == confirm.SGD and derived["lcam"] == confirm.LCAM
  np.testing.assert_allclose(confirm.BELOW_FRACTIONS,
                             derived["below_fractions"], atol=5e-5)
  assert pytest.approx(
      derived["mean_step_momentum"], abs=5e-5) == confirm.MEAN_STEP_MOMENTUM
  study = confirm.get_study()
  assert study.arms["c-sgd-mean-step"]["optimizer.momentum"] == (
      confirm.MEAN_STEP_MOMENTUM)
  assert study.arms["e-lcam-8-epochs"]["schedule.boundaries_epochs"] == (
      1.6, 3.2, 4.8)
  assert study.equivalence_margin == 0.006 and len(study.seeds) == 13


def test_tuning_edge_is_stage_ones_recipe_at_larger_rates():
  """Stage 1b changes only the learning rates; its repeat is stage 1's arm."""
  edge = study_lib.load_study("lcam_tuning_edge")
  stage_1 = study_lib.load_study("lcam_tuning")
  assert edge.seeds == stage_1.seeds
  assert edge.overrides.to_dict() == dict(
      stage_1.overrides.to_dict(), on_nonfinite_loss="stop")
  repeat = "repeat-lcam-lr0.2-0.95/0.9"
  assert (study_lib.run_config(edge, repeat, 1000)
          == study_lib.run_config(stage_1, "lcam-lr0.2-0.95/0.9", 1000))
  rates = {study_lib.run_config(edge, arm, 1000).schedule.learning_rate
           for family in edge.families.values() for arm in family}
  assert rates == {0.4, 0.8} and all(
      repeat not in family for family in edge.families.values())
  extended = study_lib.load_study("lcam_tuning_edge:sgd=1.6")
  assert set(extended.arms) - set(edge.arms) == {"sgd-lr1.6-m0.9",
                                                  "sgd-lr1.6-m0.95"}
  with pytest.raises(study_lib.StudyError, match=r"sgd=1\.6"):
    study_lib.load_study("lcam_tuning_edge:adam=1")


def test_tuning_edge_selects_over_both_grids_with_divergence_last(tmp_path):
  """The rule of `lcam_tuning_edge`: the union of stage 1's grid and stage
  1b's, a diverged run last, ties to the lower rate, the edge flagged."""
  path = os.path.join(REPO, "study", "studies", "lcam_tuning_edge.py")
  spec = importlib.util.spec_from_file_location("lcam_tuning_edge", path)
  edge_study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(edge_study)
  grids = {"stage1": {"sgd-lr0.1-m0.9": 0.70, "sgd-lr0.2-m0.9": 0.74},
           "edge": {"sgd-lr0.4-m0.9": 0.74, "sgd-lr0.8-m0.9": None}}
  for folder, finals in grids.items():
    for arm, final in finals.items():
      _fake_run(tmp_path / folder, arm, 1000, [0.5, final or 0.1],
                metric="val_accuracy")
      if final is None:  # Diverged in its second epoch.
        run = study_lib.run_dir(str(tmp_path / folder), arm, 1000)
        with open(os.path.join(run, "metrics.jsonl"), "w") as f:
          f.write(json.dumps({"kind": "diverged", "step": 15}) + "\n")
    study_lib.save_study(_study(
        arms={arm: {} for arm in finals}, seeds=[1000],
        baseline=next(iter(finals)), metric="val_accuracy",
        families={"sgd": list(finals)}), str(tmp_path / folder))
  chosen = edge_study.select(str(tmp_path / "edge"), str(tmp_path / "stage1"))
  assert chosen["finals"]["sgd-lr0.8-m0.9"] == "diverged"
  assert chosen["selection"]["sgd"] == {
      "winner": "sgd-lr0.2-m0.9", "value": 0.74, "complete": True,
      "edge": None}


@pytest.mark.parametrize("losses, winner, edge", [
    ({"adamw-lr0.001-b0.9": 1.50, "adamw-lr0.002-b0.9": 1.40,
      "adamw-lr0.004-b0.9": 1.45}, "adamw-lr0.002-b0.9", None),
    ({"adamw-lr0.001-b0.9": 1.30, "adamw-lr0.002-b0.9": 1.40,
      "adamw-lr0.004-b0.9": 1.45}, "adamw-lr0.001-b0.9", "smallest"),
    ({"adamw-lr0.001-b0.9": 1.50, "adamw-lr0.002-b0.9": 1.40,
      "adamw-lr0.004-b0.9": 1.40}, "adamw-lr0.002-b0.9", None),
    ({"adamw-lr0.001-b0.9": 1.50, "adamw-lr0.002-b0.9": 1.40,
      "adamw-lr0.004-b0.9": 1.30}, "adamw-lr0.004-b0.9", "largest"),
])
def test_a_tuning_pick_on_either_edge_leaves_the_grid_unfinished(
    tmp_path, capsys, losses, winner, edge):
  """`study.tuning`: the lowest loss wins (a tie to the lower rate), and a
  winner at the smallest or largest rate asks for more of the grid."""
  for arm, loss in losses.items():
    _fake_run(tmp_path, arm, 1000, [2.0, loss], metric="val_loss")
  study_lib.save_study(_study(
      arms={arm: {} for arm in losses}, seeds=[1000], baseline=winner,
      metric="val_loss", families={"adamw": list(losses)}), str(tmp_path))
  chosen = tuning.select([str(tmp_path)])
  assert chosen["selection"]["adamw"]["winner"] == winner
  assert chosen["selection"]["adamw"]["edge"] == edge
  assert tuning.print_selection(chosen, "{:.2f}".format) == (1 if edge else 0)
  assert f"winner: {winner}" in capsys.readouterr().out


@pytest.mark.parametrize("study, command", [
    ("shakespeare_tuning", "select"), ("shakespeare_pilot", "plan"),
    ("shakespeare_confirm", "derive")])
def test_a_study_files_command_on_a_missing_folder_is_a_one_line_error(
    tmp_path, study, command):
  script = os.path.join(REPO, "study", "studies", f"{study}.py")
  result = subprocess.run(
      [sys.executable, script, command, str(tmp_path / "none")],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert result.stderr.startswith("error: ") and "study.json" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def _shakespeare_stage_1(workdir, loss_of) -> ml_collections.ConfigDict:
  """A finished stage 1 of the Shakespeare study: every arm's one run with
  the final val_loss ``loss_of(family, rate index, second-axis index)``, or
  none while that is None (a run pending)."""
  stage_1 = study_lib.load_study("shakespeare_tuning")
  study_lib.save_study(stage_1, str(workdir))
  for family, members in stage_1.families.items():
    rates = sorted({tuning.learning_rate(arm) for arm in members})
    for arm in members:
      rate = rates.index(tuning.learning_rate(arm))
      second = [a for a in members
                if tuning.learning_rate(a) == rates[rate]].index(arm)
      loss = loss_of(family, rate, second)
      if loss is not None:  # LCAM's and AdamW's runs record the phases.
        _fake_run(workdir, arm, 1000, [3.0, loss], metric="val_loss",
                  optimizer="lcam" if family == "lcam" else "sgd",
                  loss_control="b1" if family == "lc_adamw" else "")
  return stage_1




def test_the_shakespeare_pilot_runs_stage_ones_winners_unchanged(tmp_path):
  """The pilot's arms are stage 1's picks with stage 1's overrides, five new
  seeds, scored on validation only."""
  stage_1 = _shakespeare_stage_1(tmp_path, _inside_the_grids)
  pilot = study_lib.load_study(f"shakespeare_pilot:{tmp_path}")
  assert set(pilot.arms) == {"sgd-lr0.2-m0.9", "lcam-lr0.2-0.95/0.9",
                             "adamw-lr0.002-b0.9", "lc_adamw-lr0.002-0.9/0.95"}
  assert pilot.seeds == [2000, 2001, 2002, 2003, 2004]
  assert (pilot.metric, pilot.metric_direction) == ("val_loss", "lower")
  for arm in pilot.arms:
    config = study_lib.run_config(pilot, arm, 2000)
    assert config == study_lib.run_config(stage_1, arm, 2000)
    assert not config.data.eval_test


@pytest.mark.parametrize("loss_of, reason", [
    (lambda family, rate, second: 1.5 + 0.01 * rate, "sit at the grid's edge"),
    (lambda family, rate, second: None if family == "lcam" and rate == 2
     else 1.5 + 0.01 * abs(rate - 1), "lcam is not final"),
])
def test_the_shakespeare_pilot_waits_for_a_final_stage_1(tmp_path, loss_of,
                                                         reason):
  _shakespeare_stage_1(tmp_path, loss_of)
  with pytest.raises(study_lib.StudyError, match=reason):
    study_lib.load_study(f"shakespeare_pilot:{tmp_path}")
  with pytest.raises(study_lib.StudyError, match=r"no study\.json"):
    study_lib.load_study(f"shakespeare_pilot:{tmp_path / 'none'}")


def _inside_the_grids(family, rate, second):
  """Stage 1's losses with every winner at the second rate: sgd-lr0.2-m0.9,
  lcam-lr0.2-0.95/0.9, adamw-lr0.002-b0.9, lc_adamw-lr0.002-0.9/0.95."""
  return 1.5 + 0.01 * abs(rate - 1) + 0.001 * (
      second if family != "lc_adamw" else 1 - second)


def _pilot_summary(tmp_path, spreads) -> dict:
  """The summary of a finished pilot whose arms' final val_loss spread by
  ``spreads[family]`` around 1.5 (five seeds each)."""
  arms = {"sgd": "sgd-lr0.2-m0.9", "lcam": "lcam-lr0.2-0.95/0.9",
          "adamw": "adamw-lr0.002-b0.9",
          "lc_adamw": "lc_adamw-lr0.002-0.9/0.95"}
  offsets = (-2, -1, 0, 1, 2)
  for family, arm in arms.items():
    for seed, offset in zip(range(2000, 2005), offsets):
      _fake_run(tmp_path, arm, seed, [3.0, 1.5 + spreads[family] * offset],
                metric="val_loss")
  study_lib.save_study(_study(
      arms={arm: {} for arm in arms.values()}, seeds=list(range(2000, 2005)),
      baseline=arms["adamw"], metric="val_loss"), str(tmp_path))
  summary, _ = study_report.summarize(str(tmp_path))
  return summary


def test_the_shakespeare_pilot_sizes_stage_2_by_its_registered_rule(tmp_path):
  pilot = _study_module("shakespeare_pilot")
  sd_of_unit = np.std([-2, -1, 0, 1, 2], ddof=1)
  # SGD's arms spread by 0.004 nats, AdamW's by 0.002: SGD's count rules.
  summary = _pilot_summary(tmp_path / "narrow", {
      "sgd": 0.004 / sd_of_unit, "lcam": 0.004 / sd_of_unit,
      "adamw": 0.002 / sd_of_unit, "lc_adamw": 0.002 / sd_of_unit})
  plan = pilot.stage_2_plan(summary)
  assert plan["families"]["SGD"]["sd"] == pytest.approx(0.004, rel=1e-3)
  assert plan["families"]["SGD"]["degrees_of_freedom"] == 8
  expected = max(statistics.seeds_for_equivalence(0.01 / 0.004, "welch",
                                                  alpha=0.025),
                 statistics.seeds_for_power(0.01 / 0.004, "welch",
                                            alpha=0.025), 10)
  assert (plan["margin"], plan["seeds"]) == (0.01, expected)
  # A spread that needs more than 16 seeds at ±0.01 widens the margin.
  summary = _pilot_summary(tmp_path / "wide", dict.fromkeys(
      ("sgd", "lcam", "adamw", "lc_adamw"), 0.01 / sd_of_unit))
  plan = pilot.stage_2_plan(summary)
  assert plan["margin"] > 0.01 and plan["seeds"] <= 16
  narrower = plan["margin"] - pilot.MARGIN_STEP
  assert max(statistics.seeds_for_equivalence(narrower / 0.01, "welch",
                                              alpha=0.025),
             statistics.seeds_for_power(narrower / 0.01, "welch",
                                        alpha=0.025)) > 16


def test_shakespeare_stage_2_derives_its_eight_arms_margin_and_seeds(
    tmp_path):
  """Stage 2 is registered by rule: stage 1's winners and their measured
  phases, the pilot's margin and seeds."""
  stage_1 = _shakespeare_stage_1(tmp_path / "tuning", _inside_the_grids)
  pilot_dir = tmp_path / "pilot"
  with pytest.raises(study_lib.StudyError, match=r"no study\.json"):
    study_lib.load_study(f"shakespeare_confirm:{tmp_path / 'tuning'},"
                         f"{pilot_dir}")
  sd_of_unit = np.std([-2, -1, 0, 1, 2], ddof=1)
  _pilot_summary(pilot_dir, dict.fromkeys(("sgd", "lcam", "adamw",
                                           "lc_adamw"), 0.006 / sd_of_unit))
  study = study_lib.load_study(
      f"shakespeare_confirm:{tmp_path / 'tuning'},{pilot_dir}")
  pilot = _study_module("shakespeare_pilot")
  plan = pilot.stage_2_plan(study_report.summarize(str(pilot_dir))[0])
  assert study.seeds == list(range(plan["seeds"])) and plan["seeds"] >= 10
  assert study.equivalence_margin == 0.01
  assert (study.metric, study.metric_direction, study.primary_test,
          study.primary_comparisons) == ("test_loss", "lower", "welch", 2)
  assert [tuple(c) for c in study.comparisons[:2]] == [
      ("b-lcam", "a-sgd"), ("f-lc-adamw", "e-adamw")]
  configs = {arm: study_lib.run_config(study, arm, 0) for arm in study.arms}
  assert all(c.data.eval_test for c in configs.values())
  winners = {"a-sgd": "sgd-lr0.2-m0.9", "b-lcam": "lcam-lr0.2-0.95/0.9",
             "e-adamw": "adamw-lr0.002-b0.9",
             "f-lc-adamw": "lc_adamw-lr0.002-0.9/0.95"}
  for arm, winner in winners.items():
    tuned = study_lib.run_config(stage_1, winner, 0)
    tuned.data.eval_test = True
    assert configs[arm] == tuned
  # The fake tuning runs spent half of each of their 2 epochs below.
  c, d = configs["c-sgd-mean-step"], configs["d-lcam-random-phases"]
  assert c.optimizer.momentum == round(1 - 1 / (0.5 / 0.05 + 0.5 / 0.1), 4)
  assert (c.optimizer.name, c.schedule.learning_rate,
          c.optimizer.weight_decay) == ("sgd", 0.2, 5e-4)
  assert (d.optimizer.phases, tuple(d.optimizer.below_probability)) == (
      "random", (0.5, 0.5))
  g, h = configs["g-adamw-mean-b1"], configs["h-lc-adamw-random-phases"]
  assert (g.optimizer.name, g.optimizer.b1, g.optimizer.loss_control,
          g.schedule.learning_rate) == ("adamw", 0.925, "", 0.002)
  assert (h.optimizer.loss_control, h.optimizer.phases) == (
      configs["f-lc-adamw"].optimizer.loss_control, "random")
  # The placebo of loss-controlled AdamW builds and steps.
  optimizer = optimizers.create_optimizer(h.optimizer, 1e-3,
                                          steps_per_epoch=3, seed=0)
  params = {"w": np.ones(3, np.float32)}
  updates, _ = optimizer.update(params, optimizer.init(params), params,
                                value=np.float32(1.0))
  assert np.all(np.isfinite(updates["w"]))


def _fake_stage(best_rates, ran):
  """A stand-in for ``python -m study run SPEC --workdir DIR``: saves the
  study and writes each missing run, its final loss lowest at the family's
  ``best_rates`` (log-distance, then the arm's place in its family)."""
  def run(spec, workdir):
    ran.append(spec)
    study = study_lib.load_study(spec)
    study_lib.save_study(study, workdir)
    metric = study.get("metric", "test_accuracy")
    for index, arm in enumerate(study.arms):
      family = arm.split("-lr")[0]
      overrides = study.arms[arm]
      loss = 1.5 + 0.001 * index
      if family in best_rates:
        loss += 0.01 * abs(math.log2(tuning.learning_rate(arm)
                                     / best_rates[family]))
      for seed in study.seeds:
        if not os.path.isdir(study_lib.run_dir(workdir, arm, seed)):
          _fake_run(workdir, arm, seed, [3.0, loss + 1e-3 * (seed % 5)],
                    metric=metric,
                    optimizer=overrides.get("optimizer.name", "adamw"),
                    loss_control=overrides.get("optimizer.loss_control", ""))
    return 0
  return run


def test_the_shakespeare_campaign_extends_stage_1_then_runs_both_stages(
    tmp_path):
  """One command, the rule applied in order: the grid grows one rate past
  each edge winner, then the pilot and stage 2 read what came before."""
  confirm, ran = _study_module("shakespeare_confirm"), []
  best = {"sgd": 0.8, "lcam": 0.2, "adamw": 0.001, "lc_adamw": 0.002}
  assert confirm.campaign(str(tmp_path), _fake_stage(best, ran)) == 0
  tuning_dir, pilot_dir = (str(tmp_path / "shakespeare_tuning"),
                           str(tmp_path / "shakespeare_pilot"))
  assert ran == ["shakespeare_tuning",
                 "shakespeare_tuning:sgd=1.6,adamw=0.0005",
                 f"shakespeare_pilot:{tuning_dir}",
                 f"shakespeare_confirm:{tuning_dir},{pilot_dir}"]
  saved = study_lib.read_study(str(tmp_path / "shakespeare_confirm"))
  assert saved.arms["a-sgd"]["schedule.learning_rate"] == 0.8
  assert saved.arms["e-adamw"]["schedule.learning_rate"] == 0.001
  # Run again, it finds every stage finished and runs each once more.
  ran.clear()
  assert confirm.campaign(str(tmp_path), _fake_stage(best, ran)) == 0
  assert ran == [f"shakespeare_pilot:{tuning_dir}",
                 f"shakespeare_confirm:{tuning_dir},{pilot_dir}"]


def test_the_shakespeare_campaign_stops_at_a_stage_that_did_not_finish(
    tmp_path):
  confirm, ran = _study_module("shakespeare_confirm"), []
  assert confirm.campaign(str(tmp_path), lambda spec, workdir: (
      ran.append(spec) or 75)) == 75
  assert ran == ["shakespeare_tuning"]
  # A stage that reports success but leaves its runs pending is a bug of
  # the runner, not a loop.
  with pytest.raises(ValueError, match="still asks for it"):
    confirm.campaign(str(tmp_path), lambda spec, workdir: study_lib.save_study(
        study_lib.load_study(spec), workdir) or 0)
