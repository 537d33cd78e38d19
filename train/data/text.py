"""Character-level text: a corpus split by position, cut into windows.

Sources (`config.data.source` of the language-model task):

  text:PATH              a UTF-8 text file, e.g. Tiny Shakespeare.
  tfds:tiny_shakespeare  the prepared TFDS dataset (array_record files in
                         `data_dir`), one example of text per split.

A text file is split by TFDS's rule for `tiny_shakespeare`: train is the first
90 % of the characters (`int(0.9 * n)`), validation half of the rest, test the
remainder; for Tiny Shakespeare that is 1,003,854 / 55,770 / 55,770
characters, the same text TFDS's splits hold. The vocabulary is the sorted
set of the training text's characters; a character of another split outside
it is an error.

An epoch of training is one pass over the training text in non-overlapping
windows of ``context + 1`` characters (the model reads the first ``context``
and predicts the last ``context``), started at an offset in ``[0, context]``
and visited in an order that both come from ``(seed, epoch)``. The window
count does not depend on the offset and the partial batch is dropped, so
every epoch has the same number of steps. Evaluation predicts every
character of a split but its first exactly once, in windows that start every
``context`` characters; a batch's ``mask`` marks the predicted characters.
"""

import dataclasses
import os

import numpy as np

from train.data import batching
from train.data.split import DataError
from train.data.split import DataNotFoundError

# TFDS's `tiny_shakespeare` split rule, applied to any text file.
TRAIN_FRACTION = 0.9
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit:
  """One split of a character corpus, as indices into its vocabulary.

  Attributes:
    tokens: uint8 character indices, shape `(num_characters,)`, read-only.
    vocabulary: the characters, in index order (the training text's).
    source: the source string, e.g. `text:../shared/data/tinyshakespeare.txt`.
    split: `train`, `validation` or `test`.
  """

  tokens: np.ndarray
  vocabulary: str
  source: str
  split: str

  def __post_init__(self):
    self.tokens.setflags(write=False)

  @property
  def num_examples(self) -> int:
    """The number of characters."""
    return int(self.tokens.shape[0])

  @property
  def num_classes(self) -> int:
    """The vocabulary's size: the classes of next-character prediction."""
    return len(self.vocabulary)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.vocabulary)


def split_text(text: str) -> dict[str, str]:
  """The train, validation and test parts of ``text`` by TFDS's rule.

  Example:
    >>> {k: len(v) for k, v in split_text("x" * 1115394).items()}
    {'train': 1003854, 'validation': 55770, 'test': 55770}
  """
  train_end = int(len(text) * TRAIN_FRACTION)
  validation_end = train_end + int((len(text) - train_end) * 0.5)
  return {"train": text[:train_end],
          "validation": text[train_end:validation_end],
          "test": text[validation_end:]}


def encode(text: str, vocabulary: str, where: str) -> np.ndarray:
  """``text`` as uint8 indices into ``vocabulary``.

  Raises:
    DataError: a character of ``text`` is not in the vocabulary.
  """
  if len(vocabulary) > 256:
    raise DataError(f"{where}: {len(vocabulary)} distinct characters; at "
                    "most 256 are supported.")
  lookup = np.full(max(map(ord, vocabulary + text), default=0) + 1, -1,
                   np.int32)
  lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary))
  codes = lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
  if (codes < 0).any():
    unknown = sorted(set(text) - set(vocabulary))
    shown = ", ".join(repr(c) for c in unknown[:10])
    raise DataError(
        f"{where} has {len(unknown)} character(s) outside the training text's "
        f"vocabulary ({shown}{', ...' if len(unknown) > 10 else ''}); a "
        "language model cannot predict them. Use a corpus whose splits share "
        "one alphabet.")
  return codes.astype(np.uint8)


