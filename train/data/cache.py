"""A cache of decoded arrays on the local disk, written atomically.

Decoding tens of thousands of small images takes seconds to minutes; loading
the decoded arrays back from an uncompressed `.npz` file takes a fraction of a
second. Each cache file is named by a digest of what it was decoded from, so a
changed input is decoded again, and it is written to a temporary file first and
renamed into place, so an interrupted run never leaves a corrupt cache file.
"""

from collections.abc import Mapping, Sequence
import functools
import hashlib
import logging
import os
from pathlib import Path
import tempfile
import zipfile

import numpy as np

CACHE_ENV_VAR = "OPTAX_LCAM_CACHE"


def default_cache_dir() -> Path:
  """The cache directory used when none is given.

  Returns:
    `$OPTAX_LCAM_CACHE` if set, else `$XDG_CACHE_HOME/optax_lcam`, else
    `~/.cache/optax_lcam`.
  """
  if os.environ.get(CACHE_ENV_VAR):
    return Path(os.environ[CACHE_ENV_VAR]).expanduser()
  xdg_cache_home = os.environ.get("XDG_CACHE_HOME")
  base = Path(xdg_cache_home) if xdg_cache_home else Path.home() / ".cache"
  return base.expanduser() / "optax_lcam"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
  """The given cache directory, or the default one when it is None."""
  if cache_dir is None:
    return default_cache_dir()
  return Path(cache_dir).expanduser()


def digest_of_file(path: Path) -> str:
  """The sha256 hex digest of a file's contents.

  Computed once per process for a file of the same path, size and
  modification time: a run's start asks twice (cache key and provenance).
  """
  stat = os.stat(path)
  return _digest_of_file(os.path.abspath(path), stat.st_size,
                         stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest_of_file(path: str, unused_size: int, unused_mtime_ns: int) -> str:
  sha = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      sha.update(chunk)
  return sha.hexdigest()


def digest_of_strings(strings) -> str:
  """The sha256 hex digest of a sequence of strings (order matters)."""
  sha = hashlib.sha256()
  for string in strings:
    sha.update(string.encode("utf-8"))
    sha.update(b"\0")
  return sha.hexdigest()


def load_arrays(path: Path, names: Sequence[str]
                ) -> dict[str, np.ndarray] | None:
  """Reads some arrays of a cache file written by `save_arrays`.

  Args:
    path: the cache file.
    names: the names of the arrays to read (the others are not read).

  Returns:
    The arrays by name, or None when the file is missing, unreadable or lacks
    one of the names (the caller then decodes again and rewrites it).
  """
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {name: npz[name] for name in names}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
  """Writes arrays to an uncompressed `.npz` file atomically.

  A cache that cannot be written (read-only or full disk) is not an error: the
  data was decoded and is used, it is only decoded again next time.

  Args:
    path: the cache file; its directory is created if needed.
    arrays: the arrays to store, by name.

  Returns:
    Whether the file was written.
  """
  try:
    _save_arrays_atomically(path, arrays)
  except OSError as err:
    logging.warning("Could not write the data cache %s (%s); the data will be "
                    "decoded again next time.", path, err)
    return False
  return True


def _save_arrays_atomically(path: Path, arrays: Mapping[str, np.ndarray]):
  """Writes the arrays to a temporary file, then renames it to `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name,
                                   suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temp_name, 0o644)  # mkstemp makes it private to its writer.
    os.replace(temp_name, path)
  except BaseException:
    Path(temp_name).unlink(missing_ok=True)
    raise
