"""Tests for train.record: metrics.jsonl and TensorBoard."""

import json
import logging
import os
import struct
import sys
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from train import record


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _event_pb2():
  return pytest.importorskip("tensorboardX.proto.event_pb2")


def _events(workdir):
  """The events of the workdir's TensorBoard files (TFRecords: length,
  length CRC, event, event CRC)."""
  event_pb2 = _event_pb2()
  events = []
  directory = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      content = f.read()
    offset = 0
    while offset < len(content):
      (length,) = struct.unpack("<Q", content[offset:offset + 8])
      events.append(event_pb2.Event.FromString(
          content[offset + 12:offset + 12 + length]))
      offset += 16 + length
  return events


def test_records_are_flushed_json_lines_that_read_metrics_returns(tmp_path):
  writer = record.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write("train", 10, {
      "loss": np.float32(2.5), "beta": jnp.asarray(0.95, jnp.bfloat16),
      "count": np.int64(7), "nan": float("nan"), "inf": jnp.inf})
  writer.write("epoch", 40, {"epoch": 1, "test_accuracy": jnp.float32(0.5)})
  # Flushed: readable before close; non-finite numbers are null.
  assert _lines(tmp_path) == [
      {"kind": "train", "step": 10, "loss": 2.5, "beta": 0.94921875,
       "count": 7, "nan": None, "inf": None},
      {"kind": "epoch", "step": 40, "epoch": 1, "test_accuracy": 0.5}]
  writer.close()
  metrics = record.read_metrics(str(tmp_path))
  assert metrics["train"][0]["loss"] == 2.5
  assert metrics["epoch"] == [{"kind": "epoch", "step": 40, "epoch": 1,
                               "test_accuracy": 0.5}]


def test_kind_and_step_are_reserved(tmp_path):
  with (record.MetricWriter(str(tmp_path), tensorboard=False) as w,
        pytest.raises(ValueError, match="reserved")):
    w.write("train", 1, {"step": 3})


def test_read_metrics_keeps_the_last_record_of_a_step_and_sorts(tmp_path):
  lines = [
      {"kind": "train", "step": 20, "loss": 2.0},
      {"kind": "train", "step": 10, "loss": 3.0},
      {"kind": "epoch", "step": 20, "epoch": 1, "train_loss": 9.0},
      # Resumed from the checkpoint at step 10: step 20 and epoch 1 again.
      {"kind": "train", "step": 20, "loss": 1.5},
      {"kind": "epoch", "step": 20, "epoch": 1, "train_loss": 2.5},
      {"kind": "epoch", "step": 40, "epoch": 2, "train_loss": 1.0},
  ]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  metrics = record.read_metrics(str(path))  # A file path works too.
  assert [(r["step"], r["loss"]) for r in metrics["train"]] == [
      (10, 3.0), (20, 1.5)]
  assert [(r["epoch"], r["train_loss"]) for r in metrics["epoch"]] == [
      (1, 2.5), (2, 1.0)]


def test_a_truncated_line_is_skipped_and_a_resumed_writer_ends_it(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n'
                  '{"kind": "train", "step": 2, "lo')
  assert [r["step"] for r in record.read_metrics(str(path))[
      "train"]] == [1]
  with record.MetricWriter(str(tmp_path), tensorboard=False) as w:
    w.write("train", 2, {"loss": 1.0})
  with pytest.warns(UserWarning, match=r"unreadable lines \[2\]"):
    metrics = record.read_metrics(str(tmp_path))
  assert [(r["step"], r["loss"]) for r in metrics["train"]] == [
      (1, 2.0), (2, 1.0)]


def test_read_metrics_without_a_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"metrics.jsonl"):
    record.read_metrics(str(tmp_path))


def test_tensorboard_gets_each_number_as_a_kind_slash_name_scalar(tmp_path):
  _event_pb2()
  with record.MetricWriter(str(tmp_path)) as writer:
    writer.write("train", 5, {"loss": np.float32(2.25), "note": "text"})
    writer.write("epoch", 10, {"test_loss": float("nan")})
  scalars = {(v.tag, e.step): v.simple_value for e in _events(tmp_path)
             for v in e.summary.value}
  assert scalars.keys() == {("train/loss", 5), ("epoch/test_loss", 10)}
  assert scalars[("train/loss", 5)] == 2.25
  assert np.isnan(scalars[("epoch/test_loss", 10)])  # A divergence shows.


def test_a_resumed_run_keeps_the_tensorboard_points_of_its_restart_step(
    tmp_path):
  # The first run logged steps 5 and 6 and was resumed from step 6: the
  # resumed run logs from step 7 on, so TensorBoard hides steps >= 7 only.
  event_pb2 = _event_pb2()
  with record.MetricWriter(str(tmp_path)) as writer:
    for step in (5, 6, 7):
      writer.write("train", step, {"loss": 1.0})
  with record.MetricWriter(str(tmp_path), resume_step=6) as writer:
    writer.write("train", 7, {"loss": 0.5})
  restarts = [e.step for e in _events(tmp_path)
              if e.session_log.status == event_pb2.SessionLog.START]
  assert restarts == [7]


def test_without_tensorboardx_only_metrics_jsonl_is_written(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  with (caplog.at_level(logging.WARNING),
        record.MetricWriter(str(tmp_path)) as writer):
    writer.write("train", 1, {"loss": 1.0})
  assert [r.getMessage() for r in caplog.records] == [
      "tensorboardX is not installed: no TensorBoard events (metrics.jsonl "
      "has every metric)."]
  assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_disabled_writer_creates_nothing(tmp_path):
  workdir = tmp_path / "run"
  with record.MetricWriter(str(workdir), enabled=False) as writer:
    writer.write("train", 1, {"loss": 1.0})
  assert not workdir.exists()


def test_close_on_a_full_disk_stops_tensorboards_thread(tmp_path,
                                                        monkeypatch):
  event_file_writer = pytest.importorskip("tensorboardX.event_file_writer")
  writer = record.MetricWriter(str(tmp_path))
  writer.write("train", 1, {"loss": 1.0})

  def full_disk(*unused_args):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(event_file_writer.EventsWriter, "flush", full_disk)
  writer.close()  # Warns: metrics.jsonl, not TensorBoard, is the record.
  assert not [t for t in threading.enumerate()
              if isinstance(t, event_file_writer._EventLoggerThread)]
  assert _lines(tmp_path) == [{"kind": "train", "step": 1, "loss": 1.0}]
