"""The training harness: data, the pmap/jit loop, checkpoints, logs and plots.

`python -m train --config train/configs/quick.py --workdir DIR` trains (the
loop is `train.train.train_and_evaluate(config, workdir)`);
`python -m train.evaluate DIR` evaluates a workdir's latest checkpoint, and
`train.checkpoints.load_variables(DIR)` loads its parameters.
"""
