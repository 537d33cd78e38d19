"""`python -m train.evaluate WORKDIR`: the exact test metrics of a checkpoint.

Loads the workdir's ``config.json`` and its latest checkpoint, evaluates
every test example and prints one line, e.g.

  step 391 (epoch 1): test_loss 0.822108 test_accuracy 0.709400 (10000 examples)

Nothing in the workdir changes: a damaged newer checkpoint is skipped (and
named in a warning), never set aside, and the line says which step was
evaluated. To use the trained parameters elsewhere, see
`train.checkpoints.load_variables`.
"""

import argparse
import functools
import os
import sys

import jax

from train import checkpoints
from train import config as config_lib
from train import data
from train import devices
from train import loop
from train import record


def evaluate_checkpoint(workdir: str) -> dict[str, float]:
  """The test metrics of the latest checkpoint in ``workdir``.

  Returns:
    The step, the epoch, the test split's fields of an epoch record (loss
    and accuracy, `train.record.split_field`) and its number of examples.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
  """
  config = config_lib.load_run_config(workdir)
  if not os.path.isdir(os.path.join(workdir, record.CHECKPOINTS_DIRNAME)):
    raise FileNotFoundError(f"No checkpoint in {workdir}.")
  config_lib.validate(config, jax.device_count())
  run, state, _ = loop.set_up_training(config, workdir, test_split=True,
                                       read_only=True)
  run.checkpointer.close()
  step = int(state.step)
  if not step:
    raise FileNotFoundError(f"No checkpoint in {workdir}.")
  metrics = loop.evaluate(run.parallel, state, run.test_split, config,
                          task=run.task)
  return {"step": step, "epoch": step / run.steps_per_epoch, **metrics,
          "test_examples": run.test_split.num_examples}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m train.evaluate",
      description="Exact test loss and accuracy of a workdir's latest "
      "checkpoint.")
  parser.add_argument("workdir", help="a training workdir")
  args = parser.parse_args(argv)
  try:
    # Before JAX starts.
    devices.use_host_devices(config_lib.load_run_config(args.workdir))
    result = evaluate_checkpoint(args.workdir)
  except (FileNotFoundError, data.DataError, config_lib.ConfigError,
          checkpoints.IncompatibleCheckpointError,
          checkpoints.DamagedCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  measures = " ".join(f"{field} {result[field]:.6f}"
                      for field in map(functools.partial(
                          record.split_field, "test"), record.MEASURES)
                      if field in result)
  print(f"step {result['step']} (epoch {result['epoch']:g}): {measures} "
        f"({result['test_examples']} examples)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
