"""`python -m study`: see `study.cli`."""

import sys

from study import cli

sys.exit(cli.main())
