"""`sftpack sweep`: hyper-parameter grids, each cell trained (sftpack.training) and evaluated (sftpack eval), with
intervals over questions, paired tests between cells and frameworks, and the LoRA -> full transfer answered.

    sftpack sweep benchmarks/sweeps/cpu_example.yaml [--plan] [--max-cells N] [--retry-failed] [--report-only]
    python -m sftpack.sweep ...                       (the same)

| module | what |
| --- | --- |
| `schema.py` | the sweep YAML (sftpack.spec: file:line errors) over a base pipeline; its cells (`expand`) |
| `run.py` | the base's model/data stages once, then each cell keyed by its resolved spec (stages.py's keys): train, evaluate, record; `--plan`'s estimate |
| `report.py` | rows (seeds averaged), best per framework, paired comparisons, transfer, table.md/.json/.csv, report.md |
| `plots.py` | score.png (lines) or heatmap.png, cost.png |
| `cli.py` | `add_parser(subparsers)` for the sftpack CLI; `main()` for `python -m sftpack.sweep` |

Statistics live in sftpack.stats (shared with `sftpack eval`). Framework packages are imported inside functions.
"""

from __future__ import annotations


def add_parser(subparsers):
    """Add the `sweep` subcommand to an argparse subparsers object; see sftpack.sweep.cli."""
    from sftpack.sweep.cli import add_parser as _add_parser

    return _add_parser(subparsers)


def run_sweep(*args, **kwargs) -> int:
    """See sftpack.sweep.run.run_sweep."""
    from sftpack.sweep.run import run_sweep as _run_sweep

    return _run_sweep(*args, **kwargs)
