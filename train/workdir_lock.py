"""One run per workdir: an OS lock on ``DIR/.lock``, held for the run's life.

The lock is ``fcntl.flock``: the kernel releases it when its holder ends,
however it ends (a crash, SIGKILL), so a lock never outlives its run and
nothing has to be cleaned up. The file stays; it holds the holder's pid and
host, for the message to a second run. On a file system without locks (Lustre
mounted without ``-o flock``) the run goes on unprotected, with a warning.
"""

import contextlib
import fcntl
import os
import socket

from absl import logging

LOCK_FILENAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _holder(fd: int) -> str:
  """``" (pid 123 on host)"``, from the lock file; ``""`` if not written yet."""
  text = os.pread(fd, 200, 0).decode(errors="replace").strip()
  return f" ({text})" if text else ""


def _lock(fd: int, workdir: str) -> bool:
  """Takes the lock of ``fd`` without waiting.

  Returns:
    True when taken; False when the file system has no locks.

  Raises:
    WorkdirBusyError: another process holds it.
  """
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise WorkdirBusyError(
        f"the workdir {workdir} is in use by another run{_holder(fd)}: wait "
        "for it to end, stop it, or choose another --workdir.") from None
  except OSError as e:  # ENOLCK, ENOSYS, EOPNOTSUPP: no locks here.
    logging.warning("Cannot lock the workdir %s (%s): nothing stops a second "
                    "run from using it at the same time.", workdir, e)
    return False
  return True


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the lock of ``workdir`` (made if missing) in the ``with`` body.

  Args:
    workdir: A run's directory.

  Raises:
    WorkdirBusyError: another live process holds it (in this process too: a
      second ``hold`` of the same workdir fails).
  """
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, LOCK_FILENAME), os.O_RDWR | os.O_CREAT,
               0o644)
  try:
    if _lock(fd, workdir):
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(),
                0)
    yield
  finally:
    os.close(fd)  # Releases the lock.
