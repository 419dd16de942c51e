"""`sftpack` command line. Run `sftpack --help`; each subcommand's `--help` shows its options.

    sftpack tiny-model OUT_DIR                       build the offline tiny Qwen2 test/demo model
    sftpack prepare gsm8k --source SRC --out DIR     convert a dataset and merge dataset_info.json entries
    sftpack eval --model M [--tuned [LABEL=]PATH ...] [--tasks T,...]   base vs tuned with lm-eval: JSON + table
    sftpack recipe RECIPE.yaml [--out DIR]           data recipes: dedup, sampling, quotas, MCQ augmentation, mixes
    sftpack bench SUITE | report                     benchmark both frameworks; rebuild the report from results
    sftpack run [PIPELINE.yaml] [--out DIR] [--force STAGE]   prepare, train LF + Swift, eval, report (the main job)
    sftpack estimate CONFIG [KEY=VALUE ...] [--gpu-mem 8GiB]   peak GPU memory of a training config, the batch that fits
    sftpack sweep SWEEP.yaml [--plan] [--max-cells N]  hyper-parameter grids: train + eval per cell, intervals
    sftpack init [DIR] | cp NAME DEST | ls           the shipped configs, tasks, pipelines: into a folder, one, list
    sftpack --version                                sftpack's version and the frameworks found

Framework packages are imported inside the commands, so `sftpack --help` starts without torch; a missing one is
one line naming the pip extra that installs it (sftpack.extras).
An error a user can fix (a bad value, a missing file, a read-only or full output folder) is one line,
`sftpack: error: PATH: cause`, exit 1; `--debug` (before or after the command) adds the traceback. Ctrl-C, SIGTERM
and SIGHUP end every process the command started and exit 130, 143, 129.
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from pathlib import Path

from sftpack.errors import SftpackError


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from sftpack.extras import require

    require("torch", "transformers", what="sftpack tiny-model")
    from sftpack import tiny_model

    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    out = tiny_model.build(Path(args.out_dir), seed=args.seed, shape=args.shape, tokenizer=tokenizer,
                           overwrite=args.overwrite)
    source = f", tokenizer from {tokenizer.resolve()}" if tokenizer else ""
    print(f"tiny model ({args.shape}, seed {args.seed}{source}) written to {out.resolve()}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS

    spec = CONVERTERS[args.family]
    if args.source == "sample":
        from sftpack.samples import sample_dir

        args.source = str(sample_dir(args.family))
        print(f"source: the {args.family} sample shipped with sftpack ({args.source})")
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None
    results = prepare(spec, args.source, Path(args.out), name=args.name, splits=splits,
                      skip_invalid=args.skip_invalid, progress=not args.quiet, overwrite=args.overwrite,
                      allow_overlap=args.allow_overlap, max_invalid=args.max_invalid)
    for result in results:
        print(result.summary())
    print(f"registered {[r.dataset for r in results]} in {(Path(args.out) / 'dataset_info.json').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sftpack.converters import CONVERTERS

    parser = argparse.ArgumentParser(prog="sftpack", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also accepted after the command: sftpack eval --debug)")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print sftpack's version, where it runs from and the framework versions found")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    raw = argparse.RawDescriptionHelpFormatter
    tiny = sub.add_parser("tiny-model", help="build a tiny random Qwen2 model + tokenizer offline",
                          description="Build a random-weight Qwen2 model and its tokenizer offline (seeded: the same "
                                      "bytes every time).", formatter_class=raw,
                          epilog="examples:\n  sftpack tiny-model runs/tiny-model\n"
                                 "  sftpack tiny-model runs/qwen1.5b-random --shape qwen2.5-1.5b")
    tiny.add_argument("out_dir", help="folder to write (created; one holding a model sftpack did not build is "
                                      "refused, see --overwrite)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; same seed, same bytes (default 0)")
    tiny.add_argument("--shape", default="tiny", choices=["tiny", "small", "qwen2.5-1.5b"],
                      help="'tiny' (test fixture), 'small' (demo default, learns the GSM8K format on a CPU), "
                           "'qwen2.5-1.5b' = Qwen2.5-1.5B's exact shape, random weights (for time/memory)")
    tiny.add_argument("--tokenizer", metavar="DIR",
                      help="a tokenizer folder to use instead of the tiny GSM8K-trained one, e.g. the Qwen2.5 "
                           "tokenizer built by benchmarks/gpu/prepare.py")
    tiny.add_argument("--overwrite", action="store_true",
                      help="replace a model in OUT_DIR that sftpack did not build (default: refuse)")
    tiny.set_defaults(func=_cmd_tiny_model)

    prep = sub.add_parser("prepare", help="convert a dataset into dataset_info/ (LLaMA-Factory + Swift)",
                          description="Convert a dataset into data files plus LLaMA-Factory dataset_info.json "
                                      "entries, which the Swift plugin registers under the same names.",
                          formatter_class=raw,
                          epilog="examples:\n  sftpack prepare gsm8k --source openai/gsm8k --out dataset_info/\n"
                                 "  sftpack prepare gsm8k --source sample --out dataset_info/   # 1,000/200 rows\n"
                                 "  sftpack prepare gsm8k --source data.jsonl --splits train --skip-invalid")
    prep.add_argument("family", choices=sorted(CONVERTERS), help="dataset family")
    prep.add_argument("--source", required=True,
                      help="hub id (openai/gsm8k; modelscope/gsm8k for ModelScope), a local file/folder "
                           "(jsonl, json, parquet, arrow, save_to_disk folder), or 'sample': the rows shipped with "
                           "sftpack (./sample for a local folder of that name)")
    prep.add_argument("--out", default="dataset_info", help="dataset_info folder (default: ./dataset_info)")
    prep.add_argument("--name", help="dataset name prefix (default: the family); entries are NAME_<split>")
    prep.add_argument("--splits", help="comma-separated splits (default: train,test; for a single file the split "
                                       "its name says, e.g. gsm8k-test.arrow -> test, else an error asking for it)")
    prep.add_argument("--skip-invalid", action="store_true",
                      help="skip invalid rows instead of stopping at the first; every skipped row and why goes to "
                           "OUT/NAME_SPLIT.skipped.jsonl")
    prep.add_argument("--max-invalid", metavar="N|P%",
                      help="with --skip-invalid (implied): fail when more than N rows or P%% of a split are invalid "
                           "(default 1%%)")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace entries and files of the same name that sftpack did not write (default: refuse)")
    prep.add_argument("--allow-overlap", action="store_true",
                      help="write a training set that shares prompts with an eval set (default: refuse)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_prepare)

    from sftpack.bench.cli import add_parser as add_bench_parser
    from sftpack.estimate import add_parser as add_estimate_parser
    from sftpack.evaluate import add_parser as add_eval_parser
    from sftpack.pipeline import add_parser as add_run_parser
    from sftpack.recipes import add_parser as add_recipe_parser
    from sftpack.scaffold import add_parsers as add_scaffold_parsers
    from sftpack.sweep import add_parser as add_sweep_parser

    add_eval_parser(sub)
    add_recipe_parser(sub)
    add_run_parser(sub)
    add_bench_parser(sub)
    add_estimate_parser(sub)
    add_sweep_parser(sub)
    add_scaffold_parsers(sub)

    for command in sub.choices.values():   # --debug after the command too; SUPPRESS: the global one is kept
        try:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the traceback of an error")
        except argparse.ArgumentError:   # the command defines its own --debug
            pass
    return parser


class _Version(argparse.Action):
    """`sftpack --version`: print sftpack.provenance.version_report() and exit (no subcommand needed)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from sftpack.provenance import version_report

        print(version_report())
        parser.exit()


