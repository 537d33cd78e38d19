"""`python -m train`: see train/main.py."""

from train import main

main.run()
