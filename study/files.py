"""Files a study writes, written whole or not at all.

Every file the runner and the summary write (``study.json``,
``failure.txt``, ``summary.json``, ``summary.md``, figures) goes through
`write_atomically`: it is written to a temporary file beside its place and
renamed over it, so a reader sees the old file or the new one, never a part,
and a write that fails (a full disk, a read-only folder) leaves the old file
and raises `WriteError`, whose message is one line naming the file.
"""

from collections.abc import Callable
import contextlib
import os
import tempfile
from typing import BinaryIO


class WriteError(OSError):
  """A file of the study could not be written; the old one is kept."""

  def __str__(self) -> str:
    return str(self.strerror)


def write_atomically(path: str, content: str | bytes | Callable[[BinaryIO],
                                                               None]) -> None:
  """Writes ``content`` to ``path`` whole, or leaves ``path`` as it was.

  Args:
    path: the file.
    content: text (written as UTF-8), bytes, or a function that writes into
      the binary file it is given (e.g. a figure's ``savefig``).

  Raises:
    WriteError: the file could not be written, in one line.
  """
  folder = os.path.dirname(os.path.abspath(path))
  temporary = None
  try:
    with tempfile.NamedTemporaryFile(
        "wb", dir=folder, prefix=f".{os.path.basename(path)}.",
        suffix=".tmp", delete=False) as f:
      temporary = f.name
      if callable(content):
        content(f)
      else:
        f.write(content.encode() if isinstance(content, str) else content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as error:
    if temporary is not None:
      with contextlib.suppress(OSError):
        os.remove(temporary)
    raise WriteError(error.errno, f"could not write {path} "
                     f"({error.strerror or error}); the old file, if any, "
                     "is kept") from error
