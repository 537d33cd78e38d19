"""Tests for study.plot: loading, grouping, the table, the figure, the CLI."""

import json

import numpy as np
import pytest

from study import groups as groups_lib
from study import plot
from train import record as runs_lib

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NUM_EPOCHS = 6
_STEPS_PER_EPOCH = 10


def _config(seed, beta_below, beta_above, workdir):
  return {
      "seed": seed,
      "num_epochs": _NUM_EPOCHS,
      "model": {"name": "wrn_16_4"},
      "optimizer": {"name": "lcam", "beta_below": beta_below,
                    "beta_above": beta_above, "learning_rate": 0.1,
                    "phase_seed": seed},
      "schedule": {"name": "step"},
      "data": {"source": "cifar10", "cache_dir": workdir},
  }


def _accuracy_curve(final_accuracy, peak_epoch=None):
  """Accuracy rising to final_accuracy; a bump of +0.01 at peak_epoch."""
  epochs = np.arange(1, _NUM_EPOCHS + 1)
  accuracy = final_accuracy * (1.0 - 0.5 ** epochs) / (1.0 - 0.5 ** _NUM_EPOCHS)
  if peak_epoch is not None:
    accuracy[peak_epoch - 1] = final_accuracy + 0.01
  return accuracy


def _make_run(root, name, config, accuracy, extra_lines=()):
  """A fake workdir with config.json and metrics.jsonl."""
  workdir = root / name
  workdir.mkdir()
  if config is not None:
    (workdir / "config.json").write_text(json.dumps(config))
  lines = []
  for epoch, acc in enumerate(accuracy, start=1):
    step = epoch * _STEPS_PER_EPOCH
    lines.append({"kind": "train", "step": step - 5, "epoch": epoch - 0.5,
                  "loss": 2.0 / epoch, "learning_rate": 0.1, "beta": 0.9,
                  "mean_loss": 2.0 / epoch, "images_per_sec": 1000.0})
    lines.append({"kind": "epoch", "epoch": epoch, "step": step,
                  "train_loss": 2.0 / epoch, "phase_below_fraction": 0.4,
                  "phase_above_fraction": 0.6, "test_loss": 1.0 / epoch,
                  "test_accuracy": float(acc), "epoch_time_s": 12.5})
  lines.extend(extra_lines)
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(line) + "\n" for line in lines))
  return workdir


@pytest.fixture(name="runs")
def runs_fixture(tmp_path):
  """2 seeds x 2 configs + 1 single run; returns (dirs, accuracies)."""
  specs = [
      ("lcam_a_s0", 0, 0.95, 0.9, _accuracy_curve(0.80, peak_epoch=4)),
      ("lcam_a_s1", 1, 0.95, 0.9, _accuracy_curve(0.84, peak_epoch=5)),
      ("sgd_s0", 0, 0.9, 0.9, _accuracy_curve(0.70)),
      ("sgd_s1", 1, 0.9, 0.9, _accuracy_curve(0.74)),
      ("lcam_b", 0, 0.9, 0.95, _accuracy_curve(0.77)),
  ]
  dirs, accuracies = {}, {}
  for name, seed, below, above, accuracy in specs:
    config = _config(seed, below, above, str(tmp_path / name))
    dirs[name] = _make_run(tmp_path, name, config, accuracy)
    accuracies[name] = accuracy
  return dirs, accuracies


def test_group_runs_groups_seeds_and_labels_by_differing_fields(runs):
  dirs, _ = runs
  groups = groups_lib.group_runs(runs_lib.load_run(d) for d in dirs.values())
  assert [(g.label, [r.name for r in g.runs]) for g in groups] == [
      ("lcam 0.95/0.9", ["lcam_a_s0", "lcam_a_s1"]),
      ("lcam 0.9/0.9", ["sgd_s0", "sgd_s1"]),
      ("lcam 0.9/0.95", ["lcam_b"]),
  ]


def test_group_labels_fall_back_to_directory_names(tmp_path):
  same = _config(0, 0.9, 0.9, "x")
  runs = [
      runs_lib.load_run(_make_run(tmp_path, "base_seed0", same, [0.5])),
      runs_lib.load_run(_make_run(tmp_path, "base_seed1", dict(same, seed=1),
                              [0.6])),
  ]
  (group,) = groups_lib.group_runs(runs)
  assert group.label == "base" and len(group.runs) == 2

  # Runs without a config are never grouped together.
  bare = [runs_lib.load_run(_make_run(tmp_path, n, None, [0.5]))
          for n in ("bare_a", "bare_b")]
  assert [g.label for g in groups_lib.group_runs(bare)] == ["bare_a", "bare_b"]


