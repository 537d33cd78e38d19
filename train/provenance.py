"""Where a run's numbers come from: code, packages, data and devices.

Every start or resume of a run writes these facts into its ``"kind": "run"``
record of ``metrics.jsonl``, so that a study's summary can show which commits
and devices its runs used, and how often they were restarted, without anyone
having to remember it.
"""

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess

import jax

from train import config as config_lib
from train import data
from train.data import cache

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


def _git(*args: str) -> str | None:
  try:
    result = subprocess.run(["git", "-C", config_lib.REPO_ROOT, *args],
                            capture_output=True, text=True, timeout=30,
                            check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


@functools.cache
def code_version() -> dict[str, str | bool | None]:
  """The checkout's commit and whether tracked files differ from it.

  Untracked files (a study's results written into a pinned worktree) do not
  count as changes. Both are None outside a git checkout.
  """
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit,
          "tracked_changes": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
  """The installed versions of the packages a run's numbers depend on."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def data_fingerprint(source: str, splits: list[data.Split]) -> str:
  """The file's sha256 for a ``folder:`` archive (``archive-sha256:``) or a
  ``text:`` file (``file-sha256:``), else the arrays' hash.

  Example:
    >>> split = data.load_split("synthetic:num_train=4,num_test=2", "train")
    >>> data_fingerprint("synthetic:num_train=4,num_test=2",
    ...                  [split]).startswith("arrays-sha256:")
    True
  """
  kind, _, path = source.partition(":")
  if kind in ("folder", "text") and os.path.isfile(path):
    prefix = "archive" if kind == "folder" else "file"
    return f"{prefix}-sha256:" + cache.digest_of_file(path)
  sha = hashlib.sha256()
  for split in splits:
    sha.update(f"{split.split}:{data.fingerprint(split)}\n".encode())
  return "arrays-sha256:" + sha.hexdigest()


@functools.cache
def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host's processor and the vector extensions XLA:CPU compiles for.

  XLA:CPU's numbers depend on them: the same run on two processors may
  differ from its first steps, so a run records which it ran on.

  >>> host_cpu("/nonexistent").startswith(platform.machine())
  True
  """
  model, flags = "", set()
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
          model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
          flags = set(value.split())
  except OSError:
    pass
  extensions = [x for x in ("avx512f", "avx2", "sve", "asimd") if x in flags]
  return " ".join(filter(None, [platform.machine(), model and f"({model})",
                                ",".join(extensions)]))


def provenance(source: str, splits: list[data.Split]) -> dict:
  """The facts of the run record: code, packages, data and devices."""
  return {**code_version(), "versions": package_versions(),
          "data_fingerprint": data_fingerprint(source, splits),
          "device_kind": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "processes": jax.process_count(),
          "cpu": host_cpu()}
