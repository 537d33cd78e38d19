"""`python -m train`: trains one run (`train.main`; `--help` lists the fields)."""

from train import main

main.run()
