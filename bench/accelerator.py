"""The accelerator kit: one command, one report on whatever accelerator is here.

  python bench/accelerator.py --out DIR [--budget-s 480] [--data ARCHIVE]
  python bench/accelerator.py --smoke --out DIR      # CPU, tiny model, seconds

Writes ``DIR/report.json`` (sections ``machine``, ``model``, ``peer``, ``loop``,
plus ``kit``) and ``DIR/report.md``, within ``--budget-s`` seconds: each part
runs in its own process under a deadline, writes what it has measured as it
goes, and the parts that no longer fit are dropped (the report says which).

1. machine: device kind and count, jax, jaxlib and CUDA versions, and the
   measured bf16 (and f32) TFLOP/s of a large matrix product (practical peak).
2. model: the harness's own train step (`bench/model_step.py`, which builds it
   with `train.steps.create_steps_and_state`) for WRN-28-10, WRN-16-8 and
   WRN-16-4 at batch 128 in bfloat16 and float32: images/s, XLA's FLOP
   count, TFLOP/s achieved and the fraction of the measured peak.
3. peer: the same WRN-28-10 step in PyTorch as its users run it
   (`bench/torch_wrn.py`; on a GPU channels-last, bf16 autocast, cuDNN
   benchmark, eager and then `torch.compile` if it works), images/s, and the
   ratio JAX / PyTorch.
4. loop: `python -m train` with the reference config on the CIFAR-10 archive
   in bfloat16 (jit, donated buffers), for as many epochs as the budget allows
   (at least 2): seconds per epoch, images/s against the bare step, time to
   the first step, test accuracy per epoch, and the projection to the
   reference's 150 epochs.

Before anything imports jax, the kit installs what the machine lacks from the
wheelhouse (`make wheelhouse` fills ``.whl/``) into a temporary directory put
on ``PYTHONPATH`` (``pip install --no-index``), and sets the XLA GPU flags of
JAX's GPU performance tips (``--no-xla-flags`` leaves XLA_FLAGS alone); both
are recorded in the report.
"""

import argparse
import importlib.metadata
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from train import signals

WHEELHOUSE = os.path.join(REPO, ".whl")
DEFAULT_ARCHIVE = os.path.join(REPO, ".data", "cifar10_jpeg.tar.gz")
SHARED_ARCHIVE = os.path.join(
    os.path.dirname(REPO), "shared", "data", "cifar10_jpeg.tar.gz"
)
PARTS = ("machine", "model", "peer", "loop")
# Each part's share of the budget at most; the loop gets what is left.
PART_SHARES = {"machine": 0.1, "model": 0.35, "peer": 0.25, "loop": 1.0}
# XLA flags of JAX's "GPU performance tips" (and NVIDIA's JAX images).
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_triton_gemm_any=true",
)
REFERENCE_EPOCHS = 150
GRACE_S = 10.0  # what a part process gets past its deadline before a kill


# -----------------------------------------------------------------------------
# Set-up, before jax is imported: wheels, XLA flags.


def _distribution_name(wheel_file: str) -> str:
  return wheel_file.split("-", 1)[0].lower().replace("_", "-")


def _installed(distribution: str) -> bool:
  try:
    importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def install_missing_wheels(wheelhouse: str, target: str) -> dict[str, Any]:
  """Installs the wheels of ``wheelhouse`` whose distribution is missing.

  Uses ``pip install --no-index --no-deps --target`` (no network), or unpacks
  the wheels when pip is not there. The caller puts ``target`` on sys.path
  and PYTHONPATH.

  Returns:
    ``{"wheelhouse", "target", "installed": [...], "present": [...]}``.
  """
  wheels = sorted(
      name for name in os.listdir(wheelhouse) if name.endswith(".whl")
  ) if os.path.isdir(wheelhouse) else []
  missing = [w for w in wheels if not _installed(_distribution_name(w))]
  result = {
      "wheelhouse": wheelhouse if wheels else None,
      "target": target if missing else None,
      "installed": [_distribution_name(w) for w in missing],
      "present": [_distribution_name(w) for w in wheels if w not in missing],
  }
  if not missing:
    return result
  os.makedirs(target, exist_ok=True)
  command = [
      sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
      "--disable-pip-version-check", "--target", target,
  ] + [os.path.join(wheelhouse, w) for w in missing]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:  # No pip: a wheel is a zip of what goes in target.
    for wheel in missing:
      with zipfile.ZipFile(os.path.join(wheelhouse, wheel)) as archive:
        archive.extractall(target)
    result["method"] = "unzip (pip failed: " + (
        done.stderr.strip().splitlines() or ["?"])[-1][:200] + ")"
  else:
    result["method"] = "pip --no-index"
  return result


