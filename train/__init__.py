"""The training harness: makes one run.

`python -m train --config train/configs/quick.py --workdir DIR` trains (the
loop is `train.loop.train_and_evaluate(config, workdir)`), writing the run's
record (`train.record`); `python -m train.evaluate DIR` evaluates a workdir's
latest checkpoint, and `train.checkpoints.load_variables(DIR)` loads its
parameters. Studies of many runs are the `study` package's.
"""
