"""Tests for train.record: reading a training workdir."""

import json

import numpy as np
import pytest

from train import record


def _write_lines(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _epoch(epoch, accuracy):
  return {"kind": "epoch", "epoch": epoch, "step": 10 * epoch,
          "train_loss": 1.0 / epoch, "test_accuracy": accuracy}


def _make_run(root, name, config, records):
  workdir = root / name
  workdir.mkdir()
  if config is not None:
    (workdir / record.CONFIG_FILENAME).write_text(json.dumps(config))
  _write_lines(workdir / record.METRICS_FILENAME, records)
  return workdir


def test_the_file_names_of_a_workdir():
  assert (record.CONFIG_FILENAME, record.CHECKPOINTS_DIRNAME) == (
      "config.json", "checkpoints")


def test_load_run_reads_config_and_deduplicated_epochs(tmp_path):
  resumed = _epoch(2, 0.99)  # A resumed run logs epoch 2 again.
  workdir = _make_run(tmp_path, "run", {"seed": 3},
                      [_epoch(1, 0.5), _epoch(2, 0.6), _epoch(3, 0.7), resumed])
  run = record.load_run(workdir)
  assert run.name == "run" and run.config == {"seed": 3}
  epochs, accuracy = run.curve("test_accuracy")
  np.testing.assert_array_equal(epochs, [1, 2, 3])
  np.testing.assert_allclose(accuracy, [0.5, 0.99, 0.7])
  _, missing = run.curve("no_such_field")
  assert np.all(np.isnan(missing))
  # The metrics file names its workdir too.
  assert record.load_run(workdir / record.METRICS_FILENAME).name == "run"


def test_load_run_rejects_a_directory_without_metrics(tmp_path):
  with pytest.raises(record.NotARunError, match="not a training workdir"):
    record.load_run(tmp_path)
  with pytest.raises(record.NotARunError, match="does not exist"):
    record.load_run(tmp_path / "missing")


def test_read_config_is_empty_without_a_config(tmp_path):
  assert record.read_config(tmp_path) == {}
  (tmp_path / record.CONFIG_FILENAME).write_text('{"model": ')
  with pytest.raises(ValueError):
    record.read_config(tmp_path)


def test_load_runs_drops_repeats_and_runs_without_an_epoch(tmp_path):
  done = _make_run(tmp_path, "done", None, [_epoch(1, 0.5)])
  starting = _make_run(tmp_path, "starting", None,
                       [{"kind": "train", "step": 1, "loss": 2.3}])
  loaded, labels, skipped = record.load_runs([done, starting, done],
                                           ["a", "b", "c"])
  assert [run.name for run in loaded] == ["done"] and labels == ["a"]
  assert skipped == [str(starting)]
  with pytest.raises(ValueError, match="labels"):
    record.load_runs([done], ["a", "b"])


def test_a_run_holds_every_start(tmp_path):
  start = {"kind": "run", "step": 0, "commit": "abc"}
  workdir = _make_run(tmp_path, "run", None, [start, _epoch(1, 0.5), start])
  with open(workdir / record.METRICS_FILENAME, "a") as f:
    f.write('{"kind": "run", "ste')  # A killed run's last line.
  run = record.load_run(workdir)
  assert list(run.all_starts) == [start, start]
  assert len(run.starts) == 1  # One per step.


def test_differences_compare_every_value_but_the_timings(tmp_path, capsys):
  from study import cli  # pylint: disable=g-import-not-at-top
  steps = [{"kind": "train", "step": s, "loss": 1.0 / s,
            "images_per_sec": 100.0 + s} for s in (1, 2, 3)]
  a = _make_run(tmp_path, "a", {}, steps + [dict(_epoch(1, 0.5),
                                                 epoch_time_s=3.0)])
  slower = [dict(r, images_per_sec=1.0) for r in steps]
  b = _make_run(tmp_path, "b", {}, slower + [dict(_epoch(1, 0.5),
                                                  epoch_time_s=9.0)])
  assert record.differences(a, b) == (14, [])
  changed = _make_run(tmp_path, "c", {}, slower[:2] + [
      dict(slower[2], loss=0.3)])
  compared, found = record.differences(a, changed)
  assert compared == 14
  assert found == ["train step 3 loss: 0.3333333333333333 against 0.3",
                   "epoch step 10 epoch: 1 against missing",
                   "epoch step 10 kind: epoch against missing",
                   "epoch step 10 step: 10 against missing",
                   "epoch step 10 test_accuracy: 0.5 against missing",
                   "epoch step 10 train_loss: 1.0 against missing"]
  assert record.differences(a, changed, until_step=2) == (6, [])
  assert cli.main(["compare", str(a), str(b)]) == 0
  assert cli.main(["compare", str(a), str(changed)]) == 1
  assert capsys.readouterr().out.endswith("14 values compared, 6 differ.\n")
