"""Tests for train.periodic: progress off a terminal, stopping on a signal."""

import io
import os
import signal

from train import periodic


def test_progress_off_a_terminal_is_a_line_every_tenth_of_the_epoch():
  stream = io.StringIO()
  progress = periodic.Progress(100, stream=stream)
  for epoch, start in ((1, 0), (2, 37)):  # The second epoch is resumed.
    progress.start_epoch(epoch, start)
    for step in range(start + 1, 101):
      progress.update(step, {"loss": 1.0 / step, "images_per_sec": 2345.6})
    progress.end_epoch()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert lines[0] == "epoch 1 step 10/100  loss 0.1  img/s 2346"
  assert [line.split()[3] for line in lines] == (
      [f"{s}/100" for s in range(10, 101, 10)]
      + [f"{s}/100" for s in range(40, 101, 10)])


def test_disabled_progress_prints_nothing():
  stream = io.StringIO()
  progress = periodic.Progress(10, enabled=False, stream=stream)
  progress.start_epoch(1, 0)
  progress.update(10, {"loss": 1.0})
  progress.end_epoch()
  assert not stream.getvalue()


def test_a_signal_is_recorded_and_a_second_one_acts_as_before():
  previous = signal.getsignal(signal.SIGTERM)
  received = []
  signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    with periodic.StopOnSignals() as stop:
      assert stop.signum is None
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.signum == signal.SIGTERM and not received
      os.kill(os.getpid(), signal.SIGTERM)  # The handler before takes it.
      assert received == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)
