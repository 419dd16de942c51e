"""Small data samples shipped inside the package, so a fresh clone runs the demo with no hub and no data.

`data/gsm8k_sample/`: the first 1,000 rows of GSM8K train and 200 of test (openai/grade-school-math
@3101c7d, MIT licence, see its LICENSE file).
"""

from __future__ import annotations

from pathlib import Path

from sftpack import assets


def sample_dir(family: str) -> Path:
    """The package's sample of `family` (importlib.resources, through sftpack.assets)."""
    return assets.path(f"{assets.SAMPLES}/{family}_sample")


def sample_path(family: str, split: str) -> Path:
    return sample_dir(family) / f"{split}.jsonl"
