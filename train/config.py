"""Training configs: loading, overriding and checking them, and their fields.

A config is the `ml_collections.ConfigDict` of a file's ``get_config()``
(``train/configs/default.py`` has every field, with comments). The command
line and the study runner load files with `load` and set dotted fields with
`override`; `validate` checks a config; `load_run_config` reads the one a run
saved. `NON_EXPERIMENT_FIELDS` and `RESUME_INVARIANT_FIELDS` name the fields
that do not tell experiments apart and those a resumed run may not change.
"""

from collections.abc import Mapping
import contextlib
import glob
import json
import os
import runpy
from typing import Any

from flax import traverse_util
import ml_collections

import optax_lcam
from train import record
from train import schedules
from train.configs import default

# The repository's root: config and study files are named relative to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The config fields with a fixed set of values, and those values.
CHOICES = {
    "task": ("image_classification", "char_lm"),  # `train.tasks`
    "parallel": ("pmap", "jit"),
    "optimizer.name": ("lcam", "sgd", "adamw"),
    "optimizer.phases": optax_lcam.PHASE_MODES,
    "schedule.name": schedules.SCHEDULE_NAMES,
    "on_nonfinite_loss": ("stop", "skip"),
    "distributed.initialize": ("auto", "yes", "no"),
}
# Fields whose value is a count: positive, or >= 0 where 0 means "never",
# "none" or "automatic".
_POSITIVE_FIELDS = ("batch_size", "eval_batch_size", "num_epochs",
                    "data.context")
_NON_NEGATIVE_FIELDS = (
    "data.validation_examples", "eval_every_epochs", "log_every_steps",
    "checkpoint_every_steps", "stop_after_steps", "keep_checkpoints",
    "host_devices")

# Fields that do not make two runs different experiments: the seeds, where
# data is cached, and how a run is logged, saved, spread over devices,
# evaluated or cut short. A section (``distributed``) stands for its fields.
# Runs that differ only in these are seeds of one experiment (`study.plot`).
NON_EXPERIMENT_FIELDS = (
    "seed", "optimizer.phase_seed", "data.data_dir", "data.cache_dir",
    "eval_batch_size", "eval_every_epochs", "log_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "stop_after_steps",
    "progress", "host_devices", "parallel", "distributed")
# Fields a run cannot change when it resumes: they change the shapes of the
# state or which batches the remaining steps see (`train.checkpoints`).
RESUME_INVARIANT_FIELDS = (
    "task", "seed", "data.source", "data.context", "data.drop_remainder",
    "data.validation_examples", "batch_size", "model.name", "optimizer.name",
    "optimizer.averaging", "optimizer.loss_control", "optimizer.phases")


class ConfigError(ValueError):
  """A config file, field or value that a run cannot use."""


def identifies_experiment(field: str) -> bool:
  """Whether a dotted config field can tell two experiments apart: it is not
  in `NON_EXPERIMENT_FIELDS`, nor is its section.

  Example:
    >>> [identifies_experiment(f) for f in ("optimizer.beta_below", "seed",
    ...                                     "distributed.process_id")]
    [True, False, False]
  """
  return not {field, field.split(".")[0]} & set(NON_EXPERIMENT_FIELDS)


def load(spec: str, function: str = "get_config") -> Any:
  """``path.py[:ARG]`` -> what ``function(ARG)`` of that file returns.

  Without ``:ARG`` the function is called without an argument. A relative
  path is relative to the working directory. A config (``get_config``) may
  also be a run's ``config.json``: the run's own config (`read_json_config`),
  to run it again.

  Raises:
    ConfigError: the file does not exist (naming the files beside it), or
      loading it or calling its function fails. The message is about
      ``spec``, which it does not repeat.
  """
  path, _, argument = spec.partition(":")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    beside = sorted(os.path.basename(file)
                    for file in glob.glob(os.path.join(folder, "[!_]*.py")))
    raise ConfigError("no such file." + (
        f" The files in {folder} are: {', '.join(beside)}." if beside else ""))
  if path.endswith(".json") and function == "get_config":
    return read_json_config(path)
  try:
    make = runpy.run_path(path)[function]
  except KeyError:
    raise ConfigError(f"the file defines no {function}().") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{type(e).__name__}: {e}") from e
  try:
    return make(*([argument] if argument else []))
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(str(e)) from e


def flag_value(value: Any) -> str:
  """A field's value as ``--config.FIELD=`` takes it.

  >>> flag_value((3, 6, 9)), flag_value((0.5,)), flag_value(0.1)
  ('(3,6,9)', '(0.5,)', '0.1')
  """
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(
        value) == 1 else "") + ")"
  return str(value)


