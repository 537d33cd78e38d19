"""End-to-end tests of the training loop on 8 CPU devices with the tiny WRN."""

import json
import os
from pathlib import Path
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import models
import optax_lcam
from train import checkpoints
from train import data
from train import metric_writers
from train import plot
from train import train
from train.configs import tiny

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  config = tiny.get_config()
  for dotted, value in overrides.items():
    *path, field = dotted.split(".")
    node = config
    for key in path:
      node = node[key]
    node[field] = value
  return config


def final_arrays(workdir, step=None) -> dict:
  """The arrays of a checkpoint (the latest by default), as a flat dict."""
  manager = ocp.CheckpointManager(Path(workdir, "checkpoints").resolve())
  step = manager.latest_step() if step is None else step
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  manager.close()
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


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
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def test_loss_falls_and_outputs_are_written(colour_folder, tmp_path):
  config = tiny_config(**{"data.source": f"folder:{colour_folder}",
                          "data.cache_dir": str(tmp_path / "cache"),
                          "num_epochs": 6, "batch_size": 32,
                          "schedule.learning_rate": 0.05})
  train.train_and_evaluate(config, str(tmp_path))
  records = metric_writers.read_metrics(tmp_path)
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
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == (
      "tiny")
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "checkpoints").is_dir()


def test_resume_mid_epoch_is_exact(straight_run, tmp_path):
  # 4 steps an epoch: stop after 1.5 epochs, then resume for the rest.
  train.train_and_evaluate(tiny_config(stop_after_steps=6), str(tmp_path))
  assert checkpoints.Checkpointer(str(tmp_path / "checkpoints"),
                                  tiny_config()).latest_step() == 6
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert_same_arrays(final_arrays(tmp_path), final_arrays(straight_run))
  epochs = metric_writers.read_metrics(tmp_path)["epoch"]
  straight_epochs = metric_writers.read_metrics(straight_run)["epoch"]
  for resumed, straight in zip(epochs, straight_epochs, strict=True):
    for key in ("train_loss", "phase_below_fraction", "test_accuracy"):
      assert resumed[key] == straight[key], key


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
  state = train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert int(jax.device_get(state.step)) == latest


def test_pmap_and_jit_agree(tmp_path):
  config = tiny_config(stop_after_steps=3)
  train.train_and_evaluate(config, str(tmp_path / "pmap"))
  config.parallel = "jit"
  train.train_and_evaluate(config, str(tmp_path / "jit"))
  assert_same_arrays(final_arrays(tmp_path / "pmap"),
                     final_arrays(tmp_path / "jit"), rtol=2e-4, atol=2e-6)


def test_mock_tfds_data_with_bfloat16_compute(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config(**{"data.source": "tfds:cifar10", "num_epochs": 1,
                          "stop_after_steps": 2, "model.dtype": "bfloat16",
                          "data.data_dir": str(tmp_path / "tfds")})
  with tfds.testing.mock_data(num_examples=128):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert metric_writers.read_metrics(tmp_path)["train"]
  # bf16 compute; parameters, statistics and optimizer state stay float32.
  for leaf in jax.tree.leaves((state.params, state.batch_stats,
                               state.opt_state)):
    assert leaf.dtype in (np.float32, np.int32, np.bool_), leaf.dtype


@pytest.mark.parametrize("parallel", ["pmap", "jit"])
def test_evaluation_is_exact(parallel):
  # 96 test examples in batches of 64: the last batch is padded.
  config = tiny_config(parallel=parallel)
  test_split = data.load_split(config.data.source, "test")
  train_split = data.load_split(config.data.source, "train")
  parallel_steps, state = train.build_parallel(config, train_split, 4)
  state = parallel_steps.put_state(state)
  result = train.evaluate(parallel_steps, state, test_split, 64)

  host_state = jax.device_get(state)
  images = data.normalize(test_split.images, data.IMAGENET_MEAN,
                          data.IMAGENET_STD)
  logits = models.create_model("tiny", 10).apply(
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
        ({"batch_size": 60}, "divisible by the number of devices"),
        ({"optimizer.beta_below": 1.2}, "beta_below"),
    ],
)
def test_bad_configs_are_clear_errors(overrides, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_resuming_with_another_model_is_a_clear_error(straight_run, tmp_path):
  shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r"model.name: checkpoint 'tiny', config 'wrn-10-1'"):
    train.train_and_evaluate(tiny_config(**{"model.name": "wrn-10-1"}),
                             str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  train.train_and_evaluate(tiny_config(stop_after_steps=3, log_every_steps=1),
                           str(tmp_path))
  config = tiny_config(**{"schedule.learning_rate": 1e30,
                          "log_every_steps": 1})
  with pytest.raises(train.NonFiniteLossError,
                     match=r"The training loss is nan at step \d+") as error:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(error.value).split(" at step ")[1].split()[0])
  checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"),
                                          config)
  latest = checkpointer.latest_step()
  checkpointer.close()
  # No checkpoint comes from an update with a non-finite loss.
  assert 3 <= latest < bad_step
  losses = {r["step"]: r["loss"]
            for r in metric_writers.read_metrics(tmp_path)["train"]}
  assert all(np.isfinite(losses[s]) for s in range(1, latest + 1))
  assert losses[bad_step] is None  # NaN is written as null


def test_non_finite_loss_can_skip_steps(tmp_path):
  config = tiny_config(**{"schedule.learning_rate": 1e30, "num_epochs": 1,
                          "on_nonfinite_loss": "skip", "log_every_steps": 1,
                          "checkpoint_every_steps": 1, "keep_checkpoints": 0})
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(jax.device_get(state.step)) == 4
  # LCAM's own step counter stays aligned with the data's epochs.
  assert int(jax.device_get(optax_lcam.lcam_info(state.opt_state).step)) == 4
  losses = [r["loss"] for r in metric_writers.read_metrics(tmp_path)["train"]]
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
      [sys.executable, "-m", "train", "--config", str(REPO / "train/configs/tiny.py"),
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
    elif "momentum" not in key:  # the step, LCAM's beta and loss statistics
      np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)
  # Only process 0 writes the logs.
  assert len(metric_writers.read_metrics(tmp_path)["epoch"]) == 2
