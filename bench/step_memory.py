"""Device memory of the harness's train step, with and without donation.

Compiles the step that `python -m train` runs
(`train.steps.create_steps_and_state` from the reference config, LCAM,
float32) twice: once donating the train state it is given (what training
does) and once not, and prints XLA's memory
analysis of each, per device: arguments, outputs, the part of the outputs
that reuses donated arguments, temporaries, and the peak estimate
arguments + outputs - aliased + temporaries. Without donation the new state
lives next to the old one, so the peak holds the state twice. Nothing is run;
on a CPU the compiles take a minute or two for WRN-28-10.

Usage:
  python bench/step_memory.py
  python bench/step_memory.py --parallel jit --model wrn-16-4 --batch 64
"""

import argparse
import os
import sys

# The harness (models/, train/) is imported from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from train import data
from train import steps as steps_lib

import model_step

MIB = 2.0**20


def step_memory(name: str, batch: int, parallel: str,
                donate_state: bool) -> dict[str, float]:
  """XLA's memory analysis of the compiled train step, in bytes per device.

  Returns:
    ``arguments``, ``outputs``, ``aliased``, ``temporaries``, ``peak``
    (arguments + outputs - aliased + temporaries) and ``state`` (the train
    state's size).
  """
  config = model_step.step_config(name, "float32", batch, parallel)
  split = data.load_split(
      f"synthetic:num_train={batch},num_test=1,num_classes=10", "train")
  steps, host_state = steps_lib.create_steps_and_state(
      config, split, model_step.REFERENCE_STEPS_PER_EPOCH,
      donate_state=donate_state)
  state = steps.put_state(host_state)
  batch_on_devices = steps.put_batch(
      next(data.train_batches(split, batch, seed=0, epoch=0)))
  stats = steps.train_step.lower(state, batch_on_devices).compile(
  ).memory_analysis()
  sizes = {"arguments": stats.argument_size_in_bytes,
           "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes,
           "temporaries": stats.temp_size_in_bytes}
  sizes["peak"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                   + sizes["temporaries"])
  sizes["state"] = sum(np.asarray(x).nbytes
                       for x in jax.tree.leaves(host_state))
  return sizes


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="wrn-28-10")
  parser.add_argument("--batch", type=int, default=128,
                      help="global images per step (default: 128)")
  parser.add_argument("--parallel", default="pmap", choices=("pmap", "jit"))
  args = parser.parse_args(argv)
  if jax.device_count() > 1 and jax.default_backend() == "cpu":
    parser.error("run it on one CPU device: the train step of a CPU split "
                 "into devices is wrapped and cannot be lowered")
  print(f"jax {jax.__version__}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, {args.model}, batch {args.batch}, "
        f"{args.parallel}, LCAM, float32; MiB per device")
  rows = {donate: step_memory(args.model, args.batch, args.parallel, donate)
          for donate in (False, True)}
  print(f"train state {rows[True]['state'] / MIB:.1f}")
  columns = ("arguments", "outputs", "aliased", "temporaries", "peak")
  print(f"{'state donated':<14}" + "".join(f"{c:>13}" for c in columns))
  for donate, sizes in rows.items():
    print(f"{'yes' if donate else 'no':<14}"
          + "".join(f"{sizes[c] / MIB:>13.1f}" for c in columns))
  saved = rows[False]["peak"] - rows[True]["peak"]
  print(f"donation lowers the peak by {saved / MIB:.1f} MiB per device")


if __name__ == "__main__":
  main()
