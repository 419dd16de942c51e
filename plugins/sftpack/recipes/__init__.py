"""Data recipes: dedup, filtering, tagging, sampling, quotas, prompt templates, MCQ augmentation and mixtures,
from one YAML file, writing datasets + dataset_info entries (LLaMA-Factory and ms-swift) + stats.

    sftpack recipe RECIPE.yaml [--out dataset_info] [--var name=value]

Modules: `schema` (YAML -> dataclasses), `registry` + `steps` (the steps), `features` (per-row values the
select steps decide on), `inputs` + `engine` (streaming passes), `run` (plan, run, write), `stats`,
`mixture`, `cli` (`add_parser`). Importing this package imports no framework and no numpy.
"""

from __future__ import annotations


def add_parser(subparsers):
    """Add the `recipe` subcommand to an argparse subparsers object (see `sftpack.recipes.cli`)."""
    from sftpack.recipes.cli import add_parser as _add_parser

    return _add_parser(subparsers)


def run_recipe(*args, **kwargs):
    from sftpack.recipes.run import run_recipe as _run_recipe

    return _run_recipe(*args, **kwargs)


def load_recipe(*args, **kwargs):
    from sftpack.recipes.run import load_recipe as _load_recipe

    return _load_recipe(*args, **kwargs)
