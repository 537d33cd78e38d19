"""Moved: studies are `python -m study` (the `study` package)."""

import sys

if __name__ == "__main__":
  sys.exit("error: `python -m train.study` is now `python -m study` "
           "(run, commands, summarize, power).")
