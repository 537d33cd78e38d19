"""Tests of a study's figures: the forest plot and the per-seed strip plot."""

import json
import os

import matplotlib.image
import ml_collections
import pytest

from study import definition as study_lib
from study import figures
from study import groups as groups_lib
from study import plot
from study import report as study_report
from study import statistics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("curves.png", figures.COMPARISONS_FILENAME,
           figures.FINALS_FILENAME)


def _fake_run(workdir, arm, seed, final, metric):
  """A finished run of two epochs whose last ``metric`` is ``final``.

  Every epoch records a test and a validation accuracy and a test loss (in
  nats), the first epoch a worse value of each, so either kind of metric
  can be the study's.
  """
  path = study_lib.run_dir(str(workdir), arm, seed)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": seed, "num_epochs": 2,
               "optimizer": {"name": "sgd", "loss_control": ""}}, f)
  lower_is_better = statistics.metric_direction(metric) == "lower"
  epochs = [{"test_accuracy": 0.5, "val_accuracy": 0.5, "test_loss": 2.0},
            {"test_accuracy": 0.7, "val_accuracy": 0.7, "test_loss": 0.9}]
  epochs[0][metric] = final * 2 if lower_is_better else final / 2
  epochs[1][metric] = final
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"kind": "run", "step": 1}) + "\n")
    for epoch, values in enumerate(epochs, start=1):
      f.write(json.dumps({"kind": "epoch", "step": 10 * epoch, "epoch": epoch,
                          "train_loss": 1.0 / epoch, "epoch_time_s": 2.0,
                          **values}) + "\n")


def _study(workdir, finals, metric, **fields):
  """A study of the arms in ``finals`` (arm -> seed -> final ``metric``)."""
  for arm, by_seed in finals.items():
    for seed, final in by_seed.items():
      _fake_run(workdir, arm, seed, final, metric)
  seeds = sorted({s for by_seed in finals.values() for s in by_seed})
  definition = {"config": "train/configs/tiny.py", "overrides": {},
                "targets": [], "arms": {arm: {} for arm in finals},
                "seeds": seeds, "baseline": next(iter(finals)),
                "metric": metric, **fields}
  study_lib.save_study(
      ml_collections.ConfigDict(definition, allow_dotted_keys=True),
      str(workdir))


# Per metric: the finals of three arms (b near base, c many margins away),
# and a margin in the metric's units.
STUDIES = {
    "val_accuracy": ({"base": {0: 0.600, 1: 0.620, 2: 0.610, 3: 0.605},
                      "b": {0: 0.603, 1: 0.621, 2: 0.612, 3: 0.607},
                      "c": {0: 0.800, 1: 0.810, 2: 0.820, 3: 0.790}}, 0.02),
    "test_loss": ({"base": {0: 0.900, 1: 0.920, 2: 0.910, 3: 0.905},
                   "b": {0: 0.903, 1: 0.921, 2: 0.912, 3: 0.907},
                   "c": {0: 1.600, 1: 1.610, 2: 1.620, 3: 1.590}}, 0.02),
}


def _png_bytes(workdir):
  return {name: (workdir / name).read_bytes() for name in FIGURES}


def _chunks(data: bytes) -> list[bytes]:
  """The chunk types of a PNG, in order."""
  types, offset = [], len(PNG_SIGNATURE)
  while offset < len(data):
    length = int.from_bytes(data[offset:offset + 4], "big")
    types.append(data[offset + 4:offset + 8])
    offset += 12 + length
  return types


@pytest.mark.parametrize("metric", list(STUDIES))
def test_summarize_writes_figures_that_regenerate_byte_for_byte(
    tmp_path, metric):
  finals, margin = STUDIES[metric]
  _study(tmp_path, finals, metric, comparisons=[["b", "base"], ["c", "base"]],
         primary_test="welch", equivalence_margin=margin)
  study_report.write_summary(str(tmp_path))
  first = _png_bytes(tmp_path)
  for name, data in first.items():
    assert data.startswith(PNG_SIGNATURE), name
    assert _chunks(data)[0] == b"IHDR" and _chunks(data)[-1] == b"IEND", name
    height, width, _ = matplotlib.image.imread(tmp_path / name).shape
    assert height > 100 and width > 100, name
  for name in (figures.COMPARISONS_FILENAME, figures.FINALS_FILENAME):
    # No text chunk (matplotlib's version) and no date (tIME) inside.
    assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(
        _chunks(first[name])), name
  study_report.write_summary(str(tmp_path))
  assert _png_bytes(tmp_path) == first
  assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def _figures(tmp_path, metric, **fields):
  finals, margin = STUDIES[metric]
  fields.setdefault("comparisons", [["b", "base"], ["c", "base"]])
  fields.setdefault("equivalence_margin", margin)
  _study(tmp_path, finals, metric, primary_test="welch", **fields)
  summary, finished = study_report.summarize(str(tmp_path))
  summary = statistics.json_safe(summary)
  return (summary, figures.comparisons_figure(summary),
          figures.finals_figure(summary, finished))


def _texts(figure):
  return [text.get_text() for text in figure.findobj(
      lambda artist: hasattr(artist, "get_text"))]


def test_accuracy_figures_show_percent_and_points(tmp_path):
  _, comparisons, finals = _figures(tmp_path, "val_accuracy")
  label = comparisons.axes[0].get_xlabel()
  assert "points" in label and "higher is better" in label
  assert "validation accuracy" in label
  label = finals.axes[0].get_xlabel()
  assert "%" in label and "higher is better" in label


