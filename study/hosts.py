"""What each run of a study may use of its host: cores, GPUs, a TPU.

`worker_shares` splits the host between the runs that go at once (a GPU
each, or a part of the cores; a TPU host one run at a time), from what the
study may use (`visible_gpus`, `host_has_tpu`), and `child_environment`
gives a run its share. JAX is never started here: it would take the devices.
"""

from collections.abc import Sequence
import glob
import os
import subprocess
from typing import Any

import numpy as np


def visible_gpus(environ=os.environ) -> list[str]:
  """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them.

  Without ``CUDA_VISIBLE_DEVICES``, ``"0"`` to ``"n-1"`` for the n GPUs that
  ``nvidia-smi`` lists (none without it). With it, its entries as CUDA reads
  them: up to the first invalid one (``"-1"`` hides every GPU). A child given
  one of these entries gets that GPU, so a parent limited to ``"2,3"`` puts
  its runs on GPUs 2 and 3. JAX is not started: it would take the GPUs.

  Example:
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"})
    ['2', '3']
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})
    []
    >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f2e, 1, -1, 2"})
    ['GPU-8f2e', '1']
  """
  visible = environ.get("CUDA_VISIBLE_DEVICES")
  if visible is None:
    try:
      listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                              text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
      return []
    return [str(i) for i in range(sum(
        line.startswith("GPU ") for line in listed.splitlines()))]
  gpus = []
  for entry in (e.strip() for e in visible.split(",")):
    if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
      break
    gpus.append(entry)
  return gpus


# Google's PCI vendor id, and the device ids of its TPU chips (v2 to v7), as
# JAX finds a host's TPUs.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063",
                   "0x006f", "0x0076")


def host_has_tpu(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """Whether this host has TPU chips, found by their PCI ids as JAX finds them.

  JAX is not started: a TPU serves one process at a time.
  """
  for device in glob.glob(os.path.join(pci_devices, "*")):
    try:
      with open(os.path.join(device, "vendor"), encoding="ascii") as f:
        vendor = f.read().strip()
      with open(os.path.join(device, "device"), encoding="ascii") as f:
        if vendor == GOOGLE_PCI_VENDOR and f.read().strip() in TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


# What JAX preallocates of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
JAX_MEMORY_FRACTION = 0.75


def worker_shares(workers: int, cores: Sequence[int], gpus: Sequence[str],
                  *, tpu: bool = False,
                  memory_fraction: float = JAX_MEMORY_FRACTION
                  ) -> list[dict[str, Any]]:
  """What each concurrent run may use, and how many run at once.

  Args:
    workers: The runs asked for at once.
    cores: The cores this process may use.
    gpus: The GPUs this process may use (`visible_gpus`).
    tpu: Whether the host has a TPU, which one process at a time can use.
    memory_fraction: The fraction of a GPU's memory that one run alone
      preallocates.

  Returns:
    One dict per run at once: ``{"gpu": name}`` on a host with GPUs (run
    ``i`` on ``gpus[i mod len(gpus)]``), with ``"memory_fraction"``, the
    share of ``memory_fraction`` when k runs share the GPU; else
    ``{"cores": [...]}``, the cores split into near-equal parts (one worker
    keeps them all). A TPU host runs one at a time.

  Example:
    >>> worker_shares(2, [0, 1, 2], gpus=[])
    [{'cores': [0, 1]}, {'cores': [2]}]
    >>> worker_shares(3, [0, 1], gpus=["2", "3"])[:2]
    [{'gpu': '2', 'memory_fraction': 0.375}, {'gpu': '3'}]
    >>> worker_shares(4, [0, 1], gpus=[], tpu=True)
    [{'cores': [0, 1]}]
  """
  if tpu:
    workers = 1
  if gpus:
    shares = [{"gpu": gpus[i % len(gpus)]} for i in range(workers)]
    for share in shares:
      sharing = sum(s["gpu"] == share["gpu"] for s in shares)
      if sharing > 1:
        share["memory_fraction"] = memory_fraction / sharing
    return shares
  parts = np.array_split(np.asarray(cores), min(workers, len(cores)))
  return [{"cores": [int(c) for c in parts[i % len(parts)]]}
          for i in range(workers)]


def child_environment(share: dict[str, Any],
                      environ=os.environ) -> dict[str, str]:
  """The environment of a run with ``share`` (see `worker_shares`).

  Example:
    >>> env = child_environment({"gpu": "3", "memory_fraction": 0.375}, {})
    >>> env["CUDA_VISIBLE_DEVICES"], env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    ('3', '0.375')
  """
  env = dict(environ)
  if "gpu" in share:
    env["CUDA_VISIBLE_DEVICES"] = share["gpu"]
  if "memory_fraction" in share:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share['memory_fraction']:.4g}"
  return env