def _jax_accepts_flags(flags: list[str], env: dict[str, str]) -> tuple[
    bool, str]:
  """Starts jax with ``flags`` in XLA_FLAGS in a subprocess; (ok, stderr)."""
  env = dict(env, XLA_FLAGS=" ".join(flags))
  done = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices()"], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  return done.returncode == 0, done.stderr


def choose_xla_flags(env: dict[str, str], use_flags: bool) -> dict[str, Any]:
  """The XLA_FLAGS for every part: the inherited ones plus the GPU flags.

  Flags this jaxlib does not know would abort it, so the set is tried once
  in a subprocess and unknown flags are dropped.
  """
  inherited = env.get("XLA_FLAGS", "").split()
  if not use_flags:
    return {"flags": inherited, "added": [], "dropped": [],
            "note": "--no-xla-flags: XLA_FLAGS left as inherited"}
  added = [f for f in GPU_XLA_FLAGS if f.split("=")[0] not in
           " ".join(inherited)]
  flags, dropped = inherited + added, []
  for _ in range(3):
    ok, stderr = _jax_accepts_flags(flags, env)
    if ok:
      break
    unknown = set(re.findall(r"(--\w+)", stderr.split("Unknown flag")[-1])
                  if "Unknown flag" in stderr else [])
    rejected = [f for f in added if f.split("=")[0] in unknown] or added
    dropped += rejected
    added = [f for f in added if f not in rejected]
    flags = inherited + added
  return {"flags": flags, "added": added, "dropped": dropped}


# -----------------------------------------------------------------------------
# The parts, each run in its own process (`--part NAME`), each writing
# part_NAME.json as it goes.


class PartWriter:
  """Keeps a part's result and rewrites its JSON file after every change."""

  def __init__(self, path: str):
    self.path = path
    self.result: dict[str, Any] = {"status": "running", "dropped": [],
                                   "notes": []}
    self.save()

  def save(self) -> None:
    temporary = self.path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
      json.dump(self.result, f, indent=1, default=str)
    os.replace(temporary, self.path)

  def update(self, **fields) -> None:
    self.result.update(fields)
    self.save()


def matmul_tflops(dtype_name: str, size: int, repeats: int,
                  chain: int) -> dict[str, Any]:
  """TFLOP/s of ``chain`` dependent ``size``² products in one program."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(dtype_name)
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = (jax.random.normal(key_b, (size, size), jnp.float32)
       / math.sqrt(size)).astype(dtype)

  @jax.jit
  def products(x, w):
    return jax.lax.fori_loop(0, chain, lambda _, y: y @ w, x)

  products(a, b).block_until_ready()  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    products(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  flops = 2.0 * size ** 3 * chain
  return {"dtype": dtype_name, "size": size, "chain": chain,
          "best_s": min(times), "tflops": flops / min(times) / 1e12,
          "median_tflops": flops / statistics.median(times) / 1e12}


def _cuda_versions() -> dict[str, Any]:
  """The CUDA backend's version and the installed CUDA wheels' versions.

  From public APIs only: the backend's ``platform_version`` (JAX's extension
  API), each GPU's compute capability, and the versions of the installed
  ``jax-cuda*`` and ``nvidia-*`` distributions (CUDA runtime, cuDNN, ...).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.extend import backend  # pylint: disable=g-import-not-at-top
  versions: dict[str, Any] = {"platform_version": backend.get_backend(
  ).platform_version, "compute_capability": getattr(
      jax.devices()[0], "compute_capability", None)}
  for distribution in importlib.metadata.distributions():
    name = distribution.metadata["Name"] or ""
    if name.lower().startswith(("jax-cuda", "nvidia-")):
      versions[name] = distribution.version
  return versions


