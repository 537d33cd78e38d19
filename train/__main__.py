"""`python -m train`: trains one run (`train.main`; `--help` lists fields)."""

from train import main

main.run()
