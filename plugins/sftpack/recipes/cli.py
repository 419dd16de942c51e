"""`sftpack recipe FILE.yaml [FILE.yaml ...]`: run data recipes and mixture files, in the order given.

    sftpack recipe dataset_info/recipes/gsm8k_dedup_budget.yaml --var tokenizer=./runs/tiny-model
    sftpack recipe dataset_info/recipes/math_mix.yaml           # a mixture file (top-level `mixture:`)
    sftpack recipe --check dataset_info/recipes/*.yaml          # load and check only
    sftpack recipe --steps                                      # the steps and their keys

`add_parser(subparsers)` adds the subcommand to an argparse parser (sftpack.cli wires it in); `main(argv)`
runs it alone (`python -m sftpack.recipes ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from sftpack.errors import SftpackError


def _steps_help() -> str:
    from sftpack.recipes.registry import STEPS, Step
    from sftpack.recipes.schema import _type_name

    base = {f.name for f in dataclasses.fields(Step)}
    lines = []
    for name, cls in sorted(STEPS.items()):
        doc = " ".join((cls.__doc__ or "").split())
        lines.append(f"{name} ({cls.KIND}): {doc}")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or (f.name in base and f.name != "inputs"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f"default {f.default!r}"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"default {f.default_factory()!r}"
            else:
                default = "required"
            lines.append(f"    {f.name}: {_type_name(hints[f.name])}, {default}")
    return "\n".join(lines)


def _declared_vars(path: Path) -> set[str]:
    from sftpack.recipes.schema import load_yaml

    return set((load_yaml(path).data.get("vars") or {}))


def cmd_recipe(args: argparse.Namespace) -> int:
    from sftpack.recipes import mixture as mixlib
    from sftpack.recipes import run as runlib
    from sftpack.recipes.schema import load_yaml, parse_var_overrides

    if args.steps:
        print(_steps_help())
        return 0
    if not args.files:
        raise SftpackError("give one or more recipe or mixture files (or --steps)")
    overrides = parse_var_overrides(args.var)
    declared = {path: _declared_vars(Path(path)) for path in args.files}
    unused = sorted(set(overrides) - set().union(*declared.values()))
    if unused:
        raise SftpackError(f"--var {unused}: declared in none of {args.files}")
    for path in args.files:
        own = {k: v for k, v in overrides.items() if k in declared[path]}
        mixture = runlib.is_mixture(load_yaml(Path(path)))
        if args.check:
            if mixture:
                mixlib.load_mixture(path, own)
            else:
                check_recipe(path, own)
            print(f"{path}: ok")
            continue
        if mixture:
            result = mixlib.run_mixture(path, args.out, own, overwrite=args.overwrite,
                                        allow_overlap=args.allow_overlap)
            print(f"{path}: mixture -> {result.file.resolve()}")
            for command in result.commands():
                print(f"  {command}")
            continue
        result = runlib.run_recipe(path, args.out, own, workers=args.workers, progress=not args.quiet,
                                   overwrite=args.overwrite, allow_overlap=args.allow_overlap)
        print(summary(result))
    return 0


def check_recipe(path, overrides) -> None:
    """Everything short of reading rows: schema, vars, input files, prompt folders, tokenizers."""
    import tempfile

    from sftpack.recipes import run as runlib
    from sftpack.recipes import text as textlib

    plan = runlib.load_recipe(path, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        runlib.Run(plan, Path(tmp), 1, False, 0, 1 << 30)
    for step in plan.steps:
        if step.KIND == "map":
            step.prepare()
        if step.uses_tokenizer():
            textlib.load_tokenizer(step.uses_tokenizer())
    if plan.stats_tokenizer:
        textlib.load_tokenizer(plan.stats_tokenizer)


def summary(result) -> str:
    lines = [f"{result.plan.path}: {result.stats['rows_read']:,} rows read in {result.stats['timing']['wall_s']} s"]
    for step in result.steps:
        lines.append(f"  {step.index:>2}. {step.step:<16} {step.rows_in:>10,} -> {step.rows_out:>10,}")
    for out in result.outputs:
        lines.append(f"  {out.dataset}: {out.rows:,} rows -> {out.file.resolve()}")
    for warning in result.stats["warnings"]:
        lines.append(f"  warning: {warning}")
    lines.append(f"  stats: {result.stats_json.resolve()} (+ .md); entries merged into {result.stats['dataset_info']}")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `recipe` to an argparse subparsers object; the parsed args carry `func` (returns an exit code)."""
    parser = subparsers.add_parser(
        "recipe", help="run data recipes (dedup, sampling, quotas, MCQ augmentation) and mixtures",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nRecipes: dataset_info/recipes/README.md (`sftpack init` "
               "copies them). Relative paths resolve against the current directory.")
    parser.add_argument("files", nargs="*", metavar="FILE.yaml", help="recipe or mixture files, run in order")
    parser.add_argument("--out", default="dataset_info",
                        help="dataset_info folder for outputs, entries and stats (default: ./dataset_info)")
    parser.add_argument("--var", action="append", metavar="NAME=VALUE",
                        help="override a var declared under `vars:` (repeatable)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes for large inputs (default: CPUs, at most 4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace entries and files of the same name that sftpack did not write (default: refuse)")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="write a training output that shares prompts with an eval set (default: refuse)")
    parser.add_argument("--check", action="store_true", help="load and check the files only; read no rows")
    parser.add_argument("--steps", action="store_true", help="list the steps and their keys")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_recipe)
    return parser

