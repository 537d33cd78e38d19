"""The processes of a run: joining a cluster, and holding the shared workdir.

`maybe_initialize_distributed` calls `jax.distributed.initialize` when the
config or the environment (a SLURM step, an Open MPI job, a multi-host TPU
slice: `detected_cluster`) asks for several processes; `hold_workdir` makes
process 0 hold the workdir's lock (`train.workdir_lock`) for all of them.
"""

import contextlib
import os
import warnings

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from train import workdir_lock


def detected_cluster() -> tuple[str, int] | None:
  """The cluster JAX's own detection finds, and its process count.

  These are the environments (SLURM, Open MPI, Cloud TPU, Kubernetes, in
  JAX's order) that ``jax.distributed.initialize()`` reads its arguments from
  when it is given none. JAX has no public way to ask without initializing,
  so this asks the same ``ClusterEnv`` classes that it does
  (``jax._src.clusters``, stable since 2022). Opt-in methods (mpi4py) are
  left out, as JAX leaves them out.

  Returns:
    ``(name, process count)`` of the first environment present, or None.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=protected-access
    environments = clusters.ClusterEnv._cluster_types
  except (ImportError, AttributeError):
    logging.warning("This JAX version does not expose its cluster detection: "
                    "set --config.distributed.initialize=yes for a "
                    "multi-process run.")
    return None
  for environment in environments:
    try:
      with warnings.catch_warnings():  # Kubernetes without its package.
        warnings.simplefilter("ignore")
        if environment.opt_in_only_method or not environment.is_env_present():
          continue
      return environment.name, environment.get_process_count()
    except Exception as e:  # pylint: disable=broad-except
      # Half there, e.g. a Kubernetes pod outside a Job.
      logging.warning("JAX's %s cluster detection failed (%s): running alone "
                      "(--config.distributed.initialize=yes to join).",
                      environment.name, e)
      return None
  return None


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
  """Holds ``workdir`` for one run: its lock (`train.workdir_lock`).

  The processes of a multi-process run share their workdir, so process 0
  holds the lock for all of them, and all of them stop when it is busy.
  Without `jax.distributed` this runs before JAX touches a device.

  Raises:
    workdir_lock.WorkdirBusyError: another run holds ``workdir``.
  """
  distributed = jax.distributed.is_initialized()
  with contextlib.ExitStack() as stack:
    busy = None
    if not distributed or jax.process_index() == 0:
      try:
        stack.enter_context(workdir_lock.hold(workdir))
      except workdir_lock.WorkdirBusyError as e:
        busy = e
    if distributed and jax.process_count() > 1 and np.any(
        multihost_utils.process_allgather(np.int32(busy is not None))):
      busy = busy or workdir_lock.WorkdirBusyError(
          f"the workdir {workdir} is in use by another run (found by "
          "process 0).")
    if busy:
      raise busy
    yield

