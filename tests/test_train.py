"""End-to-end tests of the training loop on 8 CPU devices with the tiny WRN."""

import importlib.util
import json
import logging
import os
from pathlib import Path
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from PIL import Image
import pytest

import models
import optax_lcam
from study import plot
from train import checkpoints
from train import checksums
from train import config as config_lib
from train import data
from train import devices
from train import evaluate
from train import loop
from train import main
from train import optimizers
from train import provenance
from train import record as record_lib
from train import steps
from train.configs import tiny

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  config = tiny.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def _flat(tree) -> dict:
  """The arrays of a pytree as a flat dict, keyed by their paths."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def final_arrays(workdir, step=None) -> dict:
  """The arrays of a checkpoint (the latest by default), as a flat dict."""
  return _flat(checkpoints.load_state(str(workdir), step))


def _checkpoint_meta(workdir, step) -> dict:
  manager = ocp.CheckpointManager(Path(workdir, "checkpoints").resolve())
  meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]
  manager.close()
  return meta


def assert_same_arrays(a, b, **tolerance):
  assert a.keys() == b.keys()
  for key in a:
    if tolerance:
      np.testing.assert_allclose(a[key], b[key], err_msg=key, **tolerance)
    else:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
  """A small image folder whose classes are learnable: one colour a class.

  Six epochs of eight steps let the BatchNorm running statistics catch up,
  so that the test accuracy is high too.
  """
  root = tmp_path_factory.mktemp("colours")
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, size=(4, 3))
  for split, per_class in (("train", 32), ("test", 8)):
    for label, colour in enumerate(palette):
      folder = root / split / f"class_{label}"
      folder.mkdir(parents=True)
      for i in range(per_class):
        noise = rng.integers(-40, 40, size=(32, 32, 3))
        image = np.clip(colour + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """Two epochs of the tiny config, in one go."""
  workdir = tmp_path_factory.mktemp("straight")
  loop.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def test_loss_falls_and_outputs_are_written(colour_folder, tmp_path):
  config = tiny_config(**{"data.source": f"folder:{colour_folder}",
                          "data.cache_dir": str(tmp_path / "cache"),
                          "num_epochs": 6, "batch_size": 32,
                          "schedule.learning_rate": 0.05})
  loop.train_and_evaluate(config, str(tmp_path))
  records = record_lib.read_metrics(tmp_path)
  epochs = records["epoch"]
  assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
  assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
  assert epochs[-1]["test_accuracy"] > 0.9
  for record in epochs:
    assert record["phase_below_fraction"] + record["phase_above_fraction"] == (
        pytest.approx(1.0))
  train_records = records["train"]
  assert train_records and {"loss", "learning_rate", "beta", "mean_loss",
                            "images_per_sec"} <= train_records[-1].keys()
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["name"] == "wrn-10-1"
  if importlib.util.find_spec("tensorboardX"):
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "checkpoints").is_dir()


def _resume_and_compare(workdir, straight_run):
  """Resumes the tiny run in ``workdir``; its arrays and epoch records must be
  the uninterrupted run's. Returns the resumed run's epoch records."""
  loop.train_and_evaluate(tiny_config(), str(workdir))
  assert_same_arrays(final_arrays(workdir), final_arrays(straight_run))
  epochs = record_lib.read_metrics(workdir)["epoch"]
  straight_epochs = record_lib.read_metrics(straight_run)["epoch"]
  for resumed, straight in zip(epochs, straight_epochs, strict=True):
    for key in ("train_loss", "phase_below_fraction", "test_accuracy"):
      assert resumed[key] == straight[key], key
  return epochs


def test_resume_mid_epoch_is_exact(straight_run, tmp_path):
  # 4 steps an epoch: stop after 1.5 epochs, then resume for the rest.
  loop.train_and_evaluate(tiny_config(stop_after_steps=6), str(tmp_path))
  assert checkpoints.Checkpointer(str(tmp_path / "checkpoints"),
                                  tiny_config()).latest_step() == 6
  before_resume = _checkpoint_meta(tmp_path, 6)["epoch_elapsed_s"]
  epochs = _resume_and_compare(tmp_path, straight_run)
  # The resumed epoch's time includes the part before the interruption.
  assert 0 < before_resume < epochs[1]["epoch_time_s"]


def test_a_run_killed_while_saving_resumes_from_the_previous_checkpoint(
    straight_run, tmp_path):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  ckpt_dir = tmp_path / "checkpoints"
  latest = max(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  # What a kill in the middle of Orbax's save of a later step leaves.
  partial = ckpt_dir / f"{latest + 1}.orbax-checkpoint-tmp-1234567"
  shutil.copytree(ckpt_dir / str(latest), partial)
  for f in list(partial.rglob("*"))[::2]:
    if f.is_file():
      f.write_bytes(b"garbage")
  checkpointer = checkpoints.Checkpointer(str(ckpt_dir), tiny_config())
  assert checkpointer.latest_step() == latest
  checkpointer.close()
  state = loop.train_and_evaluate(tiny_config(), str(tmp_path))
  assert int(jax.device_get(state.step)) == latest


def _largest_file(directory: Path) -> Path:
  return max((f for f in directory.rglob("*") if f.is_file()),
             key=lambda f: f.stat().st_size)


def _flip_bytes(path: Path) -> None:
  """Overwrites 64 bytes in the middle of ``path`` with their complement."""
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
  path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def test_checksums_cover_every_file_of_the_items(straight_run):
  step_dir = straight_run / "checkpoints" / "8"
  listed = json.loads((step_dir / checksums.FILENAME).read_text())
  assert listed["version"] == 1 and listed["algorithm"] == "sha256"
  item_files = {str(f.relative_to(step_dir)) for item in ("state", "meta")
                for f in (step_dir / item).rglob("*") if f.is_file()}
  assert set(listed["files"]) == item_files
  assert checkpoints.verify_checksums(str(step_dir))


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_falls_back(
    straight_run, tmp_path, damage, caplog):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  ckpt_dir = tmp_path / "checkpoints"
  damage(_largest_file(ckpt_dir / "8"))
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(tiny_config(), str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING
              and "checkpoint" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert re.search(r"step 8 \(.*\) moved to .*corrupt/8; resuming from step "
                   r"6\.$", warnings[0]), warnings[0]
  assert (ckpt_dir / "corrupt" / "8").is_dir()
  # Steps 7 and 8 again, from the intact checkpoint of step 6.
  assert_same_arrays(final_arrays(tmp_path), final_arrays(straight_run))


def test_no_intact_checkpoint_is_a_clear_error_and_moves_nothing(
    straight_run, tmp_path):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  ckpt_dir = tmp_path / "checkpoints"
  steps = checkpoints.committed_steps(str(ckpt_dir))
  for step in steps:
    _flip_bytes(_largest_file(ckpt_dir / str(step)))
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r"^No intact checkpoint in .*: step 8: .*SHA-256"):
    loop.train_and_evaluate(tiny_config(), str(tmp_path))
  assert checkpoints.committed_steps(str(ckpt_dir)) == steps
  with pytest.raises(checkpoints.DamagedCheckpointError, match="damaged"):
    checkpoints.load_state(str(tmp_path))


def test_a_checkpoint_without_checksums_is_used_with_a_warning(
    straight_run, tmp_path, caplog):
  loop.train_and_evaluate(tiny_config(stop_after_steps=6), str(tmp_path))
  for step_dir in (tmp_path / "checkpoints").iterdir():
    (step_dir / checksums.FILENAME).unlink()
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(tiny_config(), str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING
              and "checkpoint" in r.getMessage()]
  assert len(warnings) == 1 and "step 6" in warnings[0] and (
      "no checksums" in warnings[0]), warnings
  assert_same_arrays(final_arrays(tmp_path), final_arrays(straight_run))


def test_a_newer_checksum_format_is_not_taken_for_damage(straight_run,
                                                         tmp_path):
  shutil.copytree(straight_run / "checkpoints" / "8", tmp_path / "8")
  path = tmp_path / "8" / checksums.FILENAME
  path.write_text(json.dumps({**json.loads(path.read_text()), "version": 2}))
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match="version 2"):
    checkpoints.verify_checksums(str(tmp_path / "8"))


def test_a_checkpoint_with_the_epoch_sums_in_its_state_resumes(straight_run,
                                                               tmp_path):
  # Before the host kept them, the train state held the epoch's sums (float32
  # arrays) and the meta data did not: such a checkpoint inside an epoch.
  loop.train_and_evaluate(tiny_config(stop_after_steps=6), str(tmp_path))
  state = checkpoints.load_state(str(tmp_path))
  meta = _checkpoint_meta(tmp_path, 6)
  sums = {name: np.float32(value)
          for name, value in meta.pop("epoch_sums").items()
          if name != "loss_below_mean"}
  assert sums["steps"] == 2
  directory = (tmp_path / "checkpoints").resolve()
  shutil.rmtree(directory)
  with ocp.CheckpointManager(directory) as manager:
    manager.save(6, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(jax.tree.map(
            jnp.asarray, {**state, "epoch_sums": sums})),
        meta=ocp.args.JsonSave(meta)))
  _resume_and_compare(tmp_path, straight_run)


@pytest.mark.parametrize("dropout_rate", [0.0, 0.3])
def test_pmap_and_jit_agree(dropout_rate, tmp_path):
  # With dropout both draw the same mask for each example.
  config = tiny_config(**{"stop_after_steps": 3,
                          "model.dropout_rate": dropout_rate})
  loop.train_and_evaluate(config, str(tmp_path / "pmap"))
  config.parallel = "jit"
  loop.train_and_evaluate(config, str(tmp_path / "jit"))
  pmap, jit = final_arrays(tmp_path / "pmap"), final_arrays(tmp_path / "jit")
  assert pmap.keys() == jit.keys()
  for key in pmap:
    # The two sum the gradients over the devices in another order. The
    # gradient before BatchNorm is a sum with much cancellation, so single
    # momentum entries differ by up to 1.4e-5 with jax 0.10 and by up to 20%
    # of a small entry with jax 0.12 (whose pmap is jit with shard_map); the
    # momentum is compared as a whole (1% of its norm: a wrong beta, batch or
    # mask differs by all of it), the parameters entry by entry, to what
    # three steps at lr 0.01 make of those differences (1e-5).
    if "momentum" in key:
      difference = np.linalg.norm(pmap[key] - jit[key])
      assert difference <= 1e-2 * np.linalg.norm(jit[key]) + 5e-5, key
    else:
      np.testing.assert_allclose(pmap[key], jit[key], rtol=1e-5, atol=1e-5,
                                 err_msg=key)


@pytest.mark.parametrize("parallel", ["pmap", "jit"])
def test_the_train_step_donates_the_state(parallel):
  # The new state takes the old one's buffers: a device holds it once.
  config = tiny_config(parallel=parallel)
  split = data.load_split(config.data.source, "train")
  wrapped, state = steps.create_steps_and_state(config, split, 4)
  state = wrapped.put_state(state)
  batch = wrapped.put_batch(next(data.train_batches(split, config.batch_size,
                                                 seed=0, epoch=0)))
  new_state, _ = wrapped.train_step(state, batch)
  # LCAM's `beta` is the logged copy of the beta decided at the last step; the
  # step chooses it again from the phase flags, so reads no old `beta` (a
  # scalar) to donate.
  read = [x for path, x in jax.tree_util.tree_leaves_with_path(state)
          if jax.tree_util.keystr(path) != ".opt_state[1].beta"]
  assert len(read) == len(jax.tree.leaves(state)) - 1
  assert all(x.is_deleted() for x in read)
  assert not any(x.is_deleted() for x in jax.tree.leaves(new_state))


def test_mock_tfds_data_with_bfloat16_compute(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from test_data import _random_examples  # pylint: disable=g-import-not-at-top
  from test_data import _write_prepared_cifar10_metadata  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tfds"
  _write_prepared_cifar10_metadata(data_dir)
  # The mock dataset has 20 training examples: a batch of 16 fits.
  config = tiny_config(**{"data.source": "tfds:cifar10", "num_epochs": 1,
                          "model.dtype": "bfloat16", "batch_size": 16,
                          "eval_batch_size": 16,
                          "data.data_dir": str(data_dir)})
  with tfds.testing.mock_data(data_dir=str(data_dir),
                              policy=tfds.testing.MockPolicy.USE_FILES,
                              as_data_source_fn=_random_examples):
    state = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert record_lib.read_metrics(tmp_path / "run")["train"]
  # bf16 compute; parameters, statistics and optimizer state stay float32.
  for leaf in jax.tree.leaves((state.params, state.batch_stats,
                               state.opt_state)):
    assert leaf.dtype in (np.float32, np.int32, np.bool_), leaf.dtype


@pytest.mark.parametrize("parallel", ["pmap", "jit"])
def test_evaluation_is_exact(parallel):
  # 96 test examples in batches of 64: the last batch is padded.
  config = tiny_config(parallel=parallel, eval_batch_size=64)
  test_split = data.load_split(config.data.source, "test")
  train_split = data.load_split(config.data.source, "train")
  parallel_steps, state = steps.create_steps_and_state(config, train_split,
                                                       4)
  state = parallel_steps.put_state(state)
  result = loop.evaluate(parallel_steps, state, test_split, config)

  host_state = jax.device_get(state)
  images = data.normalize(test_split.images, data.IMAGENET_MEAN,
                          data.IMAGENET_STD)
  logits = models.create_model("wrn-10-1", 10).apply(
      {"params": host_state.params, "batch_stats": host_state.batch_stats},
      images, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, test_split.labels)
  accuracy = np.mean(np.argmax(logits, -1) == test_split.labels)
  assert result["test_accuracy"] == pytest.approx(float(accuracy), abs=1e-7)
  assert result["test_loss"] == pytest.approx(float(np.mean(losses)),
                                              rel=1e-5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"parallel": "pjit"}, "config.parallel"),
        ({"model.name": "wrn-99-1"}, "Unknown model name 'wrn-99-1'"),
        ({"optimizer.name": "adam"}, "config.optimizer.name"),
        ({"schedule.name": "linear"}, "config.schedule.name"),
        ({"batch_size": 60}, r"^config.batch_size \(60\) must be divisible "
         r"by the number of devices \(8\)\.$"),
        ({"eval_batch_size": 100}, r"^config.eval_batch_size \(100\) must"),
        ({"optimizer.beta_below": 1.2}, "beta_below"),
        ({"optimizer.name": "adamw", "optimizer.loss_control": "{b1"},
         "is not JSON"),
        ({"optimizer.name": "adamw", "optimizer.loss_control": '{"b1": 0.9}'},
         r"\[below, above\]"),
        ({"optimizer.name": "adamw",
          "optimizer.loss_control": '{"bogus": [1, 2]}'}, "bogus"),
        ({"optimizer.loss_control": '{"momentum": [0.95, 0.9]}'},
         "loss_control is for sgd or adamw"),
        ({"optimizer.phases": "coin"}, "optimizer.phases='coin'"),
        ({"optimizer.name": "sgd", "optimizer.phases": "random"},
         "sgd has none"),
        ({"optimizer.below_probability": (0.5, 1.5)},
         r"below_probability=\(0.5, 1.5\) must be one probability"),
        ({"optimizer.below_probability": ()}, "below_probability"),
        ({"batch_size": 512}, r"config.batch_size=512 is larger than the "
         r"training split \(256 examples\); use at most 256\."),
    ],
)
def test_bad_configs_are_clear_errors(overrides, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_resuming_with_another_model_is_a_clear_error(straight_run, tmp_path):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r"model.name: checkpoint 'wrn-10-1', "
                     r"this run 'wrn-16-4'"):
    loop.train_and_evaluate(tiny_config(**{"model.name": "wrn-16-4"}),
                             str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  loop.train_and_evaluate(tiny_config(stop_after_steps=3, log_every_steps=1),
                           str(tmp_path))
  config = tiny_config(**{"schedule.learning_rate": 1e30,
                          "log_every_steps": 1})
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"The training loss is nan at step \d+") as error:
    loop.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(error.value).split(" at step ")[1].split()[0])
  checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"),
                                          config)
  latest = checkpointer.latest_step()
  checkpointer.close()
  # No checkpoint comes from an update with a non-finite loss.
  assert 3 <= latest < bad_step
  losses = {r["step"]: r["loss"]
            for r in record_lib.read_metrics(tmp_path)["train"]}
  assert all(np.isfinite(losses[s]) for s in range(1, latest + 1))
  assert losses[bad_step] is None  # NaN is written as null
  # The run's outcome is on record, for a study: it diverged at that step.
  assert record_lib.load_run(tmp_path).diverged["step"] == bad_step


def test_non_finite_loss_can_skip_steps(tmp_path):
  config = tiny_config(**{"schedule.learning_rate": 1e30, "num_epochs": 1,
                          "on_nonfinite_loss": "skip", "log_every_steps": 1,
                          "checkpoint_every_steps": 1, "keep_checkpoints": 0})
  state = loop.train_and_evaluate(config, str(tmp_path))
  assert int(jax.device_get(state.step)) == 4
  # LCAM's own step counter stays aligned with the data's epochs.
  assert int(jax.device_get(optax_lcam.lcam_info(state.opt_state).step)) == 4
  losses = [r["loss"] for r in record_lib.read_metrics(tmp_path)["train"]]
  # losses[i] is the loss of step i + 1, computed after i updates.
  first_bad = losses.index(None)
  assert first_bad > 0 and all(loss is None for loss in losses[first_bad:])
  after_last_good_update = final_arrays(tmp_path, step=first_bad)
  final = final_arrays(tmp_path)
  for key in after_last_good_update:
    if "params" in key or "batch_stats" in key:
      np.testing.assert_array_equal(final[key], after_last_good_update[key])


def test_plot_command_writes_a_png(straight_run, tmp_path, capsys):
  output = tmp_path / "curves.png"
  assert plot.main([str(straight_run), "-o", str(output), "--table"]) == 0
  assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = capsys.readouterr().out
  assert "final acc" in table and "straight" in table


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(straight_run, tmp_path):
  port = _free_port()
  # The same XLA options as this process (see conftest.py), so that only the
  # order of the cross-process sums differs.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  commands = [
      [sys.executable, "-m", "train", "--config",
       str(REPO / "train/configs/tiny.py"),
       "--workdir", str(tmp_path),
       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2",
       f"--config.distributed.process_id={i}"]
      for i in range(2)]
  processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for c in commands]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  # 2 x 4 devices sum the gradients in another order than 1 x 8. The
  # gradient of a convolution followed by BatchNorm is orthogonal to its
  # kernel, a sum with much cancellation, so that order alone moves single
  # gradient entries by up to ~1e-3 relative; through the small learning rate
  # the parameters move ~1e-5. A wrong data slice or a missing cross-process
  # sum moves them by far more.
  two, one = final_arrays(tmp_path), final_arrays(straight_run)
  assert two.keys() == one.keys()
  for key in two:
    if "['params']" in key or "['batch_stats']" in key:
      np.testing.assert_allclose(two[key], one[key], rtol=1e-3, atol=1e-4,
                                 err_msg=key)
    elif "momentum" not in key and "compensation" not in key:
      # The step, LCAM's beta and loss statistics (not the compensation of
      # the loss sum: a rounding remainder that follows the summation order).
      np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)
  # Only process 0 writes the logs.
  assert len(record_lib.read_metrics(tmp_path)["epoch"]) == 2


# What `srun --ntasks=2` on one node sets (JAX's SLURM detection reads these).
_SLURM_STEP = {"SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
               "SLURM_STEP_NUM_NODES": "1"}


def _slurm_job_id_with_a_free_port() -> int:
  """A job id whose coordinator port (JAX: 61440 + id mod 4096) is free."""
  for job_id in np.random.default_rng().permutation(4096):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", 61440 + int(job_id)))
      except OSError:
        continue
    return int(job_id) + 4096
  raise RuntimeError("No free port in 61440-65535.")


def test_cluster_detection_reads_what_jax_reads(monkeypatch):
  for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
               "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert devices.detected_cluster() is None
  for name, value in dict(_SLURM_STEP, SLURM_JOB_ID="7", SLURM_PROCID="1",
                          SLURM_LOCALID="1").items():
    monkeypatch.setenv(name, value)
  assert devices.detected_cluster() == ("SLURM", 2)
  assert devices.detected_cluster({"OMPI_COMM_WORLD_SIZE": "3"}) == (
      "Open MPI", 3)
  # An allocation without a task count, or with a count that is not one,
  # is one process: the run goes on alone.
  assert devices.detected_cluster({"SLURM_JOB_ID": "7"}) == ("SLURM", 1)
  assert devices.detected_cluster({"SLURM_JOB_ID": "7",
                                   "SLURM_NTASKS": "2(x3)"}) == ("SLURM", 1)


def test_a_slurm_step_of_two_tasks_is_one_run_of_two_processes(tmp_path):
  # No coordinator flag: "auto" must ask JAX's cluster detection.
  env = dict(_cli_env(devices=4), **_SLURM_STEP,
             SLURM_JOB_ID=str(_slurm_job_id_with_a_free_port()))
  command = _train_command(tmp_path, "--config.num_epochs=1")
  processes = [subprocess.Popen(
      command, env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  # Only process 0 writes: one run record, one record of the epoch.
  runs = [r for r in records if r["kind"] == "run"]
  assert len(runs) == 1, runs
  assert (runs[0]["processes"], runs[0]["devices"]) == (2, 8)
  assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]


# -----------------------------------------------------------------------------
# Regression tests.


def _scalar_train_state(optimizer_config, steps_per_epoch):
  tx = optimizers.create_optimizer(optimizer_config, 0.1, steps_per_epoch)
  return steps.TrainState.create(
      apply_fn=None, params={"w": jnp.ones(2)}, tx=tx,
      batch_stats={"mean": jnp.zeros(2)}, rng=jnp.zeros(2, jnp.uint32))


def _step_with_loss(state, loss, grad):
  new_state = state.apply_gradients(
      grads={"w": jnp.full(2, grad)}, value=jnp.float32(loss),
      batch_stats={"mean": state.batch_stats["mean"] + grad})
  return steps._drop_update_unless(jnp.isfinite(loss), new_state, state)


def test_skipping_a_nan_keeps_lcam_loss_statistics_of_the_new_epoch():
  # Losses 3, 2, 1 | NaN, 5 with 3 steps an epoch: the NaN is the first step
  # of epoch 2, so the mean after the 5 is 5 (not 2.75, epoch 1's sum back).
  state = _scalar_train_state(tiny_config().optimizer, steps_per_epoch=3)
  for loss in (3.0, 2.0, 1.0):
    state = _step_with_loss(state, loss, 1.0)
  before_nan = state
  state = _step_with_loss(state, float("nan"), float("nan"))
  # The skip kept the parameters, statistics and momentum...
  np.testing.assert_array_equal(state.params["w"], before_nan.params["w"])
  np.testing.assert_array_equal(state.batch_stats["mean"],
                                before_nan.batch_stats["mean"])
  np.testing.assert_array_equal(
      optax_lcam.find_lcam_state(state.opt_state).momentum["w"],
      optax_lcam.find_lcam_state(before_nan.opt_state).momentum["w"])
  state = _step_with_loss(state, 5.0, 1.0)
  info = optax_lcam.lcam_info(state.opt_state)
  assert float(info.mean_loss) == 5.0
  assert int(info.step) == 5


def test_loss_controlled_adamw_trains_and_logs_its_phases(tmp_path):
  config = tiny_config(**{
      "optimizer.name": "adamw", "optimizer.weight_decay": 0.05,
      "optimizer.loss_control": '{"b1": [0.95, 0.9]}',
      "schedule.learning_rate": 1e-3, "num_epochs": 1, "log_every_steps": 1})
  loop.train_and_evaluate(config, str(tmp_path))
  records = record_lib.read_metrics(tmp_path)
  b1s = [r["b1"] for r in records["train"]]
  assert set(np.round(b1s, 6)) <= {0.95, 0.9} and len(b1s) == 4
  # The first step's loss is its epoch's mean: "above", so b1 = 0.9 next.
  assert b1s[0] == pytest.approx(0.9)
  assert {"phase_below_fraction", "loss_below_mean_fraction"} <= (
      records["epoch"][0].keys())
  mu = optax.tree.get(checkpoints.load_state(str(tmp_path))["opt_state"],
                      "mu")
  assert mu is not None


def test_skipping_a_nan_with_adamw_keeps_its_moments():
  config = tiny_config(**{"optimizer.name": "adamw",
                          "optimizer.loss_control": '{"b1": [0.95, 0.9]}'})
  state = _scalar_train_state(config.optimizer, steps_per_epoch=3)
  state = _step_with_loss(state, 2.0, 1.0)
  before_nan = state
  state = _step_with_loss(state, float("nan"), float("nan"))
  for name in ("mu", "nu"):
    np.testing.assert_array_equal(
        optax.tree.get(state.opt_state, name)["w"],
        optax.tree.get(before_nan.opt_state, name)["w"])
  np.testing.assert_array_equal(state.params["w"], before_nan.params["w"])


def test_skipping_a_nan_with_sgd_keeps_the_trace_and_advances_the_counts():
  config = tiny_config(**{"optimizer.name": "sgd"}).optimizer
  state = _scalar_train_state(config, steps_per_epoch=3)
  state = _step_with_loss(state, 2.0, 1.0)
  before_nan = state
  state = _step_with_loss(state, float("nan"), float("nan"))
  np.testing.assert_array_equal(state.params["w"], before_nan.params["w"])
  np.testing.assert_array_equal(optax.tree.get(state.opt_state, "trace")["w"],
                                optax.tree.get(before_nan.opt_state,
                                               "trace")["w"])
  assert int(state.step) == 2


class _FlatMomentumState(NamedTuple):
  momentum: jax.Array  # all parameters' momentum in one vector
  count: jax.Array


def _flat_momentum() -> optax.GradientTransformationExtraArgs:
  """A momentum kept as one flat vector: not shaped like the parameters."""
  def init_fn(params):
    flat, _ = jax.flatten_util.ravel_pytree(params)
    return _FlatMomentumState(jnp.zeros_like(flat), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    flat, unravel = jax.flatten_util.ravel_pytree(updates)
    momentum = 0.9 * state.momentum + flat
    return unravel(momentum), _FlatMomentumState(momentum, state.count + 1)

  return optax.with_extra_args_support(
      optax.GradientTransformation(init_fn, update_fn))


@pytest.mark.parametrize("tx", [optax.adabelief(0.1), _flat_momentum()],
                         ids=["adabelief", "flat_momentum"])
def test_skipping_a_nan_keeps_any_optimizer_state_finite(tx):
  state = steps.TrainState.create(
      apply_fn=None, params={"w": jnp.ones(2), "b": jnp.ones(3)}, tx=tx,
      batch_stats={}, rng=jnp.zeros(2, jnp.uint32))

  def step(state, grad):
    new_state = state.apply_gradients(
        grads=jax.tree.map(lambda p: jnp.full_like(p, grad), state.params),
        value=jnp.float32(grad))
    return steps._drop_update_unless(jnp.isfinite(grad), new_state, state)

  before_nan = step(state, 1.0)
  after_nan = step(before_nan, float("nan"))
  assert_same_arrays(_flat(after_nan.params), _flat(before_nan.params))
  old, new = _flat(before_nan.opt_state), _flat(after_nan.opt_state)
  for key in new:
    if "count" in key:  # the counters advance
      assert int(new[key]) == int(old[key]) + 1, key
    else:  # the moments are kept
      np.testing.assert_array_equal(new[key], old[key], err_msg=key)


def test_resuming_with_other_steps_per_epoch_is_a_clear_error(colour_folder,
                                                              tmp_path):
  folder = tmp_path / "images"
  shutil.copytree(colour_folder, folder)
  config = tiny_config(**{"data.source": f"folder:{folder}",
                          "data.cache_dir": str(tmp_path / "cache"),
                          "batch_size": 32, "stop_after_steps": 2})
  loop.train_and_evaluate(config, str(tmp_path / "run"))  # 4 steps an epoch
  # The same path now holds 32 more training images: 5 steps an epoch.
  for i in range(32):
    shutil.copy(folder / "train/class_0/0.png",
                folder / f"train/class_0/extra_{i}.png")
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r"steps_per_epoch: checkpoint 4, this run 5"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def _cli_env(devices=8):
  # The same XLA options as this process (see conftest.py).
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def _train_command(workdir, *overrides):
  return [sys.executable, "-m", "train", "--config",
          str(REPO / "train/configs/tiny.py"), "--workdir", str(workdir),
          *overrides]


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143),
                                               (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_the_same_command_resumes(
    straight_run, tmp_path, signum, exit_code):
  command = _train_command(tmp_path)
  process = subprocess.Popen(command, env=_cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  output = []
  for line in process.stdout:  # The loop is built: the signal stops it.
    output.append(line)
    if "Starting at step 0" in line:
      process.send_signal(signum)
      break
  output.append(process.communicate(timeout=300)[0])
  output = "".join(output)
  assert process.returncode == exit_code, output[-3000:]
  assert "Traceback" not in output
  assert "stopped at step 1 of 8" in output and "same command" in output
  checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"),
                                          tiny_config())
  assert checkpointer.latest_step() == 1
  checkpointer.close()

  resumed = subprocess.run(command, env=_cli_env(), capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_same_arrays(final_arrays(tmp_path), final_arrays(straight_run))
  if signum == signal.SIGTERM:  # Once more: nothing left to do.
    again = subprocess.run(command, env=_cli_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete" in again.stderr and "Resuming" not in again.stderr


def _files(folder) -> dict[str, tuple[int, int]]:
  """Each file under ``folder``: its size and time of change."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in Path(folder).rglob("*") if p.is_file()}


