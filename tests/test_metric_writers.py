"""Tests for train.metric_writers: metrics.jsonl, TensorBoard, progress."""

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX import record_writer
from tensorboardX.proto import event_pb2

from train import metric_writers


def _read_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return f.read().splitlines()


def _read_tfrecords(path):
  """Payloads of a TFRecord file, checking the framing and both CRCs."""
  with open(path, "rb") as f:
    data = f.read()
  payloads = []
  offset = 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    assert header_crc == record_writer.masked_crc32c(header)
    payload = data[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack(
        "<I", data[offset + 12 + length:offset + 16 + length])
    assert payload_crc == record_writer.masked_crc32c(payload)
    payloads.append(payload)
    offset += 16 + length
  assert offset == len(data)
  return payloads


def _read_scalars(workdir):
  """{(tag, step): value} of every scalar in the workdir's event files."""
  scalars = {}
  event_files = glob.glob(os.path.join(workdir, "tensorboard", "events.*"))
  assert event_files
  for path in event_files:
    for payload in _read_tfrecords(path):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def test_write_appends_flushed_json_lines_that_read_metrics_returns(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
  writer.write("train", 10, {
      "loss": np.float32(2.5), "beta": jnp.asarray(0.95, jnp.float32),
      "images_per_sec": 1234.5, "count": np.int64(7), "epoch": 0.25})
  writer.write("epoch", 40, {"epoch": 1, "train_loss": 2.0,
                             "test_accuracy": jnp.float32(0.5)})

  # Flushed: readable before close.
  lines = _read_lines(tmp_path)
  assert [json.loads(line)["kind"] for line in lines] == ["train", "epoch"]
  first = json.loads(lines[0])
  assert first["step"] == 10 and first["count"] == 7
  assert isinstance(first["count"], int)
  assert first["beta"] == pytest.approx(0.95)
  writer.close()

  metrics = metric_writers.read_metrics(tmp_path)
  assert set(metrics) == {"train", "epoch"}
  assert metrics["train"][0]["loss"] == 2.5
  assert metrics["epoch"][0] == {"kind": "epoch", "step": 40, "epoch": 1,
                                 "train_loss": 2.0, "test_accuracy": 0.5}


def test_non_finite_values_are_written_as_null(tmp_path):
  with metric_writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write("train", 1, {"loss": float("nan"), "grad": np.inf,
                              "beta": jnp.asarray(-jnp.inf)})
  (line,) = _read_lines(tmp_path)
  assert "NaN" not in line and "Infinity" not in line
  assert json.loads(line) == {"kind": "train", "step": 1, "loss": None,
                              "grad": None, "beta": None}


def test_to_json_value_conversions():
  assert metric_writers.to_json_value(np.bool_(True)) is True
  assert metric_writers.to_json_value(np.array([3], np.int32)) == 3
  assert isinstance(metric_writers.to_json_value(np.float16(0.5)), float)
  assert metric_writers.to_json_value(jnp.asarray(1.5, jnp.bfloat16)) == 1.5
  assert metric_writers.to_json_value("sgd") == "sgd"
  with pytest.raises(TypeError, match="must be a number"):
    metric_writers.to_json_value(np.zeros(3))


def test_reserved_names_and_closed_writer_raise(tmp_path):
  with metric_writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(ValueError, match="reserved"):
      writer.write("train", 1, {"step": 3})
  with pytest.raises(ValueError, match="closed"):
    writer.write("train", 2, {"loss": 1.0})
  writer.close()  # A second close is fine.


def test_read_metrics_keeps_last_record_per_step_and_sorts(tmp_path):
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
  metrics = metric_writers.read_metrics(path)  # A file path works too.
  assert [(r["step"], r["loss"]) for r in metrics["train"]] == [
      (10, 3.0), (20, 1.5)]
  assert [(r["epoch"], r["train_loss"]) for r in metrics["epoch"]] == [
      (1, 2.5), (2, 1.0)]


def test_read_metrics_skips_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n'
                  '{"kind": "train", "step": 2, "lo')
  metrics = metric_writers.read_metrics(tmp_path)
  assert [r["step"] for r in metrics["train"]] == [1]


def test_resumed_writer_does_not_glue_onto_a_truncated_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n'
                  '{"kind": "train", "step": 2, "lo')
  with metric_writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write("train", 2, {"loss": 1.0})
  with pytest.warns(UserWarning, match=r"unreadable lines \[2\]"):
    metrics = metric_writers.read_metrics(tmp_path)
  assert [(r["step"], r["loss"]) for r in metrics["train"]] == [
      (1, 2.0), (2, 1.0)]


def test_read_metrics_without_a_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    metric_writers.read_metrics(tmp_path)


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
  with metric_writers.MetricWriter(tmp_path) as writer:
    writer.write("train", 5, {"loss": np.float32(2.25), "beta": 0.9})
    writer.write("train", 10, {"loss": 1.5, "beta": 0.95, "note": "text"})
    writer.write("epoch", 10, {"epoch": 1, "test_accuracy": 0.125,
                               "test_loss": float("nan")})
  scalars = _read_scalars(tmp_path)
  assert scalars[("train/loss", 5)] == 2.25
  assert scalars[("train/loss", 10)] == 1.5
  assert scalars[("train/beta", 10)] == pytest.approx(0.95)
  assert scalars[("epoch/epoch", 10)] == 1.0
  assert scalars[("epoch/test_accuracy", 10)] == 0.125
  assert math.isnan(scalars[("epoch/test_loss", 10)])  # Divergence shows.
  assert not any(tag == "train/note" for tag, _ in scalars)


