"""`sftpack bench`: run a benchmark suite, or rebuild the report from stored results.

    sftpack bench benchmarks/suites/cpu_tiny.yaml                 run a suite (results: benchmarks/results/)
    sftpack bench benchmarks/suites/cpu_tiny.yaml --repeats 1 --only lf_lora,swift_lora
    sftpack bench benchmarks/suites/gpu_quick.yaml --plan                 validate, print runs + planned time
    sftpack bench benchmarks/suites/cpu_tiny.yaml --check                 the same as --plan (as `sftpack run --check`)
    sftpack bench benchmarks/suites/gpu_quick.yaml --deadline-s 420 --timeout-s 150
    sftpack bench report                                          rebuild report.md + PNGs for every suite
    sftpack bench report --suite cpu_tiny --readme benchmarks/README.md
    python -m sftpack.bench benchmarks/suites/cpu_tiny.yaml        the same as `sftpack bench ...`

`sftpack bench SUITE --help` and `sftpack bench report --help` list the options. Paths in a suite resolve against
its folder; results and work folders default to the current folder (in a checkout, run from its root). Wired into
the main CLI with `add_parser(subparsers)`; the exit status is 1 when any run failed, timed out or was killed, or
when no run finished ok (every run skipped); all are recorded. Ctrl-C / SIGTERM / SIGHUP: 130 / 143 / 129, the
run in flight killed and recorded. A second `bench` on the same --results or --work folder fails at once, naming
the first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n")[1]


def build_run_parser(prog: str = "sftpack bench") -> argparse.ArgumentParser:
    from sftpack.bench.runner import DEFAULT_RESULTS, DEFAULT_WORK

    parser = argparse.ArgumentParser(prog=f"{prog} SUITE", description="Run every run of a benchmark suite "
                                     "through the framework CLIs and store one result folder per run.")
    parser.add_argument("suite", help="suite YAML, e.g. benchmarks/suites/cpu_tiny.yaml")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help=f"results root; a new session folder is added under <results>/<suite>/ "
                             f"(default ./{DEFAULT_RESULTS} in the current folder)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"scratch root: built models, dataset_info/, training outputs (default ./{DEFAULT_WORK})")
    parser.add_argument("--repeats", type=int, help="repeats per run (default: the suite's)")
    parser.add_argument("--only", help="comma-separated run names to run (default: all)")
    parser.add_argument("--overhead-repeats", type=int,
                        help="bare/harnessed pairs for the overhead measurement; 0 = skip (default: the suite's)")
    parser.add_argument("--keep-outputs", action="store_true", help="keep checkpoints (default: deleted)")
    parser.add_argument("--echo", action="store_true", help="stream the frameworks' output to the terminal")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a suite value before validation (VALUE is YAML), e.g. --set defaults.gpus=0 "
                             "--set model.build_shape=tiny --set defaults.llamafactory.max_steps=2; repeatable")
    parser.add_argument("--timeout-s", type=_positive, help="every run's timeout in seconds (default: the suite's)")
    parser.add_argument("--deadline-s", type=_positive,
                        help="seconds from now after which no run starts; the run in flight is stopped and recorded "
                             "as 'deadline' (for machines lent for minutes)")
    parser.add_argument("--skip-module", action="append", default=[], metavar="MODULE=REASON",
                        help="a module that imports but cannot work here (e.g. liger_kernel='no CUDA'): runs that "
                             "require it are recorded as skipped with the reason; repeatable")
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--force-fit", dest="fit_check", action="store_const", const="warn", default="refuse",
                     help="start a GPU run that `sftpack estimate` predicts will not fit (default: record it as "
                          "skipped with the estimate)")
    fit.add_argument("--no-fit-check", dest="fit_check", action="store_const", const="off",
                     help="do not estimate each GPU run's peak memory first (saves ~10-20 s per distinct config)")
    parser.add_argument("--plan", action="store_true",
                        help="validate the suite and print the runs with the time its time_model plans; run nothing")
    parser.add_argument("--check", action="store_true",
                        help="the same as --plan: validate (every problem with file:line and key), print the plan, "
                             "run nothing; exit 1 when the suite is invalid")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (as `sftpack --debug`)")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_report_parser(prog: str = "sftpack bench") -> argparse.ArgumentParser:
    from sftpack.bench.runner import DEFAULT_RESULTS

    parser = argparse.ArgumentParser(prog=f"{prog} report", description="Rebuild report.md and PNG plots from "
                                     "stored results (never edited by hand).")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results root (default "
                                                                               f"./{DEFAULT_RESULTS})")
    parser.add_argument("--suite", action="append", help="suite name(s) (default: every suite under --results)")
    parser.add_argument("--session", help="session id (default: the latest session of each suite)")
    parser.add_argument("--out", type=Path, help="output folder (default: <results>/<suite>/)")
    parser.add_argument("--readme", type=Path,
                        help="also replace the '<!-- bench:SUITE -->' ... '<!-- /bench:SUITE -->' section of this "
                             "Markdown file with the suite's tables")
    parser.add_argument("--no-plots", action="store_true", help="Markdown only")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (as `sftpack --debug`)")
    return parser


def _plan(args: argparse.Namespace, only: list[str] | None) -> int:
    from sftpack.bench import fairness
    from sftpack.bench.plan import format_plan, plan_rows
    from sftpack.bench.runner import check_model, run_plan, select_runs
    from sftpack.bench.suite import load_suite

    suite = load_suite(Path(args.suite), args.set)
    runs = select_runs(suite, only)
    check_model(suite)
    suite.model.check_tokenizer()
    for verdict in fairness.check_suite(suite):
        print(f"fairness {verdict.describe()}")
    print(format_plan(suite, plan_rows(suite, run_plan(suite, runs, args.repeats)), args.deadline_s))
    if args.check:
        print(f"sftpack bench --check: {suite.path} is valid; nothing was run")
    return 0


def _run(argv: list[str], prog: str) -> int:
    from sftpack.bench.report import format_table_text
    from sftpack.bench.runner import parse_skip_modules, run_suite

    args = build_run_parser(prog).parse_args(argv)
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    if args.plan or args.check:
        return _plan(args, only)
    from sftpack.extras import TRAINING, require

    require(*TRAINING, "matplotlib", what="sftpack bench")   # before any run: one line naming the extra
    session_dir, results = run_suite(Path(args.suite), args.results, args.work, repeats=args.repeats, only=only,
                                     overhead_repeats=args.overhead_repeats, keep_outputs=args.keep_outputs,
                                     echo=args.echo, sets=args.set, timeout_s=args.timeout_s,
                                     deadline_s=args.deadline_s, skip_modules=parse_skip_modules(args.skip_module),
                                     fit_check=args.fit_check)
    print(format_table_text(results))
    bad = [f"{r.run} r{r.repeat}: {r.status}" for r in results if r.status not in ("ok", "skipped")]
    print(f"results: {session_dir}\nreport:  {prog} report --results {args.results} --suite {session_dir.parent.name}")
    if bad:
        print(f"{len(bad)} run(s) did not finish ok (recorded): {', '.join(bad)}", file=sys.stderr)
        return 1
    if not any(r.status == "ok" for r in results):
        print(f"no run finished ok: all {len(results)} were skipped (reasons recorded in each result.json)",
              file=sys.stderr)
        return 1
    return 0


def _report(argv: list[str], prog: str) -> int:
    from sftpack.bench.report import build_reports

    args = build_report_parser(prog).parse_args(argv)
    if not args.no_plots:
        from sftpack.extras import require

        require("matplotlib", what="sftpack bench report (--no-plots: Markdown only)")
    for path in build_reports(args.results, suites=args.suite, session=args.session, out=args.out,
                              readme=args.readme, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def dispatch(argv: list[str], prog: str = "sftpack bench") -> int:
    """`report ...` -> the report; anything else -> run the suite named first."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n", 1)[1])
        return 0 if argv else 2
    if argv[0] == "report":
        return _report(argv[1:], prog)
    return _run(argv, prog)


def _cmd_bench(args: argparse.Namespace) -> int:
    if "--debug" in args.rest:   # `sftpack bench SUITE --debug` = `sftpack --debug bench SUITE` (main reads args)
        args.debug = True
    return dispatch([args.target] + list(args.rest))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `bench` to the `sftpack` command line (`subparsers` from parser.add_subparsers())."""
    parser = subparsers.add_parser(
        "bench", help="benchmark LLaMA-Factory vs ms-swift: `bench SUITE` runs, `bench report` rebuilds the report",
        description=__doc__.split("\n\n")[0], epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="SUITE|report", help="a suite YAML to run, or 'report'")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options of that mode (see SUITE --help, report --help)")
    parser.set_defaults(func=_cmd_bench)
    return parser