def check_field(config: ml_collections.ConfigDict, field: str) -> None:
  """Raises `ConfigError` unless ``config`` has the dotted ``field``.

  The message names the section where the path stops and the section's
  fields, e.g. ``config.optimizer has no field 'bogus'; its fields are: ...``.
  """
  node, names = config, field.split(".")
  for depth, name in enumerate(names):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      where = ".".join(["config"] + names[:depth])
      valid = (sorted(node) if isinstance(node, ml_collections.ConfigDict)
               else [])
      raise ConfigError(f"{where} has no field {name!r}; its fields are: "
                        f"{', '.join(valid) or 'none (it is a value)'}.")
    node = node[name]


def override(config: ml_collections.ConfigDict,
             overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields of ``config``, e.g. ``{"optimizer.lag": False}``.

  Returns:
    ``config``.

  Raises:
    ConfigError: for an unknown field (naming the valid ones, see
      `check_field`), or a value of another type than the field's.
  """
  for field in overrides:
    check_field(config, field)
  try:
    config.update_from_flattened_dict(dict(overrides))
  except TypeError as e:
    raise ConfigError(str(e)) from e
  return config


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was made with (its ``config.json``).

  Raises:
    FileNotFoundError: the workdir has no ``config.json``.
    ConfigError: it cannot be read.
  """
  return read_json_config(os.path.join(workdir, record.CONFIG_FILENAME))


def read_json_config(path: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (a run's ``config.json``).

  Fields added to the harness after the run was made keep their defaults
  (``train/configs/default.py``), which are what the run did without them.

  Raises:
    FileNotFoundError: there is no such file.
    ConfigError: it cannot be read, or holds a field the harness lacks.
  """
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is unreadable ({e}).") from e
  config = default.get_config()
  try:
    for field in traverse_util.flatten_dict(saved, sep="."):
      check_field(config, field)
    config.update(saved)
  except (AttributeError, KeyError, TypeError, ConfigError) as e:
    raise ConfigError(f"{path} is not a config of this harness ({e})") from e
  return config


def validate(config: ml_collections.ConfigDict,
             device_count: int | None = None,
             train_examples: int | None = None) -> None:
  """Checks a config's choices and counts, and its batch sizes when given.

  The model, schedule and optimizer check their own arguments when they are
  built (`as_config_errors`).

  Args:
    config: A training config.
    device_count: If given, the number of devices, which must divide both
      batch sizes.
    train_examples: If given, the size of the training split, which must
      hold a batch: with ``drop_remainder=False`` a larger batch is one step
      of mostly padding, and its memory is spent on the padding.

  Raises:
    ConfigError: naming the field, the bad value and what would do.

  Example:
    >>> validate(default.get_config(), train_examples=100)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    train.config.ConfigError: config.batch_size=128 is larger than the ...
  """
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  for field, valid in CHOICES.items():
    if flat[field] not in valid:
      raise ConfigError(f"config.{field}={flat[field]!r} is not one of "
                        f"{valid}.")
  for field in _POSITIVE_FIELDS:
    if flat[field] <= 0:
      raise ConfigError(f"config.{field} must be positive, got {flat[field]}.")
  for field in _NON_NEGATIVE_FIELDS:
    if flat[field] < 0:
      raise ConfigError(f"config.{field} must be >= 0, got {flat[field]}.")
  _check_source_fits_task(config.task, config.data.source)
  indivisible = [f"config.{field} ({config[field]})"
                 for field in ("batch_size", "eval_batch_size")
                 if device_count and config[field] % device_count]
  if indivisible:
    raise ConfigError(
        f"{' and '.join(indivisible)} must be divisible by the number of "
        f"devices ({device_count}).")
  if train_examples is not None and config.batch_size > train_examples:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is larger than the training "
        f"split ({train_examples} examples); use at most {train_examples}.")


# The source kinds each task reads (`train.data`, `train.data.text`).
_TASK_SOURCES = {"image_classification": ("tfds", "folder", "synthetic"),
                 "char_lm": ("text", "tfds")}


def _check_source_fits_task(task: str, source: str) -> None:
  kind = str(source).partition(":")[0]
  if kind not in _TASK_SOURCES[task]:
    other = next(t for t, kinds in _TASK_SOURCES.items() if kind in kinds
                 ) if kind in ("text", "folder", "synthetic") else None
    hint = (f"set --config.task={other}" if other else
            f"use one of {', '.join(k + ':' for k in _TASK_SOURCES[task])}")
    raise ConfigError(f"config.data.source={source!r} is not a source of the "
                      f"{task} task: {hint}.")


@contextlib.contextmanager
def as_config_errors(section: str):
  """Turns the ValueErrors and TypeErrors of a builder into `ConfigError`."""
  try:
    yield
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.{section}: {e}") from e
