"""What the training loop shows between steps: an epoch's progress.

`Progress` shows it with the loss and the images per second: a bar on a
terminal, a few plain lines in a log.
"""

import sys
from typing import TextIO

from rich import console as rich_console
from rich import progress as rich_progress


def format_stats(stats: dict[str, float]) -> str:
  """``"loss 1.235  beta 0.95  img/s 2346"`` (what the progress shows).

  >>> format_stats({"loss": 1.234567, "images_per_sec": 2345.6})
  'loss 1.235  img/s 2346'
  """
  names = {"images_per_sec": "img/s", "tokens_per_sec": "char/s"}
  return "  ".join(f"{names.get(k, k)} {v:.4g}" if abs(v) < 1000 else
                   f"{names.get(k, k)} {v:.0f}" for k, v in stats.items())


class Progress:
  """An epoch's progress: a rich bar on a terminal, else a few plain lines.

  Off a terminal (a log file, a batch system's output) a line is printed
  each time another tenth of the epoch is done, so a log holds about ten
  lines an epoch, not the redraws of a bar.
  """

  def __init__(self, steps_per_epoch: int, *, enabled: bool = True,
               stream: TextIO | None = None):
    self._steps = steps_per_epoch
    self._enabled = enabled
    self._stream = stream or sys.stderr
    console = rich_console.Console(file=self._stream)
    self._bar = None
    if enabled and console.is_terminal:
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn("epoch {task.fields[epoch]}"),
          rich_progress.BarColumn(), rich_progress.MofNCompleteColumn(),
          rich_progress.TimeRemainingColumn(elapsed_when_finished=True),
          rich_progress.TextColumn("{task.fields[stats]}"), console=console)
    self._epoch = self._task = self._shown = None

  def start_epoch(self, epoch: int, steps_done: int) -> None:
    """Starts showing epoch ``epoch`` (1-based), ``steps_done`` steps in."""
    self._epoch, self._shown = epoch, steps_done * 10 // self._steps
    if self._bar is not None:
      self._task = self._bar.add_task("", total=self._steps,
                                      completed=steps_done, epoch=epoch,
                                      stats="")
      self._bar.start()

  def update(self, steps_done: int, stats: dict[str, float]) -> None:
    """Shows that ``steps_done`` steps of the epoch are done."""
    if self._bar is not None:
      self._bar.update(self._task, completed=steps_done,
                       stats=format_stats(stats))
    elif self._enabled and steps_done * 10 // self._steps > self._shown:
      self._shown = steps_done * 10 // self._steps
      print(f"epoch {self._epoch} step {steps_done}/{self._steps}  "
            f"{format_stats(stats)}", file=self._stream, flush=True)

  def end_epoch(self) -> None:
    if self._bar is not None and self._task is not None:
      self._bar.stop()
      self._bar.remove_task(self._task)
      self._task = None