def test_loss_figures_show_nats_not_points_or_percent(tmp_path):
  summary, comparisons, finals = _figures(tmp_path, "test_loss")
  for figure in (comparisons, finals):
    label = figure.axes[0].get_xlabel()
    assert "nats" in label and "lower is better" in label, label
    assert "points" not in label and "%" not in label, label
  # Values in nats, not x100: b's mean loss shows as 0.9108, not 91.08.
  mean = summary["arms"]["b"]["final_test_loss"]["mean"]
  assert any(text.startswith(f"{mean:.4f} [") for text in _texts(finals))
  # A lower loss is the better side: left of zero; c's higher loss is worse.
  assert "← arm better" in comparisons.axes[0].get_xlabel()
  assert summary["comparisons"][1]["verdict"] == "worse"  # The difference > 0.
  assert any(text.endswith("not shown equivalent, worse")
             for text in _texts(comparisons))
  # curves.png draws the loss itself, not the test error.
  panel = figures.curves_panel(summary)
  assert panel == ("test_loss", "Test loss",
                   "test loss, nats (lower is better)")
  _, finished = study_report.summarize(str(tmp_path))
  curves = plot.plot_runs([groups_lib.RunGroup("b", finished["b"])],
                          tmp_path / "curves.png", panel)
  assert curves.axes[0].get_title() == "Test loss"
  assert curves.axes[0].get_lines()[0].get_ydata()[-1] == pytest.approx(mean)
  assert figures.curves_panel({"metric": "val_accuracy"}) is None


def test_a_lower_loss_is_better_in_the_forest_plot(tmp_path):
  finals = {"base": {0: 1.50, 1: 1.52, 2: 1.51, 3: 1.49},
            "b": {0: 1.45, 1: 1.46, 2: 1.44, 3: 1.45}}
  _study(tmp_path, finals, "test_loss", comparisons=[["b", "base"]],
         equivalence_margin=0.01)
  summary, _ = study_report.summarize(str(tmp_path))
  comparison = figures.comparisons_figure(statistics.json_safe(summary))
  assert summary["comparisons"][0]["verdict"] == "better"
  assert any(text.startswith("−0.0550 [") and text.endswith(
      "not shown equivalent, better") for text in _texts(comparison))


def test_two_primary_comparisons_in_the_forest_plot(tmp_path):
  finals, margin = STUDIES["val_accuracy"]
  _study(tmp_path, {**finals, "d": finals["b"]}, "val_accuracy",
         comparisons=[["b", "base"], ["d", "base"], ["c", "base"]],
         primary_comparisons=2, equivalence_margin=margin)
  summary, _ = study_report.summarize(str(tmp_path))
  comparison = figures.comparisons_figure(statistics.json_safe(summary))
  labels = [label.get_text() for label in
            comparison.axes[0].get_yticklabels()]
  assert labels == ["b − base  (primary)", "d − base  (primary)", "c − base"]
  assert "95/90% interval (TOST, primary/secondary)" in _texts(comparison)


def test_forest_plot_rows_margin_and_off_scale_row(tmp_path):
  summary, comparisons, _ = _figures(tmp_path, "val_accuracy")
  axes = comparisons.axes[0]
  labels = [label.get_text() for label in axes.get_yticklabels()]
  assert labels == ["b − base  (primary)", "c − base"]
  texts = _texts(comparisons)
  # c is 20 points above base, ten margins: drawn off scale, numbers beside.
  assert "off scale" in texts
  welch = summary["comparisons"][1]["welch"]
  assert any(text.startswith(f"+{100 * welch['mean']:.2f} [")
             for text in texts)
  assert "equivalence margin ±2.00 points" in texts
  assert "90% interval (TOST)" in texts and "95% interval (Welch t-test)" in (
      texts)
  low, high = axes.get_xlim()
  assert low < -2 and high > 2 and high < 20  # The band, not c's 20 points.


def test_without_a_margin_no_band_and_every_interval_in_view(tmp_path):
  _, comparisons, _ = _figures(tmp_path, "val_accuracy",
                               equivalence_margin=None)
  texts = _texts(comparisons)
  assert not any(text.startswith("equivalence margin") for text in texts)
  assert "off scale" not in texts and "90% interval (TOST)" not in texts
  assert comparisons.axes[0].get_xlim()[1] > 20


def test_a_study_without_comparisons_has_no_forest_plot(tmp_path):
  _study(tmp_path, {"base": {0: 0.6, 1: 0.62}}, "val_accuracy")
  study_report.write_summary(str(tmp_path))
  assert not (tmp_path / figures.COMPARISONS_FILENAME).exists()
  assert (tmp_path / figures.FINALS_FILENAME).exists()


def test_metric_direction_and_units():
  assert statistics.metric_direction("test_accuracy") == "higher"
  assert statistics.metric_direction("val_loss") == "lower"
  assert statistics.metric_direction("test_error") == "lower"
  accuracy, loss = (figures.metric_units(m)
                    for m in ("test_accuracy", "test_loss"))
  assert (accuracy.scale, accuracy.value, accuracy.difference) == (
      100.0, "%", "points")
  assert (loss.scale, loss.value, loss.difference, loss.direction) == (
      1.0, "nats", "nats", "lower")
