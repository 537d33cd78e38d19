"""Command line: `python -m train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.optimizer.beta_below=0.93`
or `--config.data.source=folder:/data/cifar10_jpeg.tar.gz`.
"""

import sys

from absl import app
from absl import flags
from absl import logging
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
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
