"""Kills a tiny run at random moments, damages its checkpoints, resumes it.

Each trial trains the tiny config (two epochs of WRN-10-1 on synthetic data)
in a fresh workdir through the command line. It stops the run a few times,
each with SIGKILL, SIGTERM or SIGINT at a random moment after it saves its
first new checkpoint, and damages the newest checkpoint (64 bytes flipped in,
or half cut off, its largest file) before half of the next attempts and
before the last one. Then it lets the run finish and compares the final
checkpoint with that of an uninterrupted run, bit for bit.

A damaged checkpoint must be set aside with a fallback to an older one; when
none is intact, the run must stop with one ``error:`` line (the trial then
moves the checkpoints away, as that line says, and starts again). Every
attempt must end in success, in a signal's exit code or in one ``error:``
line, never in a traceback. Prints the counts and exits 1 on any mismatch.

Then, where ``mount`` is allowed (root, or a container that permits it), it
fills a small disk: a run whose workdir is on a 1.5 MiB tmpfs must stop with
one ``error:`` line about the full disk, and the workdir, copied to a roomy
disk, must resume to the uninterrupted run's arrays. Where ``mount`` is not
allowed, it says so and skips that part (``--no-disk`` skips it always).

Last, a tiny study (two arms, one seed) under the same treatment
(``--no-study`` skips it): its runner killed with SIGKILL at a random moment
and run again; a second runner started beside the first (refused at once, in
one line); the records of two finished runs damaged (a last line cut, a
``config.json`` deleted) and the study run again; ``summarize`` on a full
disk (one line, the old summary kept). Every run must end with the numbers
of an undisturbed study's runs (`python -m study compare`).

  python bench/chaos.py [--trials 5] [--stops 3] [--seed 0] [--no-disk]
      [--no-study]
"""

import argparse
import collections
import contextlib
import functools
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = Path(__file__).resolve().parents[1]
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
# Exit codes of a run stopped by each signal: killed (SIGTERM too, when it
# comes before the loop's handler is set or after the loop), or saved and
# exited.
STOPPED = {-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM,
           128 + signal.SIGINT}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=5)
  parser.add_argument("--stops", type=int, default=3,
                      help="interruptions per trial")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-disk", action="store_true",
                      help="skip the full-disk part")
  parser.add_argument("--no-study", action="store_true",
                      help="skip the study part")
  parser.add_argument("--max-delay", type=float, default=None,
                      help="longest wait, in seconds after a run's first "
                      "new checkpoint, before a signal (default: as long as "
                      "an uninterrupted run trains after its first)")
  return parser.parse_args(argv)


def environment() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              XLA_FLAGS="--xla_force_host_platform_device_count=8",
              JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def train_command(workdir: Path) -> list[str]:
  return [sys.executable, "-m", "train", "--config",
          str(REPO / "train/configs/tiny.py"), "--workdir", str(workdir)]


def _problems(returncode: int, stderr: str) -> list[str]:
  """What is wrong with how an attempt ended (empty when nothing is)."""
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  problems = ["traceback"] if "Traceback" in stderr else []
  if returncode == 1 and len(errors) != 1:
    problems.append(f"{len(errors)} error lines")
  if returncode not in STOPPED | {0, 1}:
    problems.append(f"exit code {returncode}")
  return problems


def _steps(workdir: Path) -> set[int]:
  directory = workdir / "checkpoints"
  return {int(p.name) for p in directory.glob("*") if p.name.isdigit()}


