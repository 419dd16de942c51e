"""`sftpack` command line. Run `sftpack --help`; each subcommand's `--help` shows its options.

    sftpack tiny-model OUT_DIR                       build the offline tiny Qwen2 test/demo model
    sftpack prepare gsm8k --source SRC --out DIR     convert a dataset and merge dataset_info.json entries
    sftpack eval --model M [--tuned [LABEL=]PATH ...] [--tasks T,...]   base vs tuned with lm-eval: JSON + table
    sftpack recipe RECIPE.yaml [--out DIR]           data recipes: dedup, sampling, quotas, MCQ augmentation, mixes
    sftpack bench SUITE | report                     benchmark both frameworks; rebuild the report from results
    sftpack run [PIPELINE.yaml] [--out DIR] [--force STAGE]   prepare, train LF + Swift, eval, report (the main job)

Framework packages are imported inside the commands, so `sftpack --help` starts without torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sftpack.errors import SftpackError


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from sftpack import tiny_model

    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    out = tiny_model.build(Path(args.out_dir), seed=args.seed, shape=args.shape, tokenizer=tokenizer)
    source = f", tokenizer from {tokenizer.resolve()}" if tokenizer else ""
    print(f"tiny model ({args.shape}, seed {args.seed}{source}) written to {out.resolve()}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS

    spec = CONVERTERS[args.family]
    splits = tuple(args.splits.split(",")) if args.splits else None
    results = prepare(spec, args.source, Path(args.out), name=args.name, splits=splits,
                      skip_invalid=args.skip_invalid, progress=not args.quiet)
    for result in results:
        print(result.summary())
    print(f"registered {[r.dataset for r in results]} in {(Path(args.out) / 'dataset_info.json').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sftpack.converters import CONVERTERS

    parser = argparse.ArgumentParser(prog="sftpack", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="build a tiny random Qwen2 model + tokenizer offline")
    tiny.add_argument("out_dir", help="folder to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed; same seed, same bytes (default 0)")
    tiny.add_argument("--shape", default="tiny", choices=["tiny", "small", "qwen2.5-1.5b"],
                      help="'tiny' (test fixture), 'small' (demo default, learns the GSM8K format on a CPU), "
                           "'qwen2.5-1.5b' = Qwen2.5-1.5B's exact shape, random weights (for time/memory)")
    tiny.add_argument("--tokenizer", metavar="DIR",
                      help="a tokenizer folder to use instead of the tiny GSM8K-trained one, e.g. the Qwen2.5 "
                           "tokenizer built by benchmarks/gpu/prepare.py")
    tiny.set_defaults(func=_cmd_tiny_model)

    prep = sub.add_parser("prepare", help="convert a dataset into dataset_info/ (LLaMA-Factory + Swift)")
    prep.add_argument("family", choices=sorted(CONVERTERS), help="dataset family")
    prep.add_argument("--source", required=True,
                      help="hub id (openai/gsm8k; modelscope/gsm8k for ModelScope) or a local file/folder "
                           "(jsonl, json, parquet, arrow, save_to_disk folder)")
    prep.add_argument("--out", default="dataset_info", help="dataset_info folder (default: ./dataset_info)")
    prep.add_argument("--name", help="dataset name prefix (default: the family); entries are NAME_<split>")
    prep.add_argument("--splits", help="comma-separated splits (default: train,test; one for a single file)")
    prep.add_argument("--skip-invalid", action="store_true",
                      help="skip invalid rows and report them instead of stopping at the first")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_prepare)

    from sftpack.bench.cli import add_parser as add_bench_parser
    from sftpack.evaluate import add_parser as add_eval_parser
    from sftpack.pipeline import add_parser as add_run_parser
    from sftpack.recipes import add_parser as add_recipe_parser

    add_eval_parser(sub)
    add_recipe_parser(sub)
    add_run_parser(sub)
    add_bench_parser(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SftpackError as err:
        print(f"sftpack: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sftpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
