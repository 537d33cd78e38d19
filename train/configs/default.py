"""The LCAM reference set-up: WRN-28-10 on CIFAR-10, batch 128, 150 epochs.

Every other config starts from this one and changes a few fields. Any field
can be overridden on the command line, e.g.
`--config.optimizer.beta_below=0.93`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """The reference experiment, schedule A, 'sparse' priority (0.95/0.9)."""
  config = ml_collections.ConfigDict()
  # "image_classification" (the Wide-ResNets on CIFAR-style images) or
  # "char_lm" (GPTs on a character corpus; train/configs/shakespeare.py).
  config.task = "image_classification"
  config.seed = 0
  config.data = _data()
  config.model = ml_collections.ConfigDict()
  config.model.name = "wrn-28-10"
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"  # computation dtype; "bfloat16" on GPU/TPU
  config.optimizer = _optimizer()
  config.schedule = _schedule()

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
  # the command line (0: automatic, one per core up to 8); see train/config.py.
  config.host_devices = 0
  config.parallel = "pmap"  # or "jit" (jax.jit with a NamedSharding)
  config.progress = True  # progress bar (plain lines when not a terminal)
  config.distributed = _distributed()
  return config


def _data() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  # "tfds:NAME", "folder:PATH" (folder or .tar/.tar.gz/.zip) or "synthetic:...";
  # for char_lm, "text:PATH" (a UTF-8 text file) or "tfds:tiny_shakespeare".
  data.source = "tfds:cifar10"
  data.data_dir = config_dict.placeholder(str)  # TFDS data_dir
  data.cache_dir = config_dict.placeholder(str)  # decoded image folders
  data.normalization = "imagenet"  # or "dataset"
  data.augment = True  # random crop (pad 4) and horizontal flip
  data.drop_remainder = False  # the reference keeps the last batch
  # > 0: hold this many training examples out of training (a fixed choice,
  # the same for every seed and optimizer) and evaluate them every epoch
  # (val_loss, val_accuracy), e.g. to tune hyper-parameters without the test
  # set.
  data.validation_examples = 0
  # Whether epochs evaluate the test split; False keeps a tuning study's runs
  # from ever seeing it (they evaluate the validation examples only).
  data.eval_test = True
  # char_lm: characters the model reads per window (at most the model's
  # context); each window predicts as many.
  data.context = 64
  return data


def _optimizer() -> ml_collections.ConfigDict:
  optimizer = ml_collections.ConfigDict()
  # "lcam", "sgd" (heavy ball or Nesterov) or "adamw".
  optimizer.name = "lcam"
  # Coupled (added to the gradient) for lcam and sgd, decoupled for adamw.
  optimizer.weight_decay = 5e-4
  optimizer.beta_below = 0.95
  optimizer.beta_above = 0.9
  optimizer.beta_init = 0.9
  optimizer.averaging = "epoch"  # or "ema"
  optimizer.ema_decay = 0.99
  optimizer.lag = True
  optimizer.start_step = 0
  # "loss" (LCAM's rule) or "random": a placebo, each step's phase drawn,
  # "below" with probability below_probability, from phase_seed (None: the
  # run's seed, so seeds differ in their draws too) and the step (for lcam,
  # or sgd/adamw with loss_control).
  optimizer.phases = "loss"
  # One probability an epoch; epochs past the tuple keep its last value, so
  # one value is a constant.
  optimizer.below_probability = (0.5,)
  optimizer.phase_seed = config_dict.placeholder(int)
  optimizer.momentum = 0.9  # for "sgd"
  optimizer.nesterov = False
  optimizer.b1 = 0.9  # for "adamw"
  optimizer.b2 = 0.999
  optimizer.eps = 1e-8
  # Loss-controlled hyper-parameters of "sgd" or "adamw" (LCAM's rule, with
  # averaging, ema_decay, lag and start_step above), as JSON: name ->
  # [value below the running mean, value at or above it], e.g.
  # '{"b1": [0.95, 0.9]}'. Empty: none.
  optimizer.loss_control = ""
  return optimizer


def _schedule() -> ml_collections.ConfigDict:
  schedule = ml_collections.ConfigDict()
  # "step" (x decay_factor after each of boundaries_epochs, which may be
  # fractions of an epoch: the nearest step; schedule A),
  # "exponential" (constant for constant_epochs, then x decay_per_step before
  # every step; schedule B), "cosine", "constant".
  schedule.name = "step"
  schedule.learning_rate = 0.1
  schedule.boundaries_epochs = (31, 61, 91)
  schedule.decay_factor = 0.2
  schedule.constant_epochs = 31
  schedule.decay_per_step = 0.99985
  schedule.final_learning_rate = 0.0  # end of "cosine"
  # Linear warm-up from 0, any schedule. It replaces the start of "step" and
  # "exponential" (their decays stay at the epochs above, so it must end by
  # the first); "cosine" decays from the warm-up's end to the run's end.
  schedule.warmup_epochs = 0.0
  return schedule


def _distributed() -> ml_collections.ConfigDict:
  distributed = ml_collections.ConfigDict()
  # "auto": jax.distributed.initialize() when the environment asks for it
  # (coordinator set below or in JAX_COORDINATOR_ADDRESS, or a cluster of
  # several processes that JAX detects: a SLURM step, Open MPI, a multi-host
  # TPU); "yes" always; "no" never (each process runs alone).
  distributed.initialize = "auto"
  distributed.coordinator_address = config_dict.placeholder(str)
  distributed.num_processes = config_dict.placeholder(int)
  distributed.process_id = config_dict.placeholder(int)
  return distributed
