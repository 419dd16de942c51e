"""`python -m sftpack.bench ...` is `sftpack bench ...`: run a suite, or `report` to rebuild the report.

    python -m sftpack.bench benchmarks/suites/cpu_tiny.yaml --repeats 1
    python -m sftpack.bench report --suite cpu_tiny
"""

import sys

from sftpack.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
