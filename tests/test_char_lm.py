"""The character language model through the one loop (8 CPU devices)."""

import math

import jax
import numpy as np
import pytest

from train import config as config_lib
from train import evaluate
from train import loop
from train import record
from train.configs import shakespeare

CORPUS = "".join(f"{i % 7} Shall I compare thee to a summer's day?\n"
                 for i in range(300))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text(CORPUS, encoding="utf-8")
  return f"text:{path}"


def lm_config(source, **overrides):
  """The Shakespeare config, shrunk: the tiny GPT, 42 steps an epoch."""
  config = shakespeare.get_config()
  config.update_from_flattened_dict({
      "data.source": source, "data.context": 16, "model.name": "gpt-2-32",
      "batch_size": 16, "eval_batch_size": 64, "num_epochs": 2,
      "log_every_steps": 2, "checkpoint_every_steps": 4,
      "schedule.learning_rate": 3e-3, "progress": False, **overrides})
  return config


def _params(workdir):
  config = config_lib.load_run_config(str(workdir))
  setup, state, _ = loop.set_up_training(config, str(workdir),
                                         read_only=True)
  setup.checkpointer.close()
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lm_straight")
  loop.train_and_evaluate(lm_config(corpus), str(workdir))
  return workdir


def test_the_language_model_trains_and_reports_its_measures(straight_run):
  records = record.read_metrics(straight_run)
  epochs = records[record.EPOCH_KIND]
  assert [r["epoch"] for r in epochs] == [1, 2]
  assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] < math.log(20)
  for split in record.SPLITS:
    loss = epochs[-1][record.split_field(split, "loss")]
    assert epochs[-1][record.split_field(split, "bits_per_char")] == (
        pytest.approx(loss / math.log(2)))
    assert 0 < epochs[-1][record.split_field(split, "accuracy")] < 1
  assert record.TOKENS_PER_SEC in records[record.TRAIN_KIND][-1]
  assert record.IMAGES_PER_SEC not in records[record.TRAIN_KIND][-1]


def test_resume_is_bit_identical(corpus, straight_run, tmp_path):
  loop.train_and_evaluate(lm_config(corpus, stop_after_steps=7),
                          str(tmp_path))
  loop.train_and_evaluate(lm_config(corpus), str(tmp_path))
  compared, found = record.differences(str(tmp_path), str(straight_run),
                                       kinds=(record.EPOCH_KIND,))
  assert compared > 10 and not found
  for a, b in zip(jax.tree.leaves(_params(tmp_path)),
                  jax.tree.leaves(_params(straight_run)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_jit_matches_pmap(corpus, straight_run, tmp_path):
  loop.train_and_evaluate(lm_config(corpus, parallel="jit"), str(tmp_path))
  ours, theirs = (record.read_metrics(p)[record.EPOCH_KIND]
                  for p in (tmp_path, straight_run))
  for a, b in zip(ours, theirs, strict=True):
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_evaluating_a_checkpoint_gives_the_runs_test_measures(straight_run):
  result = evaluate.evaluate_checkpoint(str(straight_run))
  last = record.read_metrics(straight_run)[record.EPOCH_KIND][-1]
  for measure in record.MEASURES:
    field = record.split_field("test", measure)
    assert result[field] == pytest.approx(last[field], rel=1e-6)


def test_a_source_of_the_other_task_says_which_task_reads_it(corpus):
  config = lm_config("synthetic:cifar10")
  with pytest.raises(config_lib.ConfigError, match=r"not a source of the "
                     r"char_lm task: set --config\.task=image_classification"):
    config_lib.validate(config)
  config = lm_config(corpus, task="image_classification")
  with pytest.raises(config_lib.ConfigError, match=r"--config\.task=char_lm"):
    config_lib.validate(config)


def test_a_context_longer_than_the_models_is_a_config_error(corpus,
                                                             tmp_path):
  with pytest.raises(config_lib.ConfigError, match="longer than gpt-2-32's "
                     "context of 16"):
    loop.train_and_evaluate(lm_config(corpus, **{"data.context": 32}),
                            str(tmp_path))
