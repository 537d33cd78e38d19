"""The LCAM reference set-up: WRN-28-10 on CIFAR-10, batch 128, 150 epochs.

Every other config starts from this one and changes a few fields. Any field
can be overridden on the command line, e.g. `--config.optimizer.beta_below=0.93`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """The reference experiment, schedule A, 'sparse' priority (0.95/0.9)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # "tfds:NAME", "folder:PATH" (folder or .tar/.tar.gz/.zip) or "synthetic:...".
  config.data.source = "tfds:cifar10"
  config.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir
  config.data.cache_dir = config_dict.placeholder(str)  # decoded image folders
  config.data.normalization = "imagenet"  # or "dataset"
  config.data.augment = True  # random crop (pad 4) and horizontal flip
  config.data.drop_remainder = False  # the reference keeps the last batch

  config.model = ml_collections.ConfigDict()
  config.model.name = "wrn-28-10"
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"  # computation dtype; "bfloat16" on GPU/TPU

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "lcam"  # or "sgd" (heavy ball or Nesterov)
  config.optimizer.weight_decay = 5e-4  # coupled, on every parameter
  config.optimizer.beta_below = 0.95
  config.optimizer.beta_above = 0.9
  config.optimizer.beta_init = 0.9
  config.optimizer.averaging = "epoch"  # or "ema"
  config.optimizer.ema_decay = 0.99
  config.optimizer.lag = True
  config.optimizer.start_step = 0
  config.optimizer.momentum = 0.9  # for "sgd"
  config.optimizer.nesterov = False

  config.schedule = ml_collections.ConfigDict()
  # "step" (x decay_factor after each of boundaries_epochs; schedule A),
  # "exponential" (constant for constant_epochs, then x decay_per_step before
  # every step; schedule B), "cosine", "constant".
  config.schedule.name = "step"
  config.schedule.learning_rate = 0.1
  config.schedule.boundaries_epochs = (31, 61, 91)
  config.schedule.decay_factor = 0.2
  config.schedule.constant_epochs = 31
  config.schedule.decay_per_step = 0.99985
  config.schedule.final_learning_rate = 0.0  # end of "cosine"
  config.schedule.warmup_epochs = 0.0  # linear warm-up from 0, any schedule

  config.batch_size = 128  # global, over all devices and processes
  config.eval_batch_size = 1000
  config.num_epochs = 150
  config.eval_every_epochs = 1  # and after the last epoch; 0: never
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000  # and at the end of every epoch
  config.keep_checkpoints = 3
  config.stop_after_steps = 0  # > 0: stop (resumably) once at this step
  config.on_nonfinite_loss = "stop"  # or "skip" (drop that step's update)
  # CPU hosts without an accelerator are split into this many XLA devices by
  # the command line (0: automatic, 2 per core up to 8); see train/main.py.
  config.host_devices = 0
  config.parallel = "pmap"  # or "jit" (jax.jit with a NamedSharding)
  config.progress = True  # progress bar (plain lines when not a terminal)

  config.distributed = ml_collections.ConfigDict()
  # "auto": jax.distributed.initialize() when the environment asks for it
  # (coordinator set below or in JAX_COORDINATOR_ADDRESS, or a cluster that
  # JAX detects); "yes" always; "no" never.
  config.distributed.initialize = "auto"
  config.distributed.coordinator_address = config_dict.placeholder(str)
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  return config
