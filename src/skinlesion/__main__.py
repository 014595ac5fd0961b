"""`python -m skinlesion COMMAND ...`: the `skinlesion` command, where the console script is not installed."""

import sys

from .cli.main import main

sys.exit(main())
