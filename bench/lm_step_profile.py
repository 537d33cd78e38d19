"""Where the character GPT's train step spends its time, against PyTorch's.

Profiles the harness's train step of the Shakespeare config (GPT-4-128,
batch 32 x context 64, AdamW) and the PyTorch peer's (`bench/torch_gpt.py`,
nanoGPT's layout) on one CPU core, on one resident batch: XLA's executed
operations through `jax.profiler`, each assigned to a part of the network by
the source metadata of the compiled HLO, and PyTorch's ATen operations through
`torch.profiler`, by name. Prints milliseconds per step for each part, their
sum, and each step's time without a profiler (the median of a few timings,
interleaved). The process is pinned to one core, so that the operations'
durations add up to the step's time.

  python bench/lm_step_profile.py [--source text:PATH] [--steps 10]

Needs PyTorch: `pip install -e '.[bench]'`.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED_TEXT = "../shared/data/tinyshakespeare.txt"

PARTS = ("matrix products (Dense layers, head)", "attention core",
         "GELU and the MLP's other elementwise work", "LayerNorm",
         "layout copies", "the rest (embeddings, loss, AdamW, residuals)")
MATMUL, ATTENTION, MLP, LAYER_NORM, LAYOUT, REST = PARTS
# Operations that only move or reinterpret data.
_LAYOUT_OPCODES = frozenset({"parameter", "copy", "transpose", "bitcast",
                             "reshape", "constant"})
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def parse_hlo(hlo_text: str) -> dict[str, dict[str, list[tuple[str, str]]]]:
  """HLO module text as {computation: {instruction: (opcode, op_name, calls)}}.

  ``calls`` lists the computations an instruction calls (a fusion's body).
  """
  computations: dict[str, dict] = {}
  current = None
  for line in hlo_text.splitlines():
    start = _COMPUTATION.match(line)
    if start and line.rstrip().endswith("{"):
      current = computations.setdefault(start.group(1), {})
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      op_name = re.search(r'op_name="([^"]*)"', line)
      current[match.group(1)] = (match.group(2),
                                 op_name.group(1) if op_name else "",
                                 re.findall(r"calls=%([\w.\-]+)", line))
  return computations


def _opcodes(computations, name: str) -> set[str]:
  """The opcodes of computation ``name`` and of all it calls."""
  found = set()
  for opcode, _, calls in computations.get(name, {}).values():
    found.add(opcode)
    for called in calls:
      found |= _opcodes(computations, called)
  return found


def hlo_part(opcodes: set[str], op_name: str) -> str:
  """The part of the GPT an executed operation belongs to.

  Args:
    opcodes: the operation's opcode, and those of the computations it calls.
    op_name: its source metadata, e.g. ``jit(train_step)/.../h_0/mlp/erfc``.
  """
  in_attention = "/attn/" in op_name and not re.search(r"/c_(attn|proj)/",
                                                       op_name)
  if in_attention:
    return ATTENTION
  if "dot" in opcodes:
    return MATMUL
  if opcodes <= _LAYOUT_OPCODES:
    return LAYOUT
  if "/mlp/" in op_name:
    return MLP
  if re.search(r"/ln_(\d|f)/", op_name):
    return LAYER_NORM
  return REST


def hlo_parts(hlo_text: str) -> dict[str, str]:
  """{instruction name: part} for every instruction of the module."""
  computations = parse_hlo(hlo_text)
  parts = {}
  for instructions in computations.values():
    for name, (opcode, op_name, calls) in instructions.items():
      opcodes = {opcode}
      for called in calls:
        opcodes |= _opcodes(computations, called)
      parts[name] = hlo_part(opcodes - {"fusion"} or {opcode}, op_name)
  return parts


def torch_part(op: str) -> str:
  """The part of the PyTorch step an ATen operation belongs to."""
  if op in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
    return MATMUL
  if "scaled_dot_product" in op:
    return ATTENTION
  if "gelu" in op:
    return MLP
  if "layer_norm" in op:
    return LAYER_NORM
  if op in ("aten::copy_", "aten::clone", "aten::contiguous"):
    return LAYOUT
  return REST


def jax_profile(step, state, batch, steps: int, parts: dict[str, str]):
  """Milliseconds per step in each part, from a trace of ``steps`` steps."""
  import jax  # pylint: disable=g-import-not-at-top
  totals = collections.Counter()
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, _ = step(state, batch)
      jax.block_until_ready(state)
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                        recursive=True)
    with gzip.open(path) as trace:
      events = json.load(trace)
  for event in events.get("traceEvents", []):
    if event.get("ph") == "X" and event.get("name") in parts:
      totals[parts[event["name"]]] += event.get("dur", 0) / 1e3 / steps
  return totals, state


def torch_profile(torch_step, tokens, targets, steps: int):
  """Milliseconds per step in each part, from ATen's self times."""
  from torch import profiler  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      torch_step(tokens, targets)
  totals = collections.Counter()
  for event in prof.key_averages():
    totals[torch_part(event.key)] += event.self_cpu_time_total / 1e3 / steps
  return totals


def print_table(header: str, jax_parts, torch_parts, jax_ms, torch_ms):
  print(header)
  print(f"{'milliseconds per step':46s} {'harness':>9s} {'PyTorch':>9s}")
  for part in PARTS:
    print(f"  {part:44s} {jax_parts[part]:9.1f} {torch_parts[part]:9.1f}")
  print(f"  {'sum of the profiled operations':44s} "
        f"{sum(jax_parts.values()):9.1f} {sum(torch_parts.values()):9.1f}")
  print(f"{'step without a profiler (median)':46s} {jax_ms:9.1f} "
        f"{torch_ms:9.1f}")
  print(f"ratio of the steps' speeds, harness / PyTorch: "
        f"{torch_ms / jax_ms:.2f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default=f"text:{SHARED_TEXT}",
                      help="the corpus (text:PATH or tfds:tiny_shakespeare)")
  parser.add_argument("--steps", type=int, default=10,
                      help="steps per profile and per timing")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bench import peer_timing  # pylint: disable=g-import-not-at-top
  from train import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from train import tasks  # pylint: disable=g-import-not-at-top
  from train.configs import shakespeare  # pylint: disable=g-import-not-at-top

  config = shakespeare.get_config()
  config.data.source = args.source
  config.parallel = "jit"
  task = tasks.create_task(config)
  train = task.load_splits(config, test=False).train  # the corpus, read first
  torch = peer_timing.require_torch()
  from bench import torch_gpt  # pylint: disable=g-import-not-at-top
  parallel_steps, host_state = steps_lib.create_steps_and_state(
      config, train, task.steps_per_epoch(config, train))
  state = parallel_steps.put_state(host_state)
  batch = parallel_steps.put_batch(next(iter(task.train_batches(
      config, train, epoch=0, start_step=0, process_index=0,
      process_count=1))))
  compiled = parallel_steps.train_step.lower(state, batch).compile()

  torch.set_num_threads(1)
  torch_step, tokens, targets = torch_gpt.config_peer(
      config, task.create_model(config, train, None), train.num_classes)
  shape = tuple(tokens.shape)

  def jax_step(inputs, unused_targets):
    nonlocal state
    state, _ = compiled(state, inputs)

  chars = shape[0] * shape[1]
  jax_rates, torch_rates = [], []
  for _ in range(3):  # warm-up included: the first of each is dropped
    jax_rates.append(peer_timing.rate(
        jax_step, batch, None, args.steps, chars,
        synchronize=lambda: jax.block_until_ready(state)))
    torch_rates.append(peer_timing.rate(torch_step, tokens, targets,
                                        args.steps, chars))
  jax_parts, state = jax_profile(compiled, state, batch, args.steps,
                                 hlo_parts(compiled.as_text()))
  torch_parts = torch_profile(torch_step, tokens, targets, args.steps)
  print_table(
      f"{config.model.name}, batch {shape[0]} x context {shape[1]}, AdamW, "
      f"one CPU core; jax {jax.__version__}, torch {torch.__version__}",
      jax_parts, torch_parts, 1e3 * chars / np.median(jax_rates[1:]),
      1e3 * chars / np.median(torch_rates[1:]))
  return 0


def use_one_core():
  """Pins this process to one core, with one XLA device that computes on the
  calling thread; before jax is imported. Unpinned, XLA's CPU runtime runs
  independent operations on every core, and their durations no longer add up
  to the step's."""
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  os.environ["JAX_PLATFORMS"] = "cpu"  # the CPU even where a GPU is present
  os.environ["JAX_CPU_ENABLE_ASYNC_DISPATCH"] = "false"
  os.environ["XLA_FLAGS"] = " ".join([
      os.environ.get("XLA_FLAGS", ""),
      "--xla_force_host_platform_device_count=1",
      "--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"])


if __name__ == "__main__":
  use_one_core()
  from bench import peer_timing  # pylint: disable=g-import-not-at-top
  peer_timing.run_main(main)
