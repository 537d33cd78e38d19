"""ml_collections configs: `python -m train --config train/configs/NAME.py`."""
