"""`python -m sftpack.recipes ...` is `sftpack recipe ...`.

    python -m sftpack.recipes dataset_info/recipes/gsm8k_dedup_budget.yaml --var tokenizer=./runs/tiny-model
    python -m sftpack.recipes --steps
"""

import sys

from sftpack.cli import main

sys.exit(main(["recipe", *sys.argv[1:]]))
