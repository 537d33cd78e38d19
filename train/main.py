"""Command line: `python -m train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.optimizer.beta_below=0.93`
or `--config.data.source=folder:/data/cifar10_jpeg.tar.gz`.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from train import checkpoints
from train import data
from train import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs; "
                    "re-running on it resumes the run.")
config_flags.DEFINE_config_file(
    "config", None, "A config file, e.g. train/configs/quick.py.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# Errors that come from the user's input: one line, no traceback.
USER_ERRORS = (train.ConfigError, data.DataError, FileNotFoundError,
               checkpoints.IncompatibleCheckpointError,
               train.NonFiniteLossError)


def _quiet_orbax(record) -> bool:
  """Keeps Orbax's many INFO lines about every save out of the log."""
  return record.levelno > logging.converter.STANDARD_INFO or (
      "/orbax/" not in record.pathname)


def host_device_count(batch_size: int, eval_batch_size: int,
                      cpu_count: int) -> int:
  """How many XLA devices to split a CPU host into, when there is no accelerator.

  XLA runs the convolutions of one CPU device's step mostly one after another,
  so on a host without an accelerator the loop is faster with the host split
  into several devices that the data-parallel step keeps busy at once (on two
  cores: WRN-10-1 at batch 128, 1.6x with 4 devices against one; see the
  README). Results do not depend on the device count.

  Args:
    batch_size: The global training batch size.
    eval_batch_size: The global evaluation batch size.
    cpu_count: The number of cores this process may use.

  Returns:
    Twice the number of cores, at most 8, lowered until it divides both batch
    sizes.

  Example:
    >>> host_device_count(128, 1000, cpu_count=2)
    4
    >>> host_device_count(100, 1000, cpu_count=4)
    4
    >>> host_device_count(63, 1000, cpu_count=2)
    1
  """
  count = max(1, min(8, 2 * cpu_count))
  while batch_size % count or eval_batch_size % count:
    count -= 1
  return count


def use_host_devices(config) -> None:
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    use_host_devices(FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    if FLAGS.verbosity >= logging.DEBUG:  # --verbosity=1: the traceback
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
