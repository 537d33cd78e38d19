"""ml_collections config files for `python -m train --config train/configs/NAME.py`."""