def test_a_workdir_has_one_holder_at_a_time(tmp_path):
  with (devices.hold(str(tmp_path)),
        pytest.raises(devices.WorkdirBusyError,
                      match=f"the workdir {tmp_path} is in use by another "
                      f"run \\(pid {os.getpid()} on "),
        devices.hold(str(tmp_path))):
    pass
  with devices.hold(str(tmp_path)):  # Released at the end of the first.
    pass


def test_a_second_run_on_a_live_workdir_stops_and_a_killed_one_blocks_none(
    tmp_path):
  command = _train_command(tmp_path, "--config.num_epochs=1")
  first = subprocess.Popen(command, env=_cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  try:
    for line in first.stdout:
      if "Starting at step 0" in line:  # It holds the workdir: keep it so.
        first.send_signal(signal.SIGSTOP)
        break
    before = _files(tmp_path)
    second = subprocess.run(command, env=_cli_env(), capture_output=True,
                            text=True, timeout=300)
  finally:
    first.kill()  # SIGKILL: the lock is left to the kernel to release.
    first.communicate(timeout=60)
  assert second.returncode == 1
  assert second.stderr.startswith(f"error: the workdir {tmp_path} is in use "
                                  f"by another run (pid {first.pid} on ")
  assert len(second.stderr.splitlines()) == 1, second.stderr
  assert _files(tmp_path) == before  # The second wrote nothing.
  third = subprocess.run(command, env=_cli_env(), capture_output=True,
                         text=True, timeout=300)
  assert third.returncode == 0, third.stderr[-3000:]
  assert "is in use" not in third.stderr


def test_evaluate_command_prints_the_exact_test_metrics(straight_run, capsys):
  last_epoch = record_lib.read_metrics(straight_run)["epoch"][-1]
  result = evaluate.evaluate_checkpoint(str(straight_run))
  assert result["step"] == 8 and result["test_examples"] == 96
  assert result["test_loss"] == pytest.approx(last_epoch["test_loss"],
                                              rel=1e-6)
  assert result["test_accuracy"] == last_epoch["test_accuracy"]
  assert evaluate.main([str(straight_run)]) == 0
  assert capsys.readouterr().out == (
      f"step 8 (epoch 2): test_loss {last_epoch['test_loss']:.6f} "
      f"test_accuracy {last_epoch['test_accuracy']:.6f} (96 examples)\n")


def test_evaluate_command_without_a_run_is_one_error_line(tmp_path, capsys):
  assert evaluate.main([str(tmp_path)]) == 1
  assert capsys.readouterr().err.startswith("error: ")


def test_a_damaged_config_json_is_one_error_line(straight_run, tmp_path,
                                                 capsys):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  (tmp_path / "config.json").write_text('{"model": ')
  assert evaluate.main([str(tmp_path)]) == 1
  assert re.match(rf"error: {tmp_path}/config.json is unreadable \(.*\)\.\n$",
                  capsys.readouterr().err)


def test_an_unreadable_workdir_file_is_one_error_line(tmp_path):
  (tmp_path / record_lib.METRICS_FILENAME).mkdir()
  result = subprocess.run(_train_command(tmp_path), env=_cli_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if not re.match(r"[IWE]\d{4} ", line)]
  assert errors == [f"error: {tmp_path}/metrics.jsonl: Is a directory"], (
      result.stderr[-3000:])


def test_load_variables_gives_what_the_model_needs(straight_run):
  variables = checkpoints.load_variables(str(straight_run))
  assert set(variables) == {"params", "batch_stats"}
  test_split = data.load_split(tiny_config().data.source, "test")
  images = data.normalize(test_split.images, data.IMAGENET_MEAN,
                          data.IMAGENET_STD)
  logits = models.create_model("wrn-10-1", 10).apply(variables, images,
                                                 train=False)
  accuracy = np.mean(np.argmax(np.asarray(logits), -1) == test_split.labels)
  last_epoch = record_lib.read_metrics(straight_run)["epoch"][-1]
  assert accuracy == last_epoch["test_accuracy"]


def test_command_line_mistakes_are_one_error_line(tmp_path):
  result = subprocess.run(
      _train_command(tmp_path, "--config.optimizer.bogus=1"), env=_cli_env(),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.startswith(
      "error: --config.optimizer.bogus=1: config.optimizer has no field")
  assert len(result.stderr.splitlines()) == 1, result.stderr


# Runs the CLI with a write that finds the disk full: the checksums of the
# second checkpoint (in Orbax's background thread), or the metrics of step 4.
_DISK_FULL_SCRIPT = """
import errno, os, sys
from train import checksums, main
from train import record as record_lib
def full(path):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
if "{where}" == "checkpoint":
  write = checksums.write
  saved = []
  def write_checksums(step_dir):
    saved.append(step_dir)
    if len(saved) > 1:
      full(os.path.join(step_dir, checksums.FILENAME))
    write(step_dir)
  checksums.write = write_checksums
else:
  write = record_lib.MetricWriter.write
  def write_metrics(self, kind, step, metrics):
    if step >= 4:
      full(os.path.join(sys.argv[-1], record_lib.METRICS_FILENAME))
    write(self, kind, step, metrics)
  record_lib.MetricWriter.write = write_metrics
main.run()
"""


@pytest.mark.parametrize("where, what", [
    ("checkpoint", "the checkpoint of step 4"),
    ("metrics", "{workdir}/metrics.jsonl")])
def test_a_full_disk_is_one_error_line(tmp_path, where, what):
  command = _train_command(tmp_path)
  command[1:3] = ["-c", _DISK_FULL_SCRIPT.format(where=where)]
  result = subprocess.run(command, env=_cli_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if not re.match(r"[IWE]\d{4} ", line)]
  assert len(errors) == 1, result.stderr[-3000:]
  what = what.format(workdir=tmp_path)
  assert re.match(
      rf"error: No space left on the device of {tmp_path} \(.* free\) while "
      rf"writing {what}; the checkpoint of step 3 is intact\. Free some space "
      r"and run the same command to resume\.$", errors[0]), errors[0]
  assert checkpoints.verify_checksums(str(tmp_path / "checkpoints" / "3"))


def test_jax_backend_probing_stays_out_of_the_log():
  def record(name, level, message):
    return logging.LogRecord(name, level, "/x/jax/_src/xla_bridge.py", 1,
                             message, None, None)
  assert not main._quiet(record("jax._src.xla_bridge", logging.INFO,
                                "Unable to initialize backend 'tpu'"))
  assert main._quiet(record("jax._src.xla_bridge", logging.WARNING, "x"))
  assert main._quiet(record("absl", logging.INFO, "epoch 1: {}"))


def test_validation_examples_are_held_out_and_evaluated(tmp_path):
  config = tiny_config(**{"data.validation_examples": 64})
  loop.train_and_evaluate(config, str(tmp_path))
  records = record_lib.read_metrics(tmp_path)
  # 256 - 64 = 192 training examples: 3 steps of 64 an epoch.
  assert [r["step"] for r in records["epoch"]] == [3, 6]
  for record in records["epoch"]:
    assert {"val_loss", "val_accuracy", "test_loss",
            "test_accuracy"} <= record.keys()
  no_test = tmp_path / "no_test"
  loop.train_and_evaluate(
      tiny_config(**{"data.validation_examples": 64, "data.eval_test": False,
                     "num_epochs": 1}), str(no_test))
  (record,) = record_lib.read_metrics(no_test)["epoch"]
  assert "val_accuracy" in record and "test_accuracy" not in record
  # The held-out examples are the same for any seed, and not trained on.
  full = data.load_split(config.data.source, "train")
  rest, held_out = data.hold_out(full, 64)
  _, held_out_seed1 = data.hold_out(full, 64)
  np.testing.assert_array_equal(held_out.images, held_out_seed1.images)
  trained = {bytes(image) for image in rest.images}
  assert not any(bytes(image) in trained for image in held_out.images)
  # Resuming with another number of held-out examples is refused.
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match="validation_examples: checkpoint 64, this run 32"):
    loop.train_and_evaluate(
        tiny_config(**{"data.validation_examples": 32, "num_epochs": 3}),
        str(tmp_path))


@pytest.mark.parametrize("count", [-1, 256, 1000])
def test_impossible_validation_examples_are_clear_errors(count, tmp_path):
  with pytest.raises(ValueError, match=r"validation_examples|hold out"):
    loop.train_and_evaluate(
        tiny_config(**{"data.validation_examples": count}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_run_records_hold_the_provenance(straight_run):
  run_record = next(
      json.loads(line) for line in
      (straight_run / record_lib.METRICS_FILENAME).read_text().splitlines()
      if json.loads(line)["kind"] == "run")
  head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                        capture_output=True, text=True, check=False)
  expected_commit = head.stdout.strip() if head.returncode == 0 else None
  assert run_record["commit"] == expected_commit
  assert run_record["tracked_changes"] in (True, False, None)
  assert run_record["versions"]["jax"] == jax.__version__
  assert run_record["versions"]["numpy"] == np.__version__
  assert set(run_record["versions"]) == {"jax", "jaxlib", "flax", "optax",
                                         "numpy"}
  split = data.load_split(tiny.get_config().data.source, "train")
  test = data.load_split(tiny.get_config().data.source, "test")
  assert run_record["data_fingerprint"] == provenance.data_fingerprint(
      tiny.get_config().data.source, [split, test])
  assert run_record["device_kind"] == jax.devices()[0].device_kind
  assert run_record["devices"] == 8 and run_record["processes"] == 1
  assert set(record_lib.PROVENANCE_FIELDS) <= run_record.keys()
  assert run_record["cpu"] == provenance.host_cpu()


def test_data_fingerprint_is_the_archive_digest_for_an_archive(tmp_path):
  archive = tmp_path / "data.tar"
  archive.write_bytes(b"not really a tar, only hashed")
  import hashlib  # pylint: disable=g-import-not-at-top
  assert provenance.data_fingerprint(f"folder:{archive}", []) == (
      "archive-sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest())


def test_data_fingerprint_changes_with_one_pixel():
  split = data.load_split("synthetic:num_train=8,num_test=2", "train")
  images = split.images.copy()
  images[3, 1, 1, 0] ^= 1
  changed = data.Split(images, split.labels, split.num_classes,
                       split.class_names, split.source, split.split)
  assert data.fingerprint(changed) != data.fingerprint(split)


def test_evaluate_reads_a_config_json_older_than_its_fields(straight_run,
                                                            tmp_path, capsys):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["data"]["validation_examples"]  # as written before it existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert config_lib.load_run_config(
      str(tmp_path)).data.validation_examples == 0
  assert evaluate.main([str(tmp_path)]) == 0
  assert "test_accuracy" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# The placebo rule: optimizer.phases="random".


def test_a_loss_rule_run_logs_its_phase_as_the_loss_fraction(straight_run):
  for record in record_lib.read_metrics(straight_run)["epoch"]:
    assert record["loss_below_mean_fraction"] == record["phase_below_fraction"]
  # Its checkpoints keep the tree of runs before phases="random" existed.
  assert not [key for key in final_arrays(straight_run)
              if "loss_below_mean" in key]


def test_random_phases_follow_the_epochs_probabilities_and_resume(tmp_path):
  # Epoch 1 never "below", epoch 2 always: the per-epoch schedule is wired.
  overrides = {"optimizer.phases": "random",
               "optimizer.below_probability": (0.0, 1.0),
               "optimizer.phase_seed": 3, "log_every_steps": 1}
  loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "a"))
  records = record_lib.read_metrics(tmp_path / "a")
  epochs = records["epoch"]
  assert [r["phase_below_fraction"] for r in epochs] == [0.0, 1.0]
  # The loss's own phase is logged beside the draws: the first step of an
  # epoch is never below its mean, so at most 3 of the 4 steps are.
  for record in epochs:
    assert record["loss_below_mean_fraction"] in (0.0, 0.25, 0.5, 0.75)
  betas = [round(r["beta"], 6) for r in records["train"]]
  assert betas == [0.9] * 4 + [0.95] * 4  # beta_above, then beta_below
  arrays = final_arrays(tmp_path / "a")
  assert {"loss_below_mean"} <= {key.split("'")[-2] for key in arrays}
  # Stopped mid-epoch and resumed: the same arrays and epoch records.
  loop.train_and_evaluate(tiny_config(stop_after_steps=6, **overrides),
                           str(tmp_path / "b"))
  loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "b"))
  assert_same_arrays(final_arrays(tmp_path / "b"), arrays)
  resumed = record_lib.read_metrics(tmp_path / "b")["epoch"]
  for record, straight in zip(resumed, epochs, strict=True):
    for key in ("train_loss", "phase_below_fraction",
                "loss_below_mean_fraction"):
      assert record[key] == straight[key], key


def test_random_phases_are_drawn_from_the_runs_seed_unless_phase_seed_is_set():
  config = tiny_config().optimizer
  config.phases, config.below_probability = "random", (0.5,)

  def draws(seed, phase_seed=None):
    config.phase_seed = phase_seed
    state = steps.TrainState.create(
        apply_fn=None, params={"w": jnp.ones(2)},
        tx=optimizers.create_optimizer(config, 0.1, 10, seed=seed),
        batch_stats={}, rng=jnp.zeros(2, jnp.uint32))
    below = []
    for _ in range(40):
      state = state.apply_gradients(grads={"w": jnp.ones(2)},
                                    value=jnp.float32(1.0), batch_stats={})
      below.append(bool(optax.tree_utils.tree_get(state.opt_state,
                                                  "below_mean")))
    return below

  assert draws(seed=1) != draws(seed=2)
  assert draws(seed=1, phase_seed=5) == draws(seed=2, phase_seed=5)
