"""Tiny Shakespeare, character by character: GPT-4-128 with AdamW, 4 epochs.

The language-model task (`train.tasks`): a 4-layer, 128-wide GPT reads
windows of 64 characters and predicts the next character at each position;
482 steps of 32 windows an epoch, a linear warm-up over a quarter of the
first epoch, then cosine decay to zero. A few minutes a run on two CPU cores.
Give the corpus with `--config.data.source=text:PATH` (the shared
`tinyshakespeare.txt`) or use a prepared `tfds:tiny_shakespeare`. The SGD
and LCAM families need their own learning rates, e.g.
`--config.optimizer.name=lcam --config.schedule.learning_rate=0.3`.
"""

import ml_collections

from train.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.task = "char_lm"
  config.data.source = "tfds:tiny_shakespeare"
  config.data.context = 64
  config.data.augment = False
  config.model.name = "gpt-4-128"
  config.batch_size = 32
  config.eval_batch_size = 256
  config.num_epochs = 4
  config.log_every_steps = 50
  config.optimizer.name = "adamw"
  config.optimizer.weight_decay = 0.1  # decoupled, on every parameter
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.99
  config.schedule.name = "cosine"
  config.schedule.learning_rate = 1e-3
  config.schedule.warmup_epochs = 0.25
  return config