def attempt(workdir: Path, delay: float | None, signum: int | None):
  """Runs the command; sends ``signum`` ``delay`` s after the run's first
  new checkpoint.

  Returns:
    The exit code, the standard error and the seconds from the first new
    checkpoint to the exit.
  """
  before = _steps(workdir)
  process = subprocess.Popen(train_command(workdir), env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
  errors = []
  reader = threading.Thread(target=lambda: errors.append(
      process.stderr.read()))
  reader.start()
  while process.poll() is None and not _steps(workdir) - before:
    time.sleep(0.05)
  saved = time.monotonic()
  if signum is not None and process.poll() is None:
    time.sleep(delay)
    if process.poll() is None:
      process.send_signal(signum)
  process.wait(timeout=600)
  reader.join()
  return process.returncode, "".join(errors), time.monotonic() - saved


def damage(workdir: Path, rng: random.Random) -> str | None:
  """Flips or cuts the largest file of the newest checkpoint; says which."""
  steps = sorted(_steps(workdir))
  if not steps:
    return None
  step_dir = workdir / "checkpoints" / str(steps[-1])
  files = [f for f in step_dir.rglob("*") if f.is_file()
           and f.parent.name == "d"]
  if not files:
    return None
  target = max(files, key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  if rng.random() < 0.5:
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    kind = "flipped"
  else:
    data = data[:len(data) // 2]
    kind = "truncated"
  target.write_bytes(bytes(data))
  return kind


def final_arrays(workdir: Path) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from train import checkpoints  # pylint: disable=g-import-not-at-top
  flat, _ = jax.tree_util.tree_flatten_with_path(
      checkpoints.load_state(str(workdir)))
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def same_arrays(a: dict, b: dict) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return a.keys() == b.keys() and all(
      np.array_equal(a[k], b[k]) for k in a)


def trial(workdir: Path, reference: dict, stops: int, max_delay: float,
          rng: random.Random, counts: collections.Counter) -> bool:
  """One workdir stopped ``stops`` times, then finished; True if it ends
  with the reference's arrays and every attempt ended cleanly."""
  clean = True
  for number in range(stops):
    signum = rng.choice(SIGNALS)
    returncode, stderr, _ = attempt(workdir, rng.uniform(0, max_delay),
                                    signum)
    counts[signal.Signals(signum).name] += 1
    counts["set aside"] += stderr.count("Damaged checkpoint")
    problems = _problems(returncode, stderr)
    if problems:
      print(f"  {signal.Signals(signum).name}: {problems}\n{stderr[-2000:]}")
      clean = False
    if "No intact checkpoint" in stderr:
      counts["no intact checkpoint"] += 1
      shutil.rmtree(workdir / "checkpoints")
    last = number == stops - 1
    if (rng.random() < 0.5 or last) and (kind := damage(workdir, rng)):
      counts[f"checkpoint {kind}"] += 1
  for _ in range(3):  # The last damage may leave no intact checkpoint.
    returncode, stderr, _ = attempt(workdir, None, None)
    counts["set aside"] += stderr.count("Damaged checkpoint")
    if "No intact checkpoint" in stderr:
      counts["no intact checkpoint"] += 1
      shutil.rmtree(workdir / "checkpoints")
      continue
    break
  if returncode != 0 or _problems(returncode, stderr):
    print(f"  final attempt: exit {returncode}\n{stderr[-2000:]}")
    return False
  return clean and same_arrays(final_arrays(workdir), reference)


def full_disk(root: Path, reference: dict,
              counts: collections.Counter) -> bool:
  """A run on a 1.5 MiB tmpfs: one error line, then an exact resume.

  Returns:
    False on a failure; True when it passed or mount is not allowed here.
  """
  disk = root / "small_disk"
  disk.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(disk)],
      capture_output=True, text=True, check=False)
  if mounted.returncode:
    print("full disk: skipped, mount is not allowed here "
          f"({(mounted.stderr or mounted.stdout).strip()})")
    counts["full disk skipped"] += 1
    return True
  try:
    returncode, stderr, _ = attempt(disk / "run", None, None)
    errors = [line for line in stderr.splitlines()
              if line.startswith("error:")]
    clean = (returncode == 1 and len(errors) == 1
             and "No space left" in errors[0] and not _problems(
                 returncode, stderr))
    print(f"full disk: exit {returncode}; "
          f"{errors[0] if errors else stderr[-2000:]}")
    shutil.copytree(disk / "run", root / "roomy")
  finally:
    subprocess.run(["umount", str(disk)], check=False)
  returncode, stderr, _ = attempt(root / "roomy", None, None)
  same = returncode == 0 and same_arrays(final_arrays(root / "roomy"),
                                         reference)
  counts["full disk: one error line" if clean else "full disk: NOT CLEAN"] += 1
  counts["full disk: resumed the same" if same else "full disk: DIFFERENT"] += 1
  return clean and same


STUDY = """
import ml_collections
def get_study():
  return ml_collections.ConfigDict({
      "config": "train/configs/tiny.py", "overrides": {"num_epochs": 1},
      "arms": {"sgd": {"optimizer.name": "sgd"}, "lcam": {}}, "seeds": [0],
      "baseline": "sgd"}, allow_dotted_keys=True)
"""


def study_command(study_file: Path, workdir: Path, *rest: str) -> list[str]:
  return [sys.executable, "-m", "study", *rest, *(
      [str(study_file), "--workdir"] if rest[0] == "run" else []),
          str(workdir)]


def _same_runs(workdir: Path, reference: Path) -> bool:
  """Whether every run of the study made the reference study's numbers."""
  from train import record  # pylint: disable=g-import-not-at-top
  return all(not record.differences(
      workdir / arm / "seed0", reference / arm / "seed0",
      kinds=(record.EPOCH_KIND,))[1] for arm in ("sgd", "lcam"))


def _wait_until_free(workdir: Path, timeout_s: float = 120.0) -> None:
  """Waits until no run holds its workdir's lock."""
  from train import devices  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + timeout_s
  for run in workdir.glob("*/seed0"):
    while time.monotonic() < deadline:
      try:
        with devices.hold(str(run)):
          break
      except devices.WorkdirBusyError:
        time.sleep(0.2)


def study_chaos(root: Path, rng: random.Random,
                counts: collections.Counter) -> bool:
  """The study-level cases (see the module's docstring); True if all pass."""
  study_file = root / "chaos_study.py"
  study_file.write_text(STUDY)
  run = functools.partial(subprocess.run, env=environment(), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
  reference = root / "study_reference"
  if run(study_command(study_file, reference, "run")).returncode:
    print("study: the undisturbed study failed")
    return False
  workdir = root / "study_chaos"
  first = subprocess.Popen(study_command(study_file, workdir, "run"),
                           env=environment(), cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
  while first.poll() is None and not list(workdir.glob("*/seed0/train.log")):
    time.sleep(0.05)
  second = run(study_command(study_file, workdir, "run"))
  refused = second.returncode == 1 and second.stderr.startswith(
      "error: the study in") and len(second.stderr.splitlines()) == 1
  counts["study: second runner refused" if refused else
         "study: second runner NOT REFUSED"] += 1
  time.sleep(rng.uniform(0.0, 20.0))
  os.killpg(first.pid, signal.SIGKILL)
  first.communicate(timeout=60)
  _wait_until_free(workdir)  # The runs save and end on the runner's death.
  again = run(study_command(study_file, workdir, "run"))
  killed_ok = again.returncode == 0 and _same_runs(workdir, reference)
  counts["study: killed runner resumed the same" if killed_ok else
         "study: killed runner DIFFERENT"] += 1
  metrics = workdir / "sgd" / "seed0" / "metrics.jsonl"
  metrics.write_bytes(metrics.read_bytes()[:-20])  # A cut last line.
  (workdir / "lcam" / "seed0" / "config.json").unlink()
  listed = run(study_command(study_file, workdir, "summarize"))
  repaired = run(study_command(study_file, workdir, "run"))
  damaged_ok = ("Unfinished runs" in listed.stdout and listed.returncode == 0
                and repaired.returncode == 0 and _same_runs(workdir,
                                                            reference))
  counts["study: damaged records repaired" if damaged_ok else
         "study: damaged records NOT REPAIRED"] += 1
  return refused and killed_ok and damaged_ok and study_full_disk(
      root, workdir, run, counts)


def study_full_disk(root: Path, workdir: Path, run, counts) -> bool:
  """``summarize`` of a study on a full tmpfs: one line, old files kept."""
  disk = root / "study_disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                     str(disk)], capture_output=True, check=False).returncode:
    counts["study full disk skipped"] += 1
    return True
  try:
    shutil.copytree(workdir, disk / "study", ignore=shutil.ignore_patterns(
        "checkpoints", "tensorboard", "train.log"))
    old = (disk / "study" / "summary.md").read_bytes()
    with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(
        OSError):
      while True:
        f.write(b"\0" * 65536)
    result = run(study_command(Path(), disk / "study", "summarize"))
    errors = [line for line in result.stderr.splitlines()
              if not line.startswith("warning:")]
    clean = (result.returncode == 1 and len(errors) == 1 and errors[
        0].startswith("error: the summary is not saved") and (
            disk / "study" / "summary.md").read_bytes() == old)
    if not clean:
      print(f"study full disk: exit {result.returncode}\n{result.stderr}")
  finally:
    subprocess.run(["umount", str(disk)], check=False)
  counts["study full disk: one line, old summary kept" if clean else
         "study full disk: NOT CLEAN"] += 1
  return clean


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.update(environment())
  sys.path.insert(0, str(REPO))
  rng = random.Random(args.seed)
  counts = collections.Counter()
  with tempfile.TemporaryDirectory() as root:
    straight = Path(root, "straight")
    returncode, stderr, duration = attempt(straight, None, None)
    if returncode:
      print(stderr[-3000:])
      return 1
    reference = final_arrays(straight)
    max_delay = args.max_delay or duration
    for number in range(args.trials):
      workdir = Path(root, f"trial_{number}")
      same = trial(workdir, reference, args.stops, max_delay, rng, counts)
      counts["same as uninterrupted" if same else "DIFFERENT"] += 1
      print(f"trial {number + 1} of {args.trials}: "
            f"{'same' if same else 'DIFFERENT'}", flush=True)
    disk_ok = args.no_disk or full_disk(Path(root), reference, counts)
    study_ok = args.no_study or study_chaos(Path(root), rng, counts)
  print(", ".join(f"{name}: {n}" for name, n in sorted(counts.items())))
  return 1 if counts["DIFFERENT"] or not disk_ok or not study_ok else 0


if __name__ == "__main__":
  sys.exit(main())