def _nvidia_smi() -> str | None:
  if shutil.which("nvidia-smi") is None:
    return None
  done = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
       "clocks.max.sm,power.limit", "--format=csv,noheader"],
      capture_output=True, text=True, timeout=30, check=False)
  return done.stdout.strip() or done.stderr.strip()[:200]


def part_machine(writer: PartWriter, args: argparse.Namespace) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  writer.update(
      backend=jax.default_backend(), device_kind=devices[0].device_kind,
      device_count=len(devices), platform=devices[0].platform,
      jax=jax.__version__, jaxlib=getattr(jaxlib, "__version__", None),
      cuda=_cuda_versions(), nvidia_smi=_nvidia_smi(),
      python=sys.version.split()[0], host_cpus=os.cpu_count(),
      xla_flags=os.environ.get("XLA_FLAGS", ""))
  size, repeats, chain = (256, 2, 2) if args.smoke else (8192, 5, 10)
  peaks = {}
  for dtype in ("bfloat16", "float32"):
    if time.time() > args.deadline - 5:
      writer.result["dropped"].append(f"peak {dtype}: out of time")
      break
    peaks[dtype] = matmul_tflops(dtype, size, repeats, chain)
    writer.update(peak=peaks)
  writer.update(status="done")


def _model_items(smoke: bool) -> list[tuple[str, str]]:
  if smoke:
    return [("wrn-10-1", "bfloat16"), ("wrn-10-1", "float32")]
  return [(name, dtype) for name in ("wrn-28-10", "wrn-16-8", "wrn-16-4")
          for dtype in ("bfloat16", "float32")]


def part_model(writer: PartWriter, args: argparse.Namespace) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.join(REPO, "bench"))
  import model_step  # pylint: disable=g-import-not-at-top

  batch, steps = (8, 2) if args.smoke else (args.batch, 30)
  batch -= batch % jax.device_count()
  writer.update(batch=batch, timed_steps=steps, parallel="jit",
                step="train.steps.create_steps_and_state (reference config): "
                "augmentation, forward, backward, BatchNorm, weight decay, "
                "LCAM; state donated", rows=[])
  items = _model_items(args.smoke)
  last_cost = 0.0
  for index, (name, dtype) in enumerate(items):
    left = args.deadline - time.time()
    if left < 1.2 * last_cost:
      writer.result["dropped"] += [
          f"{n} {d}: not enough time left ({left:.0f} s, the last model "
          f"took {last_cost:.0f} s)" for n, d in items[index:]]
      break
    start = time.perf_counter()
    try:
      row = model_step.benchmark_one(name, dtype, batch, steps, warmup=2)
    except Exception as error:  # pylint: disable=broad-except
      row = {"model": name, "dtype": dtype,
             "error": f"{type(error).__name__}: {str(error)[:300]}"}
    last_cost = time.perf_counter() - start
    row["seconds"] = last_cost
    writer.result["rows"].append(row)
    writer.save()
  writer.update(status="done")


