"""`python -m sftpack.estimate CONFIG [KEY=VALUE ...] [--gpu-mem 8GiB] [--json PATH]`: see sftpack.estimate.cli."""

import sys

from sftpack.estimate.cli import main

sys.exit(main())
