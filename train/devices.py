"""The processes of a run: joining a cluster, and holding the shared workdir.

`maybe_initialize_distributed` calls `jax.distributed.initialize` when the
config or the environment (a SLURM step, an Open MPI job, a multi-host TPU
slice: `detected_cluster`) asks for several processes; `hold_workdir` makes
process 0 hold the workdir's lock (`hold`) for all of them.
"""

import contextlib
import fcntl
import os
import socket

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np


def detected_cluster(environ=os.environ) -> tuple[str, int] | None:
  """A multi-process job that JAX's own detection would join, and its size.

  These are the environment variables that ``jax.distributed.initialize()``
  reads its arguments from when it is given none: a SLURM step
  (``SLURM_JOB_ID``, ``SLURM_NTASKS``), an Open MPI job
  (``OMPI_COMM_WORLD_SIZE``) and a multi-host TPU slice
  (``TPU_WORKER_HOSTNAMES``, one name per host). Any other cluster joins
  with ``--config.distributed.initialize=yes``.

  Returns:
    ``(name, process count)`` of the first one present, or None.

  Example:
    >>> detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    ('SLURM', 4)
    >>> detected_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1"})
    ('TPU', 2)
    >>> detected_cluster({}) is None
    True
  """
  if "SLURM_JOB_ID" in environ:
    return "SLURM", _count(environ.get("SLURM_NTASKS", "1"))
  if "OMPI_COMM_WORLD_SIZE" in environ:
    return "Open MPI", _count(environ["OMPI_COMM_WORLD_SIZE"])
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if hosts:
    return "TPU", len(hosts)
  return None


def _count(text: str) -> int:
  """A process count from the environment; 1 (alone) when it is not one."""
  return int(text) if text.strip().isdigit() else 1


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the config or environment asks.

  With ``initialize="auto"`` the environment asks with a coordinator address
  (in the config or ``JAX_COORDINATOR_ADDRESS``), or with a cluster of more
  than one process that JAX detects (`detected_cluster`): a SLURM step of
  several tasks, an Open MPI job, a multi-host TPU slice. A cluster of one
  process (``sbatch`` with one task) needs no initialization. Must run before
  JAX touches a device.
  """
  if config.initialize == "no":
    return
  coordinator = (config.coordinator_address
                 or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  if config.initialize == "auto" and not coordinator:
    cluster = detected_cluster()
    if cluster is None or cluster[1] < 2:
      return
    logging.info("Joining the %d processes of the %s cluster that JAX "
                 "detects (--config.distributed.initialize=no runs alone).",
                 cluster[1], cluster[0])
  kwargs = {"coordinator_address": coordinator,
            "num_processes": config.num_processes,
            "process_id": config.process_id}
  jax.distributed.initialize(**{k: v for k, v in kwargs.items()
                                if v is not None})

@contextlib.contextmanager
def hold_workdir(workdir: str):
  """Holds ``workdir`` for one run: its lock (`hold`).

  The processes of a multi-process run share their workdir, so process 0
  holds the lock for all of them, and all of them stop when it is busy.
  Without `jax.distributed` this runs before JAX touches a device.

  Raises:
    WorkdirBusyError: another run holds ``workdir``.
  """
  distributed = jax.distributed.is_initialized()
  with contextlib.ExitStack() as stack:
    busy = None
    if not distributed or jax.process_index() == 0:
      try:
        stack.enter_context(hold(workdir))
      except WorkdirBusyError as e:
        busy = e
    if distributed and jax.process_count() > 1 and np.any(
        multihost_utils.process_allgather(np.int32(busy is not None))):
      busy = busy or WorkdirBusyError(
          f"the workdir {workdir} is in use by another run (found by "
          "process 0).")
    if busy:
      raise busy
    yield


# One run per workdir: an OS lock on ``DIR/.lock``, held for the run's life.
# The lock is ``fcntl.flock``: the kernel releases it when its holder ends,
# however it ends (a crash, SIGKILL), so a lock never outlives its run and
# nothing has to be cleaned up. The file stays; it holds the holder's pid and
# host, for the message to a second run. On a file system without locks
# (Lustre mounted without ``-o flock``) the run goes on unprotected, with a
# warning.
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


def host_device_count(batch_size: int, eval_batch_size: int,
                      cpu_count: int) -> int:
  """How many XLA devices to split a CPU host without an accelerator into.

  XLA runs the convolutions of one CPU device's step mostly one after another,
  so on a host without an accelerator the loop is faster with the host split
  into several devices that the data-parallel step keeps busy at once (on two
  cores, WRN-10-1 at batch 128: 1.4x with 2 devices against one; see
  docs/benchmarks.md). Results do not depend on the device count. No more
  devices than cores, to be safe: runs with 4 (and once with 2) devices on 2
  cores stopped in a cross-device sum, see `train.steps.one_step_in_flight`.

  Args:
    batch_size: The global training batch size.
    eval_batch_size: The global evaluation batch size.
    cpu_count: The number of cores this process may use.

  Returns:
    The number of cores, at most 8, lowered until it divides both batch sizes.

  Example:
    >>> host_device_count(128, 1000, cpu_count=2)
    2
    >>> host_device_count(100, 1000, cpu_count=16)
    5
    >>> host_device_count(63, 1000, cpu_count=2)
    1
  """
  count = max(1, min(8, cpu_count))
  while batch_size % count or eval_batch_size % count:
    count -= 1
  return count


def use_host_devices(config: ml_collections.ConfigDict) -> None:
  """Splits a CPU host into ``config.host_devices`` devices (0: automatic).

  Must run before JAX touches a device. It changes nothing where XLA_FLAGS
  already sets ``--xla_force_host_platform_device_count`` and has no effect on
  accelerators, whose devices JAX prefers.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return
  count = config.host_devices or host_device_count(
      config.batch_size, config.eval_batch_size, len(os.sched_getaffinity(0)))
  jax.config.update("jax_num_cpu_devices", count)
