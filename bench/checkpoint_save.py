"""How long a checkpoint save blocks the training thread, old path against new.

Builds a train state the size of WRN-28-10's with LCAM (parameters, BatchNorm
statistics, momentum: 36.5 M float32 each for parameters and momentum),
replicated over the devices as in training, and saves it in three ways,
interleaved:

  old: copy every leaf to host memory (numpy) on the training thread, then
       save the numpy tree with Orbax's defaults (what train/checkpoints.py
       did before);
  unhashed: `train.checkpoints.Checkpointer.save` without checksums (as
       before they existed): the device arrays go to Orbax, which copies one
       replica of each to host memory (all leaves at once, each whole) and
       writes the files in the background;
  new: the same with the SHA-256 of every file computed in Orbax's
       background thread before the checkpoint is committed.

Prints, for each, the median time the save call blocks the caller and the
median time until the checkpoint is complete on disk.

  python bench/checkpoint_save.py [--repeats 3] [--devices 4]
      [--model wrn-28-10]
"""

import argparse
from importlib import metadata
import os
import statistics
import sys
import tempfile
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--devices", type=int, default=4,
                      help="CPU devices (ignored on an accelerator)")
  parser.add_argument("--model", default="wrn-28-10")
  return parser.parse_args()


def main():
  args = parse_args()
  os.environ.setdefault(
      "XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  import models  # pylint: disable=g-import-not-at-top
  from train import checkpoints  # pylint: disable=g-import-not-at-top
  from train import optimizers  # pylint: disable=g-import-not-at-top
  from train import steps  # pylint: disable=g-import-not-at-top
  from train.configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  model = models.create_model(args.model, 10)
  tx = optimizers.create_optimizer(config.optimizer, 0.1, 391)
  abstract = jax.eval_shape(lambda: steps.create_train_state(
      model, tx, (32, 32, 3), 0))
  leaves, treedef = jax.tree.flatten(abstract)
  rng = np.random.default_rng(0)
  host_state = jax.tree.unflatten(treedef, [
      rng.standard_normal(x.shape, np.float32).astype(x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else np.zeros(x.shape, x.dtype)
      for x in leaves])
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(host_state, replicated)
  jax.block_until_ready(state)
  size = sum(x.nbytes for x in jax.tree.leaves(host_state))

  def old_save(directory):
    manager = ocp.CheckpointManager(directory, options=(
        ocp.CheckpointManagerOptions(max_to_keep=1, create=True)))
    def save(step):
      host_state = jax.tree.map(np.asarray, state)  # The old to_host.
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(host_state),
          meta=ocp.args.JsonSave({"step": step,
                                  "config": config.to_dict()})))
    return save, manager

  class Unhashed(checkpoints.Checkpointer):
    def _write_checksums(self):
      pass

  def checkpointer_save(make_checkpointer):
    def make(directory):
      checkpointer = make_checkpointer(directory, config, keep=1)
      return (lambda step: checkpointer.save(step, state),
              checkpointer._manager)  # pylint: disable=protected-access
    return make

  makers = (("old", old_save), ("unhashed", checkpointer_save(Unhashed)),
            ("new", checkpointer_save(checkpoints.Checkpointer)))
  timings = {name: ([], []) for name, _ in makers}
  with tempfile.TemporaryDirectory() as directory:
    savers = {name: make(os.path.join(directory, name))
              for name, make in makers}
    for step in range(args.repeats + 1):  # The first round warms up.
      for name, (save, manager) in savers.items():
        begin = time.perf_counter()
        save(step)
        blocked = time.perf_counter() - begin
        manager.wait_until_finished()
        complete = time.perf_counter() - begin
        if step:
          timings[name][0].append(blocked)
          timings[name][1].append(complete)
    for _, manager in savers.values():
      manager.close()

  print(f"jax {jax.__version__}, orbax {metadata.version('orbax-checkpoint')}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}; state of "
        f"{args.model} with LCAM: {size / 2**20:.1f} MiB, replicated; "
        f"median of {args.repeats} saves")
  for name, label in (("old", "old: host copy, then save"),
                      ("unhashed", "device arrays, no checksums"),
                      ("new", "new: device arrays, SHA-256")):
    blocked, complete = (statistics.median(t) for t in timings[name])
    print(f"{label:30s} training thread blocked {blocked * 1e3:8.1f} ms; "
          f"checkpoint complete after {complete * 1e3:8.1f} ms")
  return 0


if __name__ == "__main__":
  sys.exit(main())
