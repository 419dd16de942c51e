"""`python -m sftpack ...` is the same as the `sftpack` console script."""

import sys

from sftpack.cli import main

sys.exit(main())