def test_labels_name_other_differing_fields():
  configs = [{"optimizer.name": "sgd", "optimizer.momentum": 0.9,
              "schedule.name": "cosine"},
             {"optimizer.name": "lcam", "optimizer.beta_below": 0.93,
              "optimizer.beta_above": 0.9, "schedule.name": "cosine",
              "num_epochs": 100}]
  differing = groups_lib.differing_config_keys(configs)
  assert [groups_lib.config_label(c, differing) for c in configs] == [
      "sgd momentum=0.9", "lcam 0.93/0.9 num_epochs=100"]


def test_group_curve_aligns_runs_of_different_lengths(tmp_path):
  runs = [runs_lib.load_run(_make_run(tmp_path, "a", {"seed": 0}, [0.2, 0.4])),
          runs_lib.load_run(_make_run(tmp_path, "b", {"seed": 1}, [0.4]))]
  (group,) = groups_lib.group_runs(runs)
  epochs, mean, low, high = groups_lib.group_curve(group, "test_accuracy")
  np.testing.assert_array_equal(epochs, [1, 2])
  np.testing.assert_allclose(mean, [0.3, 0.4])
  np.testing.assert_allclose(low, [0.2, 0.4])
  np.testing.assert_allclose(high, [0.4, 0.4])
  _, mean, low, high = groups_lib.group_curve(group, "no_such_field")
  assert np.isnan(np.concatenate([mean, low, high])).all()


def _table_row(table, label):
  (row,) = [line for line in table.splitlines() if line.startswith(label + " ")]
  return row


def test_summary_table_reports_final_and_best_accuracy(runs):
  dirs, accuracies = runs
  groups = groups_lib.group_runs(runs_lib.load_run(d) for d in dirs.values())
  table = groups_lib.summary_table(groups)

  final = 100 * np.array([accuracies["lcam_a_s0"][-1],
                          accuracies["lcam_a_s1"][-1]])
  best = final + 1.0  # The bump at epochs 4 and 5.
  row = _table_row(table, "lcam 0.95/0.9")
  assert f"{final.mean():.2f} ± {final.std(ddof=1):.2f}" == "82.00 ± 2.83"
  assert f"{final.mean():.2f} ± {final.std(ddof=1):.2f}" in row
  assert f"{best.mean():.2f} ± {best.std(ddof=1):.2f}" in row
  assert row.split()[-1] == "4-5"  # Epochs of the best accuracy.
  assert row.split()[2:4] == ["2", "6"]  # Seeds, last epoch.

  row = _table_row(table, "lcam 0.9/0.9")
  assert "72.00 ± 2.83" in row and row.split()[-1] == "6"
  row = _table_row(table, "lcam 0.9/0.95")
  assert row.split()[2:5] == ["1", "6", "77.00"]
  assert table.splitlines()[0].split()[:2] == ["run", "group"]


