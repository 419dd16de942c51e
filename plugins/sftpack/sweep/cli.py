"""`sftpack sweep SWEEP.yaml [--out DIR] [--plan] [--max-cells N] [--retry-failed] [--report-only]`.

    sftpack sweep benchmarks/sweeps/cpu_example.yaml --plan     # validate, print the cells and the estimated time
    sftpack sweep benchmarks/sweeps/cpu_example.yaml            # run (resumable), then write the report
    sftpack sweep benchmarks/sweeps/cpu_example.yaml --max-cells 2   # at most 2 cells now; again to go on
    sftpack sweep benchmarks/sweeps/cpu_example.yaml --report-only  # rebuild the report from the stored cells
    python -m sftpack.sweep ...                                  # the same without the main CLI

Exit status 1 when any cell failed, timed out or its evaluation failed (every cell is recorded either way).
`--out` is locked while a sweep works in it. Ctrl-C / SIGTERM / SIGHUP end the cell in flight (training or
lm_eval) and exit 130 / 143 / 129; finished cells are kept and skipped next time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sftpack.sweep.run import run_sweep

    return run_sweep(Path(args.sweep), Path(args.out) if args.out else None, plan_only=args.plan or args.check,
                     max_cells=args.max_cells, retry_failed=args.retry_failed, report_only=args.report_only,
                     offline=args.offline)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: expected an integer >= 0")
    return value


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("sweep", help="sweep YAML (benchmarks/sweeps/README.md)")
    parser.add_argument("--out", help="output folder (default: ./runs/sweeps/<sweep name> in the current folder); locked "
                                      "while a sweep works in it")
    parser.add_argument("--plan", action="store_true",
                        help="validate the sweep, print its cells, which would run (and why) and the estimated "
                             "time; run nothing")
    parser.add_argument("--check", action="store_true", help="the same as --plan")
    parser.add_argument("--max-cells", type=_count, metavar="N",
                        help="run at most N cells that need running, then write the report (run again to go on)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run again the cells recorded as failed / timed out with an unchanged spec "
                             "(default: keep their record)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild report/ from the stored cells; run nothing")
    parser.add_argument("--offline", action="store_true",
                        help="no hub calls (HF_HUB_OFFLINE & co.); also on when one of them is already set")
    parser.set_defaults(func=_cmd_sweep)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `sweep` to the `sftpack` CLI's subparsers."""
    parser = subparsers.add_parser("sweep", help="hyper-parameter grids: train + evaluate each cell, report with "
                                                 "intervals, paired tests and LoRA -> full transfer",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure(parser)


def main(argv: list[str] | None = None) -> int:
    """`python -m sftpack.sweep ARGS` = `sftpack sweep ARGS`, through sftpack's CLI main (its one-line errors, exit
    codes and signal handling)."""
    from sftpack import cli

    return cli.main(["sweep", *(sys.argv[1:] if argv is None else argv)])