def load_text_split(source: str, split: str, *,
                    data_dir: str | os.PathLike | None = None) -> TextSplit:
  """Loads one split of a character corpus (`text:PATH` or `tfds:NAME`).

  Raises:
    DataNotFoundError: no such file, dataset or split.
    DataError: an unknown source, or a character outside the vocabulary.
  """
  kind, _, rest = str(source).partition(":")
  if split not in SPLITS:
    raise DataNotFoundError(f"{source} has no split {split!r}; splits: "
                            f"{', '.join(SPLITS)}.")
  if kind == "text":
    parts = split_text(_read_text_file(rest))
  elif kind == "tfds":
    from train.data import tfds_source  # pylint: disable=g-import-not-at-top
    parts = {name: tfds_source.load_tfds_text(rest, name, data_dir=data_dir)
             for name in dict.fromkeys(("train", split))}
  else:
    raise DataError(
        f"Unknown text source {source!r}: use text:PATH (a UTF-8 text file, "
        "e.g. text:../shared/data/tinyshakespeare.txt) or "
        "tfds:tiny_shakespeare.")
  if not parts["train"]:
    raise DataError(f"{source}: the training text is empty.")
  vocabulary = "".join(sorted(set(parts["train"])))
  return TextSplit(encode(parts[split], vocabulary, f"{source} ({split})"),
                   vocabulary, source, split)


def _read_text_file(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError as e:
    raise DataNotFoundError(f"No text file {path!r}: give text:PATH of a "
                            "UTF-8 text file.") from e
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"Cannot read {path!r} as UTF-8 text ({e}).") from e


def windows_per_epoch(num_characters: int, context: int) -> int:
  """The training windows of ``context + 1`` characters, at any offset."""
  return max((num_characters - context) // (context + 1), 0)


def steps_per_epoch(split: TextSplit, global_batch_size: int,
                    context: int) -> int:
  """Full batches of windows in an epoch (the partial batch is dropped)."""
  windows = windows_per_epoch(split.num_examples, context)
  if windows < global_batch_size:
    raise DataError(
        f"{split.source} ({split.split}): {windows} windows of {context + 1} "
        f"characters hold no full batch of {global_batch_size}; use a smaller "
        "batch or context.")
  return windows // global_batch_size


def window_starts(seed: int, epoch: int, num_characters: int,
                  context: int) -> np.ndarray:
  """Where an epoch's windows start, in the order it visits them.

  A function of ``(seed, epoch)``: the offset in ``[0, context]`` and the
  order, so that a resumed run sees the same windows.
  """
  rng = np.random.default_rng([int(seed), int(epoch)])
  offset = rng.integers(context + 1)
  order = rng.permutation(windows_per_epoch(num_characters, context))
  return offset + order * (context + 1)


def train_batches(split: TextSplit, global_batch_size: int, context: int, *,
                  seed: int, epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1):
  """This process's share of each training batch of one epoch.

  Yields:
    ``{"tokens": int32 (B_local, context + 1), "mask": bool (B_local,
    context), "position": int32 (B_local,)}`` for steps ``start_step, ...``.
  """
  num_steps = steps_per_epoch(split, global_batch_size, context)
  if int(start_step) != start_step or not 0 <= start_step <= num_steps:
    raise DataError(f"start_step must be an integer in [0, {num_steps}] (the "
                    f"steps of an epoch), got {start_step!r}.")
  positions = batching.process_positions(global_batch_size, process_index,
                                         process_count)
  starts = window_starts(seed, epoch, split.num_examples, context)
  for step in range(int(start_step), num_steps):
    chosen = starts[step * global_batch_size + positions]
    yield _windows(split.tokens, chosen, context, positions)


def eval_batches(split: TextSplit, global_batch_size: int, context: int, *,
                 process_index: int = 0, process_count: int = 1):
  """Batches that predict every character but the first exactly once.

  Windows start every ``context`` characters; the last one and the last
  batch are padded, with ``mask`` False where nothing is predicted.
  """
  positions = batching.process_positions(global_batch_size, process_index,
                                         process_count)
  starts = np.arange(0, max(split.num_examples - 1, 0), context)
  for first in range(0, len(starts), global_batch_size):
    slots = first + positions
    chosen = np.where(slots < len(starts), starts[np.minimum(
        slots, len(starts) - 1)], split.num_examples)
    yield _windows(split.tokens, chosen, context, positions)


def _windows(tokens: np.ndarray, starts: np.ndarray, context: int,
             positions: np.ndarray) -> dict[str, np.ndarray]:
  """Windows of ``context + 1`` tokens at ``starts``, padded past the end."""
  padded = np.concatenate([tokens, np.zeros(context + 1, tokens.dtype)])
  index = starts[:, None] + np.arange(context + 1)
  targets = index[:, 1:] < len(tokens)
  return {"tokens": padded[np.minimum(index, len(padded) - 1)].astype(
              np.int32),
          "mask": targets, "position": positions.copy()}