def part_peer(writer: PartWriter, args: argparse.Namespace) -> None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    writer.update(status="skipped", reason="PyTorch is not installed")
    return
  sys.path.insert(0, REPO)
  from bench import peer_timing  # pylint: disable=g-import-not-at-top
  from bench import torch_wrn  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  name = "wrn-10-1" if args.smoke else "wrn-28-10"
  batch, steps = (8, 2) if args.smoke else (args.batch, 30)
  autocast = torch.bfloat16 if cuda else None
  writer.update(
      torch=torch.__version__, device=str(device),
      device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
      model=name, batch=batch, timed_steps=steps,
      setup=("channels-last, bf16 autocast, cudnn.benchmark, SGD momentum "
             "0.9 + weight decay 5e-4 (torch.optim.SGD)") if cuda else
      "CPU, float32, SGD momentum 0.9 + weight decay 5e-4",
      runs={})
  if cuda:
    torch.backends.cudnn.benchmark = True
  synchronize = torch.cuda.synchronize if cuda else (lambda: None)
  torch.manual_seed(0)
  depth, width = torch_wrn.parse_model_name(name)
  memory_format = torch.channels_last if cuda else torch.contiguous_format
  images = torch.randn(batch, 3, 32, 32, device=device).to(
      memory_format=memory_format)
  labels = torch.randint(0, 10, (batch,), device=device)

  def measure(label: str, compiled: bool) -> None:
    model = torch_wrn.WideResNet(depth, width).to(device).to(
        memory_format=memory_format)
    module = torch.compile(model) if compiled else model
    step = torch_wrn.make_train_step(module, autocast_dtype=autocast)
    # make_train_step optimizes module.parameters(): the same tensors.
    start = time.perf_counter()
    for _ in range(3):
      step(images, labels)
    synchronize()
    warmup_s = time.perf_counter() - start
    rate = peer_timing.rate(step, images, labels, steps, batch, synchronize)
    writer.result["runs"][label] = {"images_per_s": rate,
                                    "warmup_s": warmup_s}
    writer.save()

  measure("eager", compiled=False)
  if args.smoke:
    writer.result["notes"].append("smoke: torch.compile not tried")
  elif time.time() > args.deadline - 30:
    writer.result["dropped"].append("torch.compile: out of time")
  else:
    writer.result["notes"].append(
        "torch.compile tried (the part is cut at its deadline if compiling "
        "takes longer; eager stands then)")
    writer.save()
    try:
      measure("compiled", compiled=True)
    except Exception as error:  # pylint: disable=broad-except
      writer.result["notes"].append(
          "torch.compile failed, eager only: "
          f"{type(error).__name__}: {str(error)[:300]}")
  writer.update(status="done")


PARTS_RUN = {"machine": part_machine, "model": part_model, "peer": part_peer}


def run_part(args: argparse.Namespace) -> int:
  """The body of a `--part NAME` process."""
  writer = PartWriter(os.path.join(args.out, f"part_{args.part}.json"))
  try:
    PARTS_RUN[args.part](writer, args)
  except Exception as error:  # pylint: disable=broad-except
    writer.update(status="failed",
                  error=f"{type(error).__name__}: {str(error)[:500]}",
                  traceback=traceback.format_exc()[-3000:])
    return 1
  return 0


# -----------------------------------------------------------------------------
# The orchestrator.


def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _run_with_deadline(command: list[str], env: dict[str, str],
                       deadline: float, log_path: str,
                       cwd: str = REPO) -> dict[str, Any]:
  """Runs a command, killing its process group at ``deadline`` + grace."""
  start = time.time()
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log,
                               stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
      returncode = process.wait(timeout=max(1.0, deadline + GRACE_S - start))
      killed = False
    except subprocess.TimeoutExpired:
      signals.end_process_group(process)
      returncode, killed = process.returncode, True
  return {"returncode": returncode, "killed_at_deadline": killed,
          "seconds": time.time() - start}


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def loop_command(args: argparse.Namespace, workdir: str,
                 source: str) -> list[str]:
  """`python -m train` with the reference config, bf16, jit, on ``source``."""
  command = [
      sys.executable, "-m", "train",
      "--config", os.path.join(REPO, "train", "configs", "reference.py"),
      "--workdir", workdir,
      f"--config.data.source={source}",
      "--config.model.dtype=bfloat16",
      "--config.parallel=jit",  # the state's buffers donated to the step
      "--config.checkpoint_every_steps=0",  # at epoch ends only
      "--config.keep_checkpoints=1",
      "--config.progress=False",
      f"--config.data.cache_dir={os.path.join(workdir, 'cache')}",
  ]
  if args.smoke:
    command += [
        "--config.model.name=wrn-10-1",
        "--config.batch_size=64", "--config.eval_batch_size=64",
        "--config.num_epochs=2", "--config.log_every_steps=2",
    ]
  return command


