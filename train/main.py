"""Command line: `python -m train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.optimizer.beta_below=0.93`
or `--config.data.source=folder:/data/cifar10_jpeg.tar.gz`; `--help` lists
them with their values. `--config` also takes a run's own ``config.json``.
"""

import argparse
import atexit
import logging as std_logging
import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from flax import traverse_util
import ml_collections
from ml_collections import config_flags

from train import checkpoints
from train import config as config_lib
from train import data
from train import devices
from train import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs; "
                    "re-running on it resumes the run.", required=True)

# Errors that come from the user's input: one line, no traceback.
USER_ERRORS = (config_lib.ConfigError, data.DataError, FileNotFoundError,
               checkpoints.IncompatibleCheckpointError,
               checkpoints.DamagedCheckpointError,
               loop.NonFiniteLossError, devices.WorkdirBusyError)


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


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")
DEFAULT_CONFIG = "train/configs/default.py"
HELP = """\
usage: python -m train --config PATH.py[:ARG] --workdir DIR [--config.F=V ...]

Trains one run into DIR, or resumes it there (the same command).
  --config     train/configs/NAME.py (quick.py trains in minutes; default.py,
               the reference, comments every field), or a run's config.json
  --workdir    the run's folder: config.json, metrics.jsonl, checkpoints/
  --verbosity  -1: warnings only; 1: a traceback with an error
"""


def help_text(config: ml_collections.ConfigDict, spec: str) -> str:
  """The command's help: its usage, and every config field with its value.

  >>> config = ml_collections.ConfigDict({"a": {"b": (1,)}})
  >>> help_text(config, "c.py").splitlines()[-1]
  '  --config.a.b=(1,)'
  """
  fields = traverse_util.flatten_dict(config.to_dict(), sep=".")
  return (f"{HELP}\nThe fields of {spec}; set any with --config.FIELD=VALUE:\n"
          + "".join(f"  --config.{field}={config_lib.flag_value(value)}\n"
                    for field, value in fields.items()))


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a mistake exits with one ``error:`` line.

  The fields of the config that `train.config.load` gives for ``--config``
  become the flags ``--config.a.b=v``, parsed by their types (`config_flags`).
  ``--help`` lists them with their values (`help_text`).
  """
  config_spec = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  config_spec.add_argument("--config")
  spec, argv = config_spec.parse_known_args(argv)
  if any(flag in HELP_FLAGS for flag in argv[1:]):
    path = spec.config or os.path.join(config_lib.REPO_ROOT, DEFAULT_CONFIG)
    try:
      print(help_text(config_lib.load(path), spec.config or DEFAULT_CONFIG),
            end="")
    except config_lib.ConfigError as e:
      _exit_with_error(f"--config {spec.config}: {e}", status=2)
    sys.exit(0)
  where = f"--config {spec.config}"  # What a ConfigError is about.
  try:
    if spec.config is not None:
      config = config_lib.load(spec.config)
      for where in [flag for flag in argv if flag.startswith("--config.")]:
        config_lib.check_field(
            config, where.removeprefix("--config.").split("=")[0])
      config_flags.DEFINE_config_dict("config", config, "PATH.py[:ARG]",
                                      sys_argv=argv)
    rest = FLAGS(argv)  # Prints the help for --help.
    if spec.config is None:
      raise ValueError("--config is required, e.g. train/configs/quick.py.")
  except Exception as e:  # pylint: disable=broad-except
    _exit_with_error(f"{where}: {e}" if isinstance(e, config_lib.ConfigError)
                     else str(e).strip().splitlines()[-1], status=2)
  return rest


def _ignore_closed_event_loops(unraisable, hook=sys.unraisablehook):
  """An ``unraisablehook`` silent about TensorStore's callbacks into the event
  loop of an Orbax operation that failed (and closed it): after a failed read
  or write, each pending one prints a traceback of "Event loop is closed"."""
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    hook(unraisable)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  sys.unraisablehook = _ignore_closed_event_loops
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet)
  try:
    devices.use_host_devices(FLAGS.config)
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except loop.TrainingInterrupted as e:
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


def _exit_with_error(message: str, status: int = 1) -> None:
  """Prints ``error: message`` and exits with ``status``; the traceback
  instead with ``--verbosity=1``."""
  if FLAGS["verbosity"].value >= logging.DEBUG:
    raise  # pylint: disable=misplaced-bare-raise
  print(f"error: {message}", file=sys.stderr)
  std_logging.disable()  # asyncio's "exception was never retrieved", etc.
  # A failed save leaves Orbax's coroutines pending; at exit Python would
  # print each one's complaint ("Event loop is closed", "sys.meta_path is
  # None"), after the error line.
  atexit.register(setattr, sys, "unraisablehook", lambda _: None)
  sys.exit(status)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
