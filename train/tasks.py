"""The tasks the loop trains, behind one small interface.

The loop (`train.loop`), the steps (`train.steps`), checkpoints, records,
resume, signals, `jax.pmap` and `jax.jit` are the same for every task. What
differs between tasks is here: how a task loads its splits and cuts them into
batches, which model it builds, how a batch becomes the model's inputs and
the labels its cross-entropy compares with, and how it names its measures.

  image_classification  CIFAR-style images (`train.data`), Wide-ResNets,
                        augmentation and normalisation on the device; a
                        batch's ``mask`` marks real examples.
  char_lm               a character corpus (`train.data.text`), GPTs,
                        next-character prediction; ``mask`` marks the
                        predicted characters.

Both losses are the masked mean of the cross-entropy over what ``mask``
marks, so the steps need not know which task they run. `create_task(config)`
picks the task of ``config.task``.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import math
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections

import models
from train import data
from train import record
from train.data import text as text_data

TASK_NAMES = ("image_classification", "char_lm")

# (batch, key or None) -> (model inputs, labels); None: no augmentation.
StepInputs = Callable[[dict, jax.Array | None], tuple[jax.Array, jax.Array]]


class Splits(NamedTuple):
  """A run's data: training, and the splits it evaluates (None: none)."""

  train: data.Split | data.TextSplit
  validation: data.Split | data.TextSplit | None
  test: data.Split | data.TextSplit | None
  # The splits as the source gave them (before a hold-out), which the run's
  # data fingerprint hashes (`train.provenance`).
  loaded: tuple[data.Split | data.TextSplit, ...]


class Task(Protocol):
  """What the loop needs of a task (see the module docstring)."""

  # The train record's throughput field, and its units in one example.
  throughput_field: str

  def load_splits(self, config: ml_collections.ConfigDict, *,
                  test: bool) -> Splits:
    """The splits; the test split only if ``test``."""

  def steps_per_epoch(self, config: ml_collections.ConfigDict,
                      train: data.Split | data.TextSplit) -> int:
    """Optimizer steps in one epoch."""

  def train_batches(self, config: ml_collections.ConfigDict,
                    train: data.Split | data.TextSplit, *, epoch: int,
                    start_step: int, process_index: int,
                    process_count: int) -> Iterator[data.Batch]:
    """This process's batches of ``epoch`` from ``start_step`` on."""

  def eval_batches(self, config: ml_collections.ConfigDict,
                   split: data.Split | data.TextSplit, *, process_index: int,
                   process_count: int) -> Iterator[data.Batch]:
    """This process's batches covering the split once."""

  def create_model(self, config: ml_collections.ConfigDict,
                   train: data.Split | data.TextSplit,
                   axis_name: str | None):
    """The Flax module, called as ``model(inputs, train=..., mask=...)``."""

  def example_input(self, config: ml_collections.ConfigDict,
                    train: data.Split | data.TextSplit) -> jax.Array:
    """An input of one example, to initialise the model."""

  def step_inputs(self, config: ml_collections.ConfigDict,
                  train: data.Split | data.TextSplit) -> StepInputs:
    """The function the steps turn a device batch into inputs and labels
    with."""

  def units_per_example(self, config: ml_collections.ConfigDict) -> int:
    """What one example counts in ``throughput_field`` (1, or characters)."""

  def eval_fields(self, sums: dict[str, float], prefix: str
                  ) -> dict[str, float]:
    """A split's epoch-record fields from the eval step's sums."""


def _accuracy_fields(sums, prefix: str) -> dict[str, float]:
  count = float(sums["count"])
  return {record.split_field(prefix, "loss"): float(sums["loss"]) / count,
          record.split_field(prefix, "accuracy"):
              float(sums["correct"]) / count}