def run_loop(args: argparse.Namespace, env: dict[str, str], deadline: float,
             bare_images_per_s: float | None) -> dict[str, Any]:
  """Runs the training loop until the budget allows no further epoch."""
  from train import record  # pylint: disable=g-import-not-at-top

  result: dict[str, Any] = {"dropped": [], "notes": []}
  if args.smoke:
    source = "synthetic:num_train=256,num_test=64"
  elif args.data and os.path.exists(args.data):
    source = f"folder:{os.path.abspath(args.data)}"
  else:
    source = "synthetic:cifar10"
    result["notes"].append(
        f"no CIFAR-10 archive at {args.data}: synthetic CIFAR-sized data, so "
        "the test accuracy means nothing")
  workdir = tempfile.mkdtemp(prefix="kit-loop-")
  command = loop_command(args, workdir, source)
  result.update(source=source, command=" ".join(command[1:]))
  start = time.time()
  log_path = os.path.join(args.out, "loop.log")
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT,
                               start_new_session=True)
    arrivals: dict[int, float] = {}
    stop_reason = None
    while process.poll() is None:
      time.sleep(0.5)
      now = time.time()
      try:
        epochs = record.read_metrics(workdir).get(record.EPOCH_KIND, [])
      except (FileNotFoundError, ValueError):
        epochs = []
      for entry in epochs:
        arrivals.setdefault(int(entry[record.EPOCH]), now)
      done = sorted(arrivals)
      if now > deadline:
        stop_reason = "the budget ran out"
      elif len(done) >= 2 and not args.smoke:
        period = arrivals[done[-1]] - arrivals[done[-2]]
        if now + 1.1 * period > deadline:
          stop_reason = (f"another epoch (~{period:.0f} s) would overrun the "
                         "budget")
      if stop_reason:
        signals.end_process_group(process)
        break
  result.update(returncode=process.returncode, wall_s=time.time() - start,
                stopped=stop_reason)
  if process.returncode not in (0, None) and not stop_reason:
    result["log_tail"] = _tail(log_path)
  try:
    records = record.read_metrics(workdir)
  except FileNotFoundError:
    records = {}
  shutil.copy2(os.path.join(workdir, "metrics.jsonl"),
               os.path.join(args.out, "loop_metrics.jsonl")) if os.path.exists(
                   os.path.join(workdir, "metrics.jsonl")) else None
  shutil.rmtree(workdir, ignore_errors=True)
  result.update(summarize_loop(records, arrivals, bare_images_per_s))
  if result.get("epochs_done", 0) < 2:
    result["notes"].append("fewer than 2 epochs: no steady-state figures")
  return result


