"""Tests of train.data.text: character corpora, their splits and windows."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from train import data
from train.data import text

SHARED_TEXT = Path(__file__).parents[2] / "shared/data/tinyshakespeare.txt"
CORPUS = "".join(f"Line {i}: to be, or not to be?\n" for i in range(400))


@pytest.fixture
def corpus_file(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text(CORPUS, encoding="utf-8")
  return f"text:{path}"


def test_splits_follow_tfds_points_and_share_the_training_vocabulary(
    corpus_file):
  splits = {name: data.load_text_split(corpus_file, name)
            for name in text.SPLITS}
  parts = text.split_text(CORPUS)
  assert [len(parts[n]) for n in text.SPLITS] == [
      splits[n].num_examples for n in text.SPLITS]
  assert sum(len(p) for p in parts.values()) == len(CORPUS)
  assert "".join(parts.values()) == CORPUS
  vocabulary = splits["train"].vocabulary
  assert vocabulary == "".join(sorted(set(parts["train"])))
  for name, split in splits.items():
    assert split.vocabulary == vocabulary
    assert "".join(vocabulary[i] for i in split.tokens) == parts[name]


@pytest.mark.skipif(not SHARED_TEXT.exists(), reason="no shared corpus")
def test_tiny_shakespeare_has_tfds_split_sizes_and_65_characters():
  sizes = [data.load_text_split(f"text:{SHARED_TEXT}", name).num_examples
           for name in text.SPLITS]
  assert sizes == [1_003_854, 55_770, 55_770]
  train = data.load_text_split(f"text:{SHARED_TEXT}", "train")
  assert train.num_classes == 65
  assert text.steps_per_epoch(train, 32, 64) == 482


def test_missing_file_and_unknown_character_are_one_line_errors(tmp_path):
  with pytest.raises(data.DataNotFoundError, match="No text file"):
    data.load_text_split(f"text:{tmp_path}/missing.txt", "train")
  path = tmp_path / "odd.txt"
  path.write_text("abab" * 90 + "abcZ" * 10, encoding="utf-8")
  data.load_text_split(f"text:{path}", "train")
  with pytest.raises(data.DataError, match=r"2 character\(s\) outside the "
                     r"training text's vocabulary \('Z', 'c'\)") as error:
    data.load_text_split(f"text:{path}", "test")
  assert "\n" not in str(error.value)
  with pytest.raises(data.DataError, match="Unknown text source"):
    data.load_text_split("folder:x", "train")


def test_every_offset_gives_the_same_number_of_windows_inside_the_text():
  length, context = 1000, 9
  count = text.windows_per_epoch(length, context)
  for offset in range(context + 1):
    ends = offset + np.arange(count) * (context + 1) + context + 1
    assert ends.max() <= length
  for epoch in range(5):
    starts = text.window_starts(3, epoch, length, context)
    assert len(starts) == count and starts.max() + context + 1 <= length
    assert len(set(starts % (context + 1))) == 1  # One offset: no overlap.


def test_epochs_are_shuffled_and_resume_at_any_step(corpus_file):
  split = data.load_text_split(corpus_file, "train")
  epoch = list(text.train_batches(split, 8, 16, seed=1, epoch=2))
  assert len(epoch) == text.steps_per_epoch(split, 8, 16)
  resumed = list(text.train_batches(split, 8, 16, seed=1, epoch=2,
                                    start_step=3))
  for a, b in zip(epoch[3:], resumed, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  other = next(text.train_batches(split, 8, 16, seed=1, epoch=3))
  assert not np.array_equal(epoch[0]["tokens"], other["tokens"])
  for batch in epoch:
    assert batch["tokens"].shape == (8, 17) and batch["mask"].all()


def test_processes_share_each_global_batch(corpus_file):
  split = data.load_text_split(corpus_file, "train")
  whole = next(text.train_batches(split, 8, 16, seed=0, epoch=0))
  parts = [next(text.train_batches(split, 8, 16, seed=0, epoch=0,
                                   process_index=i, process_count=2))
           for i in range(2)]
  np.testing.assert_array_equal(
      np.concatenate([p["tokens"] for p in parts]), whole["tokens"])
  np.testing.assert_array_equal(parts[1]["position"], np.arange(4, 8))


def test_evaluation_predicts_every_character_but_the_first_once(corpus_file):
  split = data.load_text_split(corpus_file, "validation")
  predicted = []
  for batch in text.eval_batches(split, 4, 7):
    assert batch["tokens"].shape == (4, 8)
    predicted.extend(batch["tokens"][:, 1:][batch["mask"]])
  np.testing.assert_array_equal(predicted, split.tokens[1:])


def test_too_short_a_text_for_one_batch_says_what_to_do(tmp_path):
  path = tmp_path / "short.txt"
  path.write_text("abc" * 100, encoding="utf-8")
  split = data.load_text_split(f"text:{path}", "train")
  with pytest.raises(data.DataError, match="no full batch of 32; use a "
                     "smaller batch or context"):
    text.steps_per_epoch(split, 32, 64)


def _write_prepared_metadata(data_dir: Path, name: str) -> None:
  """Metadata of a prepared TFDS dataset (written without TensorFlow)."""
  builder = tfds.builder(name, data_dir=data_dir)
  split_infos = [tfds.core.SplitInfo(
      name=split, shard_lengths=[1], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}"
          "-{SHARD_X_OF_Y}", dataset_name=name, split=split,
          filetype_suffix="array_record"))
                 for split in text.SPLITS]
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.set_file_format("array_record", override=True)
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


def _split_texts(texts):
  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return [{"text": texts[split].encode("utf-8")}]
  return as_data_source


def test_tfds_source_reads_tiny_shakespeare_like_the_text_file(
    tmp_path, corpus_file):
  _write_prepared_metadata(tmp_path, "tiny_shakespeare")
  with tfds.testing.mock_data(
      data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES,
      as_data_source_fn=_split_texts(text.split_text(CORPUS))):
    from_tfds = data.load_text_split("tfds:tiny_shakespeare", "test",
                                     data_dir=tmp_path)
  from_file = data.load_text_split(corpus_file, "test")
  assert from_tfds.vocabulary == from_file.vocabulary
  np.testing.assert_array_equal(from_tfds.tokens, from_file.tokens)
  assert data.fingerprint(from_tfds) == data.fingerprint(from_file)


def test_tfds_mock_text_outside_the_vocabulary_is_a_clear_error(tmp_path):
  # TFDS's mock text is random: its test split has characters its training
  # split lacks.
  _write_prepared_metadata(tmp_path, "tiny_shakespeare")
  texts = {"train": "abc " * 50, "validation": "cab " * 5, "test": "xyz " * 5}
  mock = tfds.testing.mock_data(
      data_dir=os.fspath(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES,
      as_data_source_fn=_split_texts(texts))
  error = pytest.raises(data.DataError,
                        match="outside the training text's vocabulary")
  with mock, error:
    data.load_text_split("tfds:tiny_shakespeare", "test", data_dir=tmp_path)
