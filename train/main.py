"""Command line: `python -m train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.optimizer.beta_below=0.93`
or `--config.data.source=folder:/data/cifar10_jpeg.tar.gz`.
"""

import atexit
import logging as std_logging
import os
import runpy
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from train import checkpoints
from train import data
from train import train
from train import workdir_lock

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
               checkpoints.DamagedCheckpointError,
               train.NonFiniteLossError, workdir_lock.WorkdirBusyError)


def _quiet(record) -> bool:
  """Keeps INFO lines of Orbax (about every save) and of JAX's search for
  accelerators (``Unable to initialize backend 'tpu'``) out of the log, and
  Orbax's ERROR lines: it logs each failure of its background threads with a
  traceback, then raises it on the training thread, where `main` reports
  it."""
  if "/orbax/" in record.pathname:
    return record.levelno == logging.converter.STANDARD_WARNING
  return (record.levelno > logging.converter.STANDARD_INFO
          or record.name != "jax._src.xla_bridge")


def host_device_count(batch_size: int, eval_batch_size: int,
                      cpu_count: int) -> int:
  """How many XLA devices to split a CPU host into, when there is no accelerator.

  XLA runs the convolutions of one CPU device's step mostly one after another,
  so on a host without an accelerator the loop is faster with the host split
  into several devices that the data-parallel step keeps busy at once (on two
  cores, WRN-10-1 at batch 128: 1.4x with 2 devices against one; see
  docs/benchmarks.md). Results do not depend on the device count. No more
  devices than cores, to be safe: runs with 4 (and once with 2) devices on 2
  cores stopped in a cross-device sum, see `train.train.one_step_in_flight`.

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


def _config_spec(argv: list[str]) -> str | None:
  """The value of ``--config`` in ``argv``."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def command_line_error(argv: list[str], error: Exception) -> str:
  """What is wrong with ``argv``, in one line, and what would do.

  Args:
    argv: The command line.
    error: What parsing it raised.
  """
  spec = _config_spec(argv)
  if spec is None:
    return str(error).strip().splitlines()[-1]
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    configs = os.path.relpath(os.path.join(os.path.dirname(__file__), "configs"))
    names = sorted(f for f in os.listdir(configs)
                   if f.endswith(".py") and not f.startswith("_"))
    return (f"--config {spec}: no such file. The configs in {configs} are: "
            f"{', '.join(names)}.")
  try:
    config = runpy.run_path(path)["get_config"](*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except
    return f"--config {spec}: {e}"
  for flag in argv:
    if flag.startswith("--config."):
      *sections, field = flag[len("--config."):].split("=", 1)[0].split(".")
      node = config
      for i, name in enumerate(sections + [field]):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
          where = ".".join(["config"] + sections[:i])
          valid = sorted(node) if isinstance(
              node, ml_collections.ConfigDict) else []
          return (f"{flag}: {where} has no field {name!r}; its fields are: "
                  f"{', '.join(valid)}.")
        node = node[name]
  return str(error).strip().splitlines()[-1]


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a mistake exits with one ``error:`` line."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.to_dict()  # A config file that failed to load raises here.
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {command_line_error(argv, e)}", file=sys.stderr)
    sys.exit(2)
  return rest


def _without_closed_event_loops(unraisablehook):
  """``unraisablehook`` silent about TensorStore's callbacks into the event
  loop of an Orbax operation that failed (and closed it): after a failed read
  or write, each pending one prints a traceback of "Event loop is closed"."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      unraisablehook(unraisable)
  return hook


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  sys.unraisablehook = _without_closed_event_loops(sys.unraisablehook)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet)
  try:
    use_host_devices(FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.TrainingInterrupted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:  # Before the loop's handler, or a second Ctrl-C.
    print("Interrupted; the same command resumes from the latest complete "
          "checkpoint, if any.", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except USER_ERRORS as e:
    _exit_with_error(str(e))
  except Exception as e:  # pylint: disable=broad-except
    message = checkpoints.disk_full_message(FLAGS.workdir, e)
    if message is None and isinstance(e, OSError) and e.filename:
      message = f"{e.filename}: {e.strerror or e}"  # An unreadable file.
    if message is None:
      raise
    _exit_with_error(message)


def _exit_with_error(message: str) -> None:
  """Prints ``error: message`` and exits with 1; the traceback instead with
  ``--verbosity=1``."""
  if FLAGS.verbosity >= logging.DEBUG:
    raise  # pylint: disable=misplaced-bare-raise
  print(f"error: {message}", file=sys.stderr)
  std_logging.disable()  # asyncio's "exception was never retrieved", etc.
  # A failed save leaves Orbax's coroutines pending; at exit Python would
  # print each one's complaint ("Event loop is closed", "sys.meta_path is
  # None"), after the error line.
  atexit.register(setattr, sys, "unraisablehook", lambda _: None)
  sys.exit(1)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