def summarize_loop(records: dict[str, list[dict[str, Any]]],
                   arrivals: dict[int, float],
                   bare_images_per_s: float | None) -> dict[str, Any]:
  """Per-epoch figures, throughput and the projection to 150 epochs."""
  from train import record  # pylint: disable=g-import-not-at-top
  epochs = records.get(record.EPOCH_KIND, [])
  train = records.get(record.TRAIN_KIND, [])
  run = records.get(record.RUN_KIND, [{}])[0]
  per_epoch = [{field: r.get(field) for field in (
      record.EPOCH, record.TEST_ACCURACY, record.TRAIN_LOSS,
      record.EPOCH_TIME_S)} for r in epochs]
  done = sorted(arrivals)
  periods = [arrivals[b] - arrivals[a] for a, b in itertools.pairwise(done)]
  rates = [r[record.IMAGES_PER_SEC] for r in train
           if r.get(record.IMAGES_PER_SEC) and r.get(record.EPOCH, 0) > 1]
  rates = rates or [r[record.IMAGES_PER_SEC] for r in train
                    if r.get(record.IMAGES_PER_SEC)]
  summary: dict[str, Any] = {
      "epochs_done": len(epochs), "per_epoch": per_epoch,
      "time_to_first_step_s": run.get(record.TIME_TO_FIRST_STEP_S),
      "devices": run.get("devices"),
  }
  steady = [r[record.EPOCH_TIME_S] for r in epochs[1:]
            if r.get(record.EPOCH_TIME_S)]
  if steady:
    summary["epoch_train_s"] = statistics.median(steady)
  if periods:
    summary["epoch_wall_s"] = statistics.median(periods)
  if rates:
    summary["images_per_s"] = statistics.median(rates)
    if bare_images_per_s:
      summary["bare_step_images_per_s"] = bare_images_per_s
      summary["loop_over_bare"] = summary["images_per_s"] / bare_images_per_s
  if periods:
    # Start-up (data, init, compilation), then every epoch at the steady
    # period between epoch records (training, evaluation, checkpoint).
    summary["projected_150_epochs_h"] = (
        (summary["time_to_first_step_s"] or 0.0)
        + REFERENCE_EPOCHS * summary["epoch_wall_s"]) / 3600
  return summary


def _bare_images_per_s(model: dict[str, Any] | None,
                       smoke: bool) -> float | None:
  name = "wrn-10-1" if smoke else "wrn-28-10"
  for row in (model or {}).get("rows", []):
    if row.get("model") == name and row.get("dtype") == "bfloat16":
      return row.get("images_per_s")
  return None


def _add_fractions(report: dict[str, Any]) -> None:
  """TFLOP/s and the fraction of the measured peak of each model row."""
  peak = (report.get("machine") or {}).get("peak", {})
  for row in (report.get("model") or {}).get("rows", []):
    if row.get("flops_per_s"):
      row["tflops"] = row["flops_per_s"] / 1e12
      dtype_peak = peak.get(row["dtype"], {}).get("tflops")
      if dtype_peak:
        row["fraction_of_peak"] = row["tflops"] / dtype_peak
  peer = report.get("peer") or {}
  torch_rates = [r["images_per_s"] for r in peer.get("runs", {}).values()]
  jax_rate = _bare_images_per_s(report.get("model"), report["kit"]["smoke"])
  if torch_rates and jax_rate:
    peer["jax_images_per_s"] = jax_rate
    peer["jax_over_pytorch"] = jax_rate / max(torch_rates)


def _fmt(value: Any, spec: str = ".1f", none: str = "—") -> str:
  if value is None:
    return none
  try:
    return format(value, spec)
  except (TypeError, ValueError):
    return str(value)


