"""`python -m sftpack.sweep SWEEP.yaml [--plan] [--max-cells N] ...`: see sftpack.sweep.cli."""

import sys

from sftpack.sweep.cli import main

sys.exit(main())