def _located(err: BaseException) -> str | None:
    """The file an error without a filename was about (a write that hit a full disk names no file itself), from
    the innermost frame that shows it: a pathlib method's own Path, a file object open for writing, or a
    `path`-like local of an sftpack function."""
    import io

    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    package = str(Path(__file__).resolve().parent)
    for frame in reversed(frames):
        found = frame.f_locals
        if frame.f_code.co_filename.endswith("pathlib.py") and isinstance(found.get("self"), Path):
            return str(found["self"])
        files = [v for v in found.values() if isinstance(v, io.IOBase) and isinstance(getattr(v, "name", None), str)
                 and any(c in getattr(v, "mode", "") for c in "wa+")]
        if files:
            return files[0].name
        if frame.f_code.co_filename.startswith(package):
            for name in ("path", "log_path", "target", "tmp", "file"):
                if isinstance(found.get(name), (str, Path)) and str(found[name]):
                    return str(found[name])
    return None


def _file_component(path: str) -> str | None:
    """The part of `path` that is a file where a folder is needed (`out.txt` in `out.txt/eval`), if any."""
    for parent in [Path(path), *Path(path).parents]:
        if parent.is_file():
            return str(parent)
    return None


# What to do, after the cause, for the OS errors users meet with output folders.
_OS_HINTS = {
    errno.EACCES: "choose a folder you can write, or fix its permissions",
    errno.EPERM: "read-only or immutable: choose another folder",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "the disk is full: free space or choose a folder on another disk",
    errno.EDQUOT: "over the disk quota: free space or choose another folder",
    errno.EFBIG: "a file size limit (ulimit -f): raise it or write less",
}