def format_markdown(report: dict[str, Any]) -> str:
  """The report as Markdown: one short section per part."""
  kit, machine = report["kit"], report.get("machine") or {}
  lines = ["# Accelerator report", ""]
  lines.append(
      f"{machine.get('device_count', '?')} x {machine.get('device_kind', '?')}"
      f" ({machine.get('backend', '?')}), jax {machine.get('jax', '?')}, "
      f"jaxlib {machine.get('jaxlib', '?')}, Python "
      f"{machine.get('python', '?')}; budget {kit['budget_s']:.0f} s, used "
      f"{kit['elapsed_s']:.0f} s{' (smoke)' if kit['smoke'] else ''}.")
  if machine.get("cuda"):
    lines.append(f"CUDA: {machine['cuda']}; nvidia-smi: "
                 f"{machine.get('nvidia_smi')}")
  lines.append(f"XLA_FLAGS: `{' '.join(kit['xla']['flags']) or '(none)'}`"
               + (f"; dropped as unknown: {kit['xla']['dropped']}"
                  if kit["xla"].get("dropped") else ""))
  lines.append(f"Wheels installed from the wheelhouse: "
               f"{kit['wheels'].get('installed') or 'none needed'}")
  lines += ["", "## Machine", ""]
  for dtype, peak in machine.get("peak", {}).items():
    lines.append(f"- {dtype} matmul {peak['size']}x{peak['size']}: "
                 f"{peak['tflops']:.3g} TFLOP/s (best of "
                 f"{peak['chain']}-product chains)")
  lines += ["", "## Model: the harness's train step", ""]
  model = report.get("model") or {}
  if model.get("rows"):
    lines += [f"batch {model.get('batch')}, {model.get('step')}", "",
              "| model | dtype | img/s | step ms | compile s | GFLOP/img | "
              "TFLOP/s | of peak |", "| --- | --- | ---: | ---: | ---: | ---: "
              "| ---: | ---: |"]
    for row in model["rows"]:
      if "error" in row:
        lines.append(f"| {row['model']} | {row['dtype']} | failed: "
                     f"{row['error'][:80]} | | | | | |")
        continue
      per_image = (row["flops"] * row["devices"] / row["batch"] / 1e9
                   if row.get("flops") else None)
      lines.append(
          f"| {row['model']} | {row['dtype']} | {_fmt(row['images_per_s'])} "
          f"| {_fmt(row['step_ms'], '.2f')} | {_fmt(row['compile_s'])} | "
          f"{_fmt(per_image, '.3g')} | {_fmt(row.get('tflops'), '.3g')} | "
          f"{_fmt(row.get('fraction_of_peak'), '.0%')} |")
  lines += ["", "## Peer: the same step in PyTorch", ""]
  peer = report.get("peer") or {}
  if peer.get("status") not in (None, "done") and not peer.get("runs"):
    lines.append(f"{peer.get('status')}: {peer.get('reason') or ''}".strip())
  if peer.get("runs"):
    lines.append(f"{peer.get('model')} batch {peer.get('batch')}, torch "
                 f"{peer.get('torch')} on {peer.get('device_name')}: "
                 f"{peer.get('setup')}")
    for label, run in peer["runs"].items():
      lines.append(f"- {label}: {run['images_per_s']:.1f} img/s "
                   f"(first 3 steps {run['warmup_s']:.1f} s)")
    if peer.get("jax_over_pytorch"):
      lines.append(f"- JAX bf16 {peer['jax_images_per_s']:.1f} img/s; "
                   f"ratio JAX / PyTorch (best): "
                   f"{peer['jax_over_pytorch']:.2f}")
  lines += ["", "## Loop: `python -m train`, reference config, bf16", ""]
  loop = report.get("loop") or {}
  if "epochs_done" in loop:
    lines.append(f"data `{loop.get('source')}`; {loop['epochs_done']} epochs"
                 f" ({loop.get('stopped') or 'finished'})")
    lines.append(f"- time to first step: "
                 f"{_fmt(loop.get('time_to_first_step_s'))} s")
    lines.append(f"- per epoch: {_fmt(loop.get('epoch_train_s'))} s training,"
                 f" {_fmt(loop.get('epoch_wall_s'))} s wall (with evaluation "
                 "and checkpoint)")
    lines.append(f"- loop {_fmt(loop.get('images_per_s'))} img/s against the "
                 f"bare step's {_fmt(loop.get('bare_step_images_per_s'))}: "
                 f"ratio {_fmt(loop.get('loop_over_bare'), '.3f')}")
    lines.append(f"- projected {REFERENCE_EPOCHS} epochs: "
                 f"{_fmt(loop.get('projected_150_epochs_h'), '.2f')} h")
    for epoch in loop.get("per_epoch", []):
      lines.append(f"  - epoch {epoch['epoch']}: test accuracy "
                   f"{_fmt(epoch['test_accuracy'], '.2%')}, train loss "
                   f"{_fmt(epoch['train_loss'], '.4f')}, "
                   f"{_fmt(epoch['epoch_time_s'])} s")
  lines += ["", "## Dropped, skipped and notes", ""]
  for part in PARTS:
    section = report.get(part) or {}
    for item in section.get("dropped", []):
      lines.append(f"- {part}: dropped {item}")
    for note in section.get("notes", []):
      lines.append(f"- {part}: {note}")
    if section.get("status") not in (None, "done"):
      lines.append(f"- {part}: {section.get('status')} "
                   f"{section.get('reason') or section.get('error') or ''}")
  return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="report directory")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="seconds for everything (default 480; smoke 300)")
  parser.add_argument("--smoke", action="store_true",
                      help="the CPU, WRN-10-1, synthetic data, a few steps")
  parser.add_argument("--data", default=None,
                      help=f"CIFAR-10 archive (default {DEFAULT_ARCHIVE})")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--parts", default=",".join(PARTS),
                      help="comma-separated subset of " + ",".join(PARTS))
  parser.add_argument("--no-xla-flags", action="store_true",
                      help="leave XLA_FLAGS as inherited")
  parser.add_argument("--wheelhouse", default=WHEELHOUSE)
  # Internal: run one part in this process.
  parser.add_argument("--part", choices=tuple(PARTS_RUN),
                      help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.budget_s is None:
    args.budget_s = 300.0 if args.smoke else 480.0
  if args.data is None:
    args.data = next((p for p in (DEFAULT_ARCHIVE, SHARED_ARCHIVE)
                      if os.path.exists(p)), DEFAULT_ARCHIVE)
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.part:
    return run_part(args)
  start = time.time()
  deadline = start + args.budget_s
  env = dict(os.environ)
  if args.smoke:
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # compiles in seconds
  # The harness from this checkout, then what the wheelhouse adds.
  site = tempfile.mkdtemp(prefix="optax-lcam-kit-site-")
  wheels = install_missing_wheels(args.wheelhouse, site)
  paths = [REPO] + ([site] if wheels["target"] else [])
  env["PYTHONPATH"] = os.pathsep.join(
      paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  sys.path[:0] = paths
  xla = choose_xla_flags(env, use_flags=not args.no_xla_flags)
  env["XLA_FLAGS"] = " ".join(xla["flags"])
  report: dict[str, Any] = {"kit": {
      "smoke": args.smoke, "budget_s": args.budget_s, "wheels": wheels,
      "xla": xla, "parts": {}, "command": " ".join(sys.argv)}}
  wanted = [p for p in args.parts.split(",") if p]
  for part in PARTS:
    left = deadline - time.time()
    if part not in wanted:
      report[part] = {"status": "skipped", "reason": "not in --parts",
                      "dropped": [], "notes": []}
      continue
    if left < (5 if args.smoke else 20):
      report[part] = {"status": "dropped", "dropped": [],
                      "notes": [f"only {left:.0f} s of the budget left"]}
      continue
    part_deadline = time.time() + PART_SHARES[part] * left
    print(f"[kit] {part}: up to {part_deadline - time.time():.0f} s",
          flush=True)
    if part == "loop":
      report[part] = run_loop(
          args, env, part_deadline,
          _bare_images_per_s(report.get("model"), args.smoke))
      report[part]["status"] = "done"
    else:
      command = [sys.executable, os.path.abspath(__file__), "--part", part,
                 "--deadline", str(part_deadline), "--out", args.out,
                 "--batch", str(args.batch)] + (["--smoke"] if args.smoke
                                                else [])
      log_path = os.path.join(args.out, f"{part}.log")
      run = _run_with_deadline(command, env, part_deadline, log_path)
      result = _read_json(os.path.join(args.out, f"part_{part}.json")) or {
          "status": "failed", "dropped": [], "notes": []}
      if run["killed_at_deadline"]:
        result["status"] = "cut at its deadline"
        result["dropped"].append("the rest of the part (out of time)")
      elif run["returncode"] != 0 and result.get("status") == "running":
        result["status"] = "failed"
        result["log_tail"] = _tail(log_path)
      report[part] = result
      report["kit"]["parts"][part] = run
    print(f"[kit] {part}: {report[part].get('status')}", flush=True)
  report["kit"]["elapsed_s"] = time.time() - start
  _add_fractions(report)
  with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, default=str)
  markdown = format_markdown(report)
  with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  print(markdown, flush=True)
  shutil.rmtree(site, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
