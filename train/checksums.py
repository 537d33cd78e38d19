"""A checkpoint's checksums: ``checksums.json``, the size and SHA-256 of
every file of its items.

`train.checkpoints` writes them in Orbax's background thread once the files of
the items (``state/``, ``meta/``) are written and before the checkpoint is
committed, so a committed checkpoint always has them (Orbax's own files at
the top of the step directory, which it rewrites when it commits, are not
covered), and verifies them before it restores. SHA-256 runs at 1.4 GB/s on
a core with the SHA extensions (measured here, against 0.6 GB/s for
BLAKE2b), releases the GIL while it hashes, and ``sha256sum`` can check a
file by hand.
"""

import hashlib
import json
import os
import tempfile

FILENAME = "checksums.json"
FORMAT = "optax-lcam checkpoint checksums"
VERSION = 1


class ChecksumError(RuntimeError):
  """A file is missing, has another size or SHA-256, or the checksum file
  cannot be read."""


class NewerFormatError(ValueError):
  """The checksum file has a format that this version cannot read."""


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _item_files(step_dir: str) -> list[str]:
  """The files of a checkpoint's items, relative to its directory, sorted."""
  files = []
  for item in sorted(os.listdir(step_dir)):
    if not os.path.isdir(os.path.join(step_dir, item)):
      continue
    for root, _, names in os.walk(os.path.join(step_dir, item)):
      files += [os.path.relpath(os.path.join(root, name), step_dir)
                for name in names]
  return sorted(files)


def _write_atomically(path: str, text: str) -> None:
  """Writes ``text`` into a temporary file beside ``path``, then renames it."""
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path),
                                       prefix=".tmp-")
  try:
    with os.fdopen(handle, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write(step_dir: str) -> None:
  """Writes ``step_dir/checksums.json``: size and SHA-256 of each item file.

  The format (``version`` 1)::

    {"format": "optax-lcam checkpoint checksums", "version": 1,
     "algorithm": "sha256",
     "files": {"state/_METADATA": {"size": 23151, "sha256": "..."}, ...}}
  """
  files = {}
  for name in _item_files(step_dir):
    path = os.path.join(step_dir, name)
    files[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  _write_atomically(os.path.join(step_dir, FILENAME), json.dumps(
      {"format": FORMAT, "version": VERSION,
       "algorithm": "sha256", "files": files}, indent=1))


def verify(step_dir: str) -> bool:
  """Checks a checkpoint's files against its ``checksums.json``.

  Args:
    step_dir: A checkpoint's directory, ``checkpoints/<step>``.

  Returns:
    True when every file matches; False when the checkpoint has no
    checksums (it was written before they existed).

  Raises:
    ChecksumError: naming the first file that is missing, has another size
      or another SHA-256, or a checksum file that cannot be read.
    NewerFormatError: the checksum file has a newer format.
  """
  path = os.path.join(step_dir, FILENAME)
  if not os.path.exists(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      checksums = json.load(f)
    version, files = checksums["version"], checksums["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ChecksumError(f"{path} is unreadable ({e})") from e
  if (checksums.get("format") != FORMAT
      or version != VERSION):
    raise NewerFormatError(
        f"{path} has checksum format {checksums.get('format')!r} version "
        f"{version!r}; this version of optax-lcam reads version "
        f"{VERSION}. Use a newer optax-lcam to resume this run.")
  for name, expected in files.items():
    file = os.path.join(step_dir, name)
    try:
      size = os.path.getsize(file)
      if size != expected["size"]:
        raise ChecksumError(
            f"{file} has {size} bytes, its checksum file says "
            f"{expected['size']}")
      if _sha256(file) != expected["sha256"]:
        raise ChecksumError(f"{file} fails its SHA-256 checksum")
    except OSError as e:
      raise ChecksumError(f"{file} is unreadable ({e})") from e
  return True
