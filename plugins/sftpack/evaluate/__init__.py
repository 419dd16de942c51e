"""`sftpack eval`: evaluate a base model and tuned adapters / merged models with lm-eval, side by side.

    sftpack eval --model BASE --tuned [LABEL=]ADAPTER ... --tasks gsm8k-local,gsm8k-local-chat [--limit N]

Modules: `models` (what is evaluated, and the checks on adapters), `tasks` (task names and data, checked before any
model loads), `runner` (one lm-eval run per model, sharing a process where they would wait for each other;
`run_eval` is the Python entry point), `results` (lm-eval outputs -> rows, format rate, JSON + Markdown), `cli`
(`add_parser(subparsers)` for the sftpack CLI).
Nothing here imports lm-eval, torch or transformers at import time.
"""

from __future__ import annotations


def add_parser(subparsers):
    """Add the `eval` subcommand to an argparse subparsers object; see sftpack.evaluate.cli."""
    from sftpack.evaluate.cli import add_parser as _add_parser

    return _add_parser(subparsers)


def run_eval(*args, **kwargs):
    """See sftpack.evaluate.runner.run_eval."""
    from sftpack.evaluate.runner import run_eval as _run_eval

    return _run_eval(*args, **kwargs)
