"""Tests for train.progress: progress off a terminal, stopping on a signal."""

import io
import os
import signal

import pytest

from train import progress as progress_lib
from train import signals


def test_progress_off_a_terminal_is_a_line_every_tenth_of_the_epoch():
  stream = io.StringIO()
  progress = progress_lib.Progress(100, stream=stream)
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
  progress = progress_lib.Progress(10, enabled=False, stream=stream)
  progress.start_epoch(1, 0)
  progress.update(10, {"loss": 1.0})
  progress.end_epoch()
  assert not stream.getvalue()


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_repeated_sigterm_changes_nothing_and_a_second_ctrl_c_interrupts(
    first):
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  received = []
  for signum in previous:
    signal.signal(signum, lambda signum, frame: received.append(signum))
  try:
    with signals.StopOnSignals() as stop:
      assert stop.signum is None
      os.kill(os.getpid(), first)
      assert stop.signum == first and not received
      os.kill(os.getpid(), signal.SIGTERM)  # A batch system's second word.
      assert stop.signum == first and not received
      with pytest.raises(KeyboardInterrupt):  # Ctrl-C again: at once,
        os.kill(os.getpid(), signal.SIGINT)  # whatever was before.
      assert not received
    os.kill(os.getpid(), signal.SIGTERM)  # Both handlers are back.
    os.kill(os.getpid(), signal.SIGINT)
    assert received == [signal.SIGTERM, signal.SIGINT]
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
