"""The training harness: data, the pmap/jit loop, checkpoints, logs and plots.

`python -m train --config train/configs/quick.py --workdir DIR` runs it; the
loop itself is `train.train.train_and_evaluate(config, workdir)`.
"""
