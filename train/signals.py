"""Signals and process groups: how runs and studies stop, and are stopped.

`StopOnSignals` turns Ctrl-C (SIGINT) and SIGTERM into a request to stop
that the training loop and the study runner poll; `end_process_group` ends
a child started in its own session (a run of a study, a part of the
accelerator kit) with its children. Standard library only.
"""

from collections.abc import Sequence
import contextlib
import os
import signal
import subprocess
import threading


class StopOnSignals:
  """A context in which SIGINT and SIGTERM ask the loop to stop.

  The first signal sets `signum`; the loop stops after the step in flight,
  saves a checkpoint and raises. Then a second Ctrl-C raises
  KeyboardInterrupt at once. A repeated SIGTERM
  changes nothing: a batch system, or a study's runner on behalf of a batch
  system, may send it more than once, and it must not kill a run that is
  saving its checkpoint. Outside the main thread (where Python cannot handle
  signals) the context does nothing.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> "StopOnSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle)
                        for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum = self.signum or signum
    # A second Ctrl-C raises KeyboardInterrupt, even where SIGINT was
    # ignored before (a job started in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def _restore(self, *signums: int) -> None:
    """Gives ``signums`` (all by default) their handlers before the context."""
    for signum in signums or list(self._previous):
      if signum in self._previous:
        signal.signal(signum, self._previous.pop(signum))

  def __exit__(self, *exc_info) -> None:
    self._restore()


def end_process_group(process: subprocess.Popen,
                      steps: Sequence[tuple[int, float]] = (
                          (signal.SIGINT, 10.0), (signal.SIGKILL, 10.0))
                      ) -> None:
  """Ends a process started in its own session, and its children.

  Args:
    process: started with ``start_new_session=True``, so that its pid names
      its process group.
    steps: ``(signal, seconds)``: each signal is sent to the group, then the
      process is given that long to end before the next; a process that has
      ended stops the sequence.
  """
  for signum, wait_s in steps:
    if process.poll() is not None:
      return
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signum)
    try:
      process.wait(timeout=wait_s)
      return
    except subprocess.TimeoutExpired:
      continue