def test_purge_step_marks_a_restart_for_tensorboard(tmp_path):
  with metric_writers.MetricWriter(tmp_path, purge_step=20) as writer:
    writer.write("train", 20, {"loss": 1.0})
  restarts = []
  for path in glob.glob(os.path.join(tmp_path, "tensorboard", "events.*")):
    for payload in _read_tfrecords(path):
      event = event_pb2.Event.FromString(payload)
      if event.session_log.status == event_pb2.SessionLog.START:
        restarts.append(event.step)
  assert restarts == [20]


def test_tensorboard_false_writes_no_event_files(tmp_path):
  with metric_writers.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write("train", 1, {"loss": 1.0})
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def test_disabled_writer_creates_nothing(tmp_path):
  workdir = tmp_path / "run"
  with metric_writers.MetricWriter(workdir, enabled=False) as writer:
    writer.write("train", 1, {"loss": 1.0})
    writer.flush()
  assert not writer.enabled
  assert not workdir.exists()
  assert not os.listdir(tmp_path)


class _FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class _Stream(io.StringIO):

  def __init__(self, is_terminal):
    super().__init__()
    self._is_terminal = is_terminal

  def isatty(self):
    return self._is_terminal


def _run_epoch(progress, clock, total_steps, seconds_per_step):
  for step in range(1, total_steps + 1):
    clock.now += seconds_per_step
    progress.update(step, loss=1.0 / step, beta=0.9)
  progress.close()


def test_progress_on_a_terminal_redraws_one_throttled_line():
  stream, clock = _Stream(is_terminal=True), _FakeClock()
  progress = metric_writers.Progress(100, 3, stream=stream, clock=clock)
  _run_epoch(progress, clock, total_steps=100, seconds_per_step=0.02)
  output = stream.getvalue()
  # 2 s at most 10 redraws per second: the first step, ~20 more, the last.
  assert 10 <= output.count("\r") <= 23
  assert output.count("\n") == 1 and output.endswith("\n")
  last_line = output.rstrip("\n").rsplit("\r", 1)[-1]
  assert last_line.startswith("epoch 3 [100/100 100%]")
  assert "loss 0.01" in last_line and "beta 0.9" in last_line
  assert "took 0:02" in last_line


def test_progress_off_a_terminal_prints_a_line_every_tenth_of_the_epoch():
  stream, clock = _Stream(is_terminal=False), _FakeClock()
  progress = metric_writers.Progress(100, 1, stream=stream, clock=clock)
  _run_epoch(progress, clock, total_steps=100, seconds_per_step=0.02)
  output = stream.getvalue()
  assert "\r" not in output
  lines = output.splitlines()
  assert [line.split("[")[1].split("/")[0].strip() for line in lines] == [
      str(step) for step in range(10, 101, 10)]
  assert "eta" in lines[0] and "took" in lines[-1]


def test_progress_off_a_terminal_prints_a_line_every_n_seconds():
  stream, clock = _Stream(is_terminal=False), _FakeClock()
  progress = metric_writers.Progress(
      10, 1, stream=stream, clock=clock, every_n_seconds=30.0,
      every_fraction=1.0)
  _run_epoch(progress, clock, total_steps=10, seconds_per_step=10.0)
  steps = [line.split("[")[1].split("/")[0].strip()
           for line in stream.getvalue().splitlines()]
  assert steps == ["3", "6", "9", "10"]


def test_progress_shows_images_per_second_and_eta():
  stream, clock = _Stream(is_terminal=False), _FakeClock()
  progress = metric_writers.Progress(
      100, 1, stream=stream, clock=clock, batch_size=128)
  clock.now = 5.0  # Compiling the first step is slow...
  progress.update(1, loss=2.0)
  clock.now = 6.0  # ...then 10 steps per second.
  line = progress.format_line(clock.now, 11, {"loss": 2.0})
  assert line == "epoch 1 [ 11/100  11%]  loss 2  img/s 1280  eta 0:09"


def test_progress_close_after_an_interrupted_epoch_shows_the_last_step():
  stream, clock = _Stream(is_terminal=False), _FakeClock()
  progress = metric_writers.Progress(100, 1, stream=stream, clock=clock)
  clock.now = 1.0
  progress.update(4, loss=1.0)
  progress.close()
  progress.close()
  (line,) = stream.getvalue().splitlines()
  assert line.startswith("epoch 1 [  4/100   4%]") and "took 0:01" in line


def test_disabled_progress_writes_nothing():
  stream, clock = _Stream(is_terminal=True), _FakeClock()
  progress = metric_writers.Progress(
      10, 1, stream=stream, clock=clock, enabled=False)
  _run_epoch(progress, clock, total_steps=10, seconds_per_step=1.0)
  assert not stream.getvalue()


def test_progress_detects_a_terminal_from_the_stream():
  stream = _Stream(is_terminal=True)
  progress = metric_writers.Progress(2, 1, stream=stream)
  progress.update(1, loss=1.0)
  assert stream.getvalue().startswith("\r")
