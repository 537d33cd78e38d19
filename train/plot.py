"""Moved: plots are `python -m study.plot` (the `study` package)."""

import sys

if __name__ == "__main__":
  sys.exit("error: `python -m train.plot` is now `python -m study.plot`.")
