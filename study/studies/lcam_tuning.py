"""Stage 1 of the decisive LCAM study: tune SGD and LCAM on a validation split.

  python -m study run lcam_tuning --workdir results/lcam_tuning --retries 5
  python -m study summarize results/lcam_tuning

Study 1's recipe (`cifar10_cpu`): WRN-10-1, batch 128, coupled weight decay
5e-4, 15 epochs, schedule A scaled to 15 epochs (x0.2 after epochs 3, 6 and
9), on the JPEG CIFAR-10 archive beside the checkout. Here 5,000 of the 50,000
training examples are held out (`data.validation_examples`, a fixed choice
independent of seed and optimizer), the runs train on the other 45,000 (352
steps an epoch) and are scored on the held-out ones only: they never evaluate
the test set (`data.eval_test=False`).

The grid, one seed per configuration (seed 1000, which stage 2 does not use):

* SGD: learning rate in {0.05, 0.1, 0.2} x momentum in {0.9, 0.95};
* LCAM: learning rate in {0.05, 0.1, 0.2} x pair (beta_below/beta_above) in
  {0.95/0.9, 0.9/0.95}.

Selection rule, fixed before the first run: the winner of each family (SGD,
LCAM) is its arm with the highest final validation accuracy (`val_accuracy`
after the last epoch); a tie (equal to 1e-9) goes to the lower learning rate,
then to the lower (SGD) momentum or to the pair listed first above. Stage 2
(`lcam_confirm`) takes the two winners, and LCAM's winner's measured
per-epoch phase fractions and mean effective step for its controls.

The runs use 4 XLA devices on the 2-core host (`host_devices=4`), the fastest
split (0.82 of PyTorch's speed against 0.70 with 2); XLA's CPU collectives
stalled twice with 4 devices in study 1, before the train step kept one step
in flight. A stalled run is resumed exactly from its checkpoint by
`--retries`, and every restart shows in the summary.
"""

import ml_collections

NUM_EPOCHS = 15
SEED = 1000
LEARNING_RATES = (0.05, 0.1, 0.2)
MOMENTA = (0.9, 0.95)
PAIRS = ((0.95, 0.9), (0.9, 0.95))


def scaled_boundaries(num_epochs: int) -> tuple[int, ...]:
  """Schedule A's boundaries (31, 61, 91 of 150 epochs) scaled to ``num_epochs``."""
  return tuple(round(b * num_epochs / 150) for b in (31, 61, 91))


def sgd_arm(learning_rate: float, momentum: float) -> tuple[str, dict]:
  return f"sgd-lr{learning_rate}-m{momentum}", {
      "optimizer.name": "sgd", "optimizer.momentum": momentum,
      "schedule.learning_rate": learning_rate}


def lcam_arm(learning_rate: float, pair: tuple[float, float]
             ) -> tuple[str, dict]:
  below, above = pair
  return f"lcam-lr{learning_rate}-{below}/{above}", {
      "optimizer.name": "lcam", "optimizer.beta_below": below,
      "optimizer.beta_above": above, "schedule.learning_rate": learning_rate}


def get_study() -> ml_collections.ConfigDict:
  arms = dict([sgd_arm(lr, m) for lr in LEARNING_RATES for m in MOMENTA]
              + [lcam_arm(lr, p) for lr in LEARNING_RATES for p in PAIRS])
  study = {
      "config": "train/configs/default.py",
      "overrides": {
          "data.source": "folder:../shared/data/cifar10_jpeg.tar.gz",
          "data.validation_examples": 5000,
          "data.eval_test": False,
          "model.name": "wrn-10-1",
          "num_epochs": NUM_EPOCHS,
          "schedule.name": "step",
          "schedule.boundaries_epochs": scaled_boundaries(NUM_EPOCHS),
          "host_devices": 4,
          "progress": False,
      },
      "arms": arms,
      "seeds": [SEED],
      "baseline": sgd_arm(0.1, 0.9)[0],
      "metric": "val_accuracy",
      "targets": [0.6, 0.7, 0.75],
      "families": {
          "sgd": [sgd_arm(lr, m)[0] for lr in LEARNING_RATES
                  for m in MOMENTA],
          "lcam": [lcam_arm(lr, p)[0] for lr in LEARNING_RATES
                   for p in PAIRS]},
      "selection": (
          "Per family, the arm with the highest final val_accuracy; a tie "
          "(equal to 1e-9) goes to the lower learning rate, then to the lower "
          "momentum (SGD) or to the pair 0.95/0.9 (LCAM)."),
  }
  return ml_collections.ConfigDict(study, allow_dotted_keys=True)