def os_error_line(err: OSError) -> str:
    """One line for an OS error: `PATH: cause (what to do)`."""
    path = err.filename if err.filename is not None else _located(err)
    cause = err.strerror or str(err)
    if isinstance(err, (FileExistsError, NotADirectoryError)) and path is not None:
        blocking = _file_component(str(path))
        if blocking is not None:
            path, cause = blocking, "is a file, where a folder is needed"
    hint = _OS_HINTS.get(err.errno)
    where = f"{path}" + (f" -> {err.filename2}" if err.filename2 is not None else "") if path is not None else None
    return (f"{where}: " if where else "") + cause + (f" ({hint})" if hint else "")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a user can fix are one line on stderr and exit 1 (`--debug` adds the traceback);
    Ctrl-C / SIGTERM / SIGHUP end every child process group and exit 130 / 143 / 129."""
    args = build_parser().parse_args(argv)
    from sftpack.bench.monitor import end_groups, ignore_stop_signals, install_stop_handlers, restore_handlers

    previous = install_stop_handlers()
    try:
        return args.func(args)
    except KeyboardInterrupt as err:
        ignore_stop_signals()   # a second signal must not turn this into a traceback
        end_groups()
        if getattr(args, "debug", False):
            traceback.print_exc()
        name = str(err) or "SIGINT"
        print(f"sftpack: interrupted ({name.removeprefix('signal ')}); every process it started was ended",
              file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except (SftpackError, OSError, UnicodeDecodeError, ModuleNotFoundError) as err:
        ignore_stop_signals()
        end_groups()
        if getattr(args, "debug", False):
            traceback.print_exc()
        if isinstance(err, ModuleNotFoundError):   # an optional package: the extra to install; else a real bug
            from sftpack.extras import from_import_error

            line = from_import_error(err, f"sftpack {getattr(args, 'command', '')}".strip())
            if line is None:
                raise
            print(f"sftpack: error: {line}", file=sys.stderr)
            return 1
        if isinstance(err, BrokenPipeError):   # `sftpack ... | head`: the reader left; not an error of ours
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error at exit's flush
            return 1
        if isinstance(err, OSError):
            line = os_error_line(err)
        elif isinstance(err, UnicodeDecodeError):
            where = _located(err)
            line = f"{where + ': ' if where else ''}not UTF-8 text ({err.reason} at byte {err.start})"
        else:
            line = str(err)
        print(f"sftpack: error: {line}", file=sys.stderr)
        return 1
    finally:
        end_groups()
        restore_handlers(previous)


if __name__ == "__main__":
    sys.exit(main())