def test_summary_table_handles_runs_without_test_accuracy(tmp_path):
  workdir = tmp_path / "no_eval"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(json.dumps(
      {"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.0}) + "\n")
  table = groups_lib.summary_table(
      groups_lib.group_runs([runs_lib.load_run(workdir)]))
  assert _table_row(table, "no_eval").split()[1:] == ["0"] + ["n/a"] * 4


def test_summary_table_final_is_the_last_epochs_accuracy(tmp_path):
  # Evaluated at epochs 1 and 2 only: epoch 3 has no final accuracy, as in a
  # study's summary, so the run is left out of the table's accuracies.
  unevaluated = [{"kind": "epoch", "epoch": 3, "step": 30, "train_loss": 0.5}]
  _make_run(tmp_path, "late", {"seed": 0}, [0.5, 0.6], extra_lines=unevaluated)
  _make_run(tmp_path, "done", {"seed": 1}, [0.5, 0.6])
  table = groups_lib.summary_table(groups_lib.group_runs(
      [runs_lib.load_run(tmp_path / name) for name in ("late", "done")],
      labels=["late", "done"]))
  assert _table_row(table, "late").split()[1:] == ["0"] + ["n/a"] * 4
  assert _table_row(table, "done").split()[1:] == ["1", "2", "60.00", "60.00",
                                                    "2"]


def test_main_writes_a_png_and_prints_the_table(runs, tmp_path, capsys):
  dirs, _ = runs
  output = tmp_path / "figures" / "curves.png"
  status = plot.main([str(d) for d in dirs.values()]
                     + ["-o", str(output), "--table"])
  assert status == 0
  data = output.read_bytes()
  assert data.startswith(_PNG_MAGIC) and len(data) > 20_000
  out = capsys.readouterr().out
  for label in ("lcam 0.95/0.9", "lcam 0.9/0.9", "lcam 0.9/0.95"):
    assert label in out


def test_main_rejects_a_directory_that_is_not_a_run(runs, tmp_path, capsys):
  dirs, _ = runs
  not_a_run = tmp_path / "empty"
  not_a_run.mkdir()
  output = tmp_path / "curves.png"
  status = plot.main([str(dirs["sgd_s0"]), str(not_a_run), "-o", str(output)])
  assert status != 0
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert str(not_a_run) in err and "not a training workdir" in err
  assert not output.exists()


def test_main_skips_runs_without_epochs_with_a_warning(runs, tmp_path, capsys):
  dirs, _ = runs
  starting = tmp_path / "starting"
  starting.mkdir()
  (starting / "metrics.jsonl").write_text(json.dumps(
      {"kind": "train", "step": 1, "loss": 2.3}) + "\n")
  assert plot.main([str(starting), str(dirs["lcam_b"]), "--table"]) == 0
  captured = capsys.readouterr()
  assert "warning" in captured.err and str(starting) in captured.err
  assert "lcam_b" in captured.out and "starting" not in captured.out

  assert plot.main([str(starting)]) == 1
  assert "no run has a finished epoch" in capsys.readouterr().err




def _loss_run(root, name, seed, losses, **config_fields):
  """A workdir whose epoch records have the given training losses."""
  config = dict(_config(seed, 0.95, 0.9, str(root / name)), **config_fields)
  lines = [{"kind": "epoch", "epoch": epoch, "step": 10 * epoch,
            "train_loss": loss, "phase_below_fraction": 0.5,
            "test_accuracy": 0.5}
           for epoch, loss in enumerate(losses, start=1)]
  workdir = root / name
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(line) + "\n" for line in lines))
  return workdir


def _shown_y_ticks(axis):
  """``(value, label)`` of the y ticks inside the axis's limits."""
  figure = axis.get_figure()
  figure.canvas.draw()
  low, high = axis.get_ylim()
  return [(tick.get_loc(), tick.label1.get_text())
          for tick in axis.yaxis.get_major_ticks()
          if low <= tick.get_loc() <= high]


def _is_plain_decimal(text):
  try:
    float(text)
  except ValueError:
    return False
  return "e" not in text.lower()


@pytest.mark.parametrize("losses", [
    [1.63, 1.21, 1.02, 0.91, 0.83],  # 0.83-1.63: two log labels before
    [2.3178, 2.3176, 2.3174, 2.3172],  # narrow: 2.3175x10^0 before
    [2.3, 0.9, 0.2, 0.04],  # almost two decades
    [3e-6, 1e-3, 2.0],  # six decades
])
def test_loss_axis_shows_the_data_with_readable_plain_decimal_ticks(
    tmp_path, losses):
  workdir = _loss_run(tmp_path, "run", 0, losses)
  figure = plot.plot_runs(groups_lib.group_runs([runs_lib.load_run(workdir)]),
                          tmp_path / "curves.png")
  loss_axis = figure.axes[1]
  assert loss_axis.get_yscale() == "log"
  low, high = loss_axis.get_ylim()
  assert low < min(losses) and max(losses) < high
  # The data fill the axis: the margins are a small part of it (log scale).
  span = np.log(max(losses) / min(losses))
  assert np.log(high / low) < 1.2 * span
  shown = _shown_y_ticks(loss_axis)
  labels = [label for _, label in shown]
  assert 3 <= len(labels) <= 12 and len(set(labels)) == len(labels), labels
  assert all(_is_plain_decimal(text) for text in labels), labels
  np.testing.assert_allclose([float(label) for label in labels],
                             [value for value, _ in shown], rtol=1e-9)
  assert not any(label.get_text()
                 for label in loss_axis.yaxis.get_minorticklabels())


def test_error_axis_labels_are_plain_decimals_without_an_offset(tmp_path):
  accuracies = [0.72351, 0.72352, 0.72354]  # errors 27.649-27.646 %
  workdir = _make_run(tmp_path, "run", {"seed": 0}, accuracies)
  figure = plot.plot_runs(groups_lib.group_runs([runs_lib.load_run(workdir)]),
                          tmp_path / "curves.png")
  error_axis = figure.axes[0]
  low, high = error_axis.get_ylim()
  errors = [100 * (1 - a) for a in accuracies]
  assert low < min(errors) and max(errors) < high
  shown = _shown_y_ticks(error_axis)
  assert len(shown) >= 3 and all(_is_plain_decimal(label) for _, label in shown)
  np.testing.assert_allclose([float(label) for _, label in shown],
                             [value for value, _ in shown], rtol=1e-9)
  assert not error_axis.yaxis.get_offset_text().get_text()


def test_epoch_axis_shows_whole_epochs(tmp_path):
  workdir = _loss_run(tmp_path, "run", 0, [1.5, 1.2, 1.1])
  figure = plot.plot_runs(groups_lib.group_runs([runs_lib.load_run(workdir)]),
                          tmp_path / "curves.png")
  low, high = figure.axes[0].get_xlim()
  ticks = [t for t in figure.axes[0].get_xticks() if low <= t <= high]
  assert ticks and all(float(t).is_integer() for t in ticks), ticks


def _legend_texts(figure):
  return [text.get_text() for legend in figure.legends
          for text in legend.get_texts()]


def test_legend_counts_distinct_seeds(tmp_path):
  same_seed = [_loss_run(tmp_path, f"same{i}", 0, [1.5, 1.2]) for i in range(3)]
  seeds = [_loss_run(tmp_path, f"seed{i}", i, [1.4, 1.1], num_epochs=99)
           for i in range(3)]
  groups = groups_lib.group_runs(
      runs_lib.load_run(d) for d in same_seed + seeds)
  figure = plot.plot_runs(groups, tmp_path / "curves.png")
  texts = _legend_texts(figure)
  assert len(texts) == 2
  assert "(3 runs, min-max)" in texts[0] and "seeds" not in texts[0]
  assert "(3 seeds, min-max)" in texts[1]


def test_logging_and_device_fields_do_not_split_or_label_groups(tmp_path):
  dirs = [
      _loss_run(tmp_path, "a0", 0, [1.0], log_every_steps=2,
                checkpoint_every_steps=3, progress=True, host_devices=4),
      _loss_run(tmp_path, "a1", 1, [1.0], log_every_steps=50,
                checkpoint_every_steps=1000, progress=False, host_devices=0,
                parallel="jit", stop_after_steps=7, eval_every_epochs=2,
                eval_batch_size=500, keep_checkpoints=1,
                distributed={"process_id": 1}),
      _loss_run(tmp_path, "b", 0, [1.0], log_every_steps=7,
                schedule={"name": "cosine"},
                data={"source": "cifar10", "cache_dir": "/tmp/x"}),
  ]
  groups = groups_lib.group_runs(runs_lib.load_run(d) for d in dirs)
  assert [(g.label, len(g.runs)) for g in groups] == [("step", 2),
                                                      ("cosine", 1)]


def test_plot_run_dirs_draws_given_groups(runs, tmp_path):
  dirs, _ = runs
  run_dirs = [dirs["lcam_a_s0"], dirs["lcam_a_s1"], dirs["sgd_s0"]]
  output = tmp_path / "study" / "curves.png"
  groups = plot.plot_run_dirs(run_dirs, output, labels=["A", "A", "B"])
  assert [(g.label, len(g.runs)) for g in groups] == [("A", 2), ("B", 1)]
  assert output.read_bytes().startswith(_PNG_MAGIC)

  groups = plot.plot_run_dirs(run_dirs, output)  # grouped by config
  assert [len(g.runs) for g in groups] == [2, 1]
  with pytest.raises(ValueError, match="labels"):
    plot.plot_run_dirs(run_dirs, output, labels=["A"])


def test_runs_that_never_test_plot_their_validation_error(tmp_path):
  workdir = _make_run(tmp_path, "run", {"seed": 0}, [0.5, 0.6, 0.7])
  lines = [json.loads(line)
           for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for line in lines:
    if "test_accuracy" in line:
      line["val_accuracy"] = line.pop("test_accuracy")
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(line) + "\n" for line in lines))
  figure = plot.plot_runs(groups_lib.group_runs([runs_lib.load_run(workdir)]),
                          tmp_path / "curves.png")
  error_axis = figure.axes[0]
  assert error_axis.get_title() == "Validation error"
  np.testing.assert_allclose(error_axis.lines[0].get_ydata(), [50, 40, 30])