@dataclasses.dataclass(frozen=True)
class ImageClassification:
  """CIFAR-style image classification (`train.data`)."""

  throughput_field: str = record.IMAGES_PER_SEC

  def load_splits(self, config, *, test):
    load = functools.partial(data.load_split, config.data.source,
                             data_dir=config.data.data_dir,
                             cache_dir=config.data.cache_dir)
    loaded = train = load("train")
    validation, test = None, load("test") if test else None
    if config.data.validation_examples:
      train, validation = data.hold_out(train,
                                        config.data.validation_examples)
    return Splits(train, validation, test, tuple(
        s for s in (loaded, test) if s))

  def steps_per_epoch(self, config, train):
    return data.steps_per_epoch(train.num_examples, config.batch_size,
                                config.data.drop_remainder)

  def train_batches(self, config, train, *, epoch, start_step, process_index,
                    process_count):
    return data.train_batches(
        train, config.batch_size, seed=config.seed, epoch=epoch,
        start_step=start_step, drop_remainder=config.data.drop_remainder,
        process_index=process_index, process_count=process_count)

  def eval_batches(self, config, split, *, process_index, process_count):
    return data.eval_batches(split, config.eval_batch_size,
                             process_index=process_index,
                             process_count=process_count)

  def create_model(self, config, train, axis_name):
    return models.create_model(
        config.model.name, train.num_classes,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype), bn_axis_name=axis_name)

  def example_input(self, config, train):
    return jnp.zeros((1, *train.images.shape[1:]), jnp.float32)

  def step_inputs(self, config, train):
    mean, std = data.normalization_stats(config.data.normalization, train)
    return functools.partial(
        _image_inputs, mean=tuple(mean), std=tuple(std),
        augment=config.data.augment, dtype=jnp.dtype(config.model.dtype))

  def units_per_example(self, config):
    return 1

  def eval_fields(self, sums, prefix):
    return _accuracy_fields(sums, prefix)


def _image_inputs(batch, key, *, mean, std, augment, dtype):
  images = batch["image"]
  if augment and key is not None:
    images = data.augment(key, images, batch["position"])
  return data.normalize(images, mean, std, dtype=dtype), batch["label"]


@dataclasses.dataclass(frozen=True)
class CharacterModelling:
  """Next-character prediction on a character corpus (`train.data.text`).

  Its measures: the loss in nats per character, bits per character and
  next-character accuracy, for the validation split at every evaluation and
  the test split when ``config.data.eval_test``.
  """

  throughput_field: str = record.TOKENS_PER_SEC

  def load_splits(self, config, *, test):
    if config.data.validation_examples:
      raise data.DataError(
          "config.data.validation_examples must be 0 for char_lm: the text "
          "has its own validation split, evaluated every epoch.")
    load = functools.partial(data.load_text_split, config.data.source,
                             data_dir=config.data.data_dir)
    splits = (load("train"), load("validation"),
              load("test") if test else None)
    return Splits(*splits, tuple(s for s in splits if s))

  def steps_per_epoch(self, config, train):
    return text_data.steps_per_epoch(train, config.batch_size,
                                     config.data.context)

  def train_batches(self, config, train, *, epoch, start_step, process_index,
                    process_count):
    return text_data.train_batches(
        train, config.batch_size, config.data.context, seed=config.seed,
        epoch=epoch, start_step=start_step, process_index=process_index,
        process_count=process_count)

  def eval_batches(self, config, split, *, process_index, process_count):
    return text_data.eval_batches(split, config.eval_batch_size,
                                  config.data.context,
                                  process_index=process_index,
                                  process_count=process_count)

  def create_model(self, config, train, axis_name):
    model = models.create_model(
        config.model.name, train.num_classes,
        dropout_rate=config.model.dropout_rate,
        dtype=jnp.dtype(config.model.dtype), bn_axis_name=axis_name)
    if config.data.context > model.context:
      raise ValueError(
          f"config.data.context={config.data.context} is longer than "
          f"{config.model.name}'s context of {model.context}.")
    return model

  def example_input(self, config, train):
    return jnp.zeros((1, config.data.context), jnp.int32)

  def step_inputs(self, config, train):
    return _next_characters

  def units_per_example(self, config):
    return config.data.context

  def eval_fields(self, sums, prefix):
    fields = _accuracy_fields(sums, prefix)
    nats = fields[record.split_field(prefix, "loss")]
    fields[record.split_field(prefix, "bits_per_char")] = nats / math.log(2)
    return fields


def _next_characters(batch, key):
  del key  # No augmentation.
  tokens = batch["tokens"]
  return tokens[:, :-1], tokens[:, 1:]


_TASKS = {"image_classification": ImageClassification,
          "char_lm": CharacterModelling}


def create_task(config: ml_collections.ConfigDict) -> Task:
  """The task of ``config.task``."""
  return _TASKS[config.task]()
