"""`sftpack run PIPELINE.yaml [--out DIR] [--force STAGE] [--check]`: data -> both frameworks -> eval -> report.

    sftpack run benchmarks/pipelines/tiny_cpu.yaml                   # the embedded default, CPU, offline
    sftpack run benchmarks/pipelines/tiny_cpu.yaml --check           # validate + print the stages, run nothing
    sftpack run benchmarks/pipelines/qwen2.5_1.5b_gpu.yaml --out runs/qwen
    sftpack run benchmarks/pipelines/qwen2.5_1.5b_gpu_smoke.yaml --offline   # no hub calls: fallbacks at once
    sftpack run benchmarks/pipelines/tiny_cpu.yaml --force train_swift   # redo one stage (and those after it)
    sftpack run                                                      # the shipped default, from any folder

Relative paths inside a pipeline (configs, model/tokenizer folders, data) resolve against the pipeline file's
folder; outputs go to ./runs/pipelines/<name> of the current folder unless --out says otherwise. Outside a
checkout, `sftpack init DIR` copies the shipped pipelines and the configs they name into DIR.

`--out` is locked while a run works in it: a second `sftpack run` on the same folder fails at once, naming the
first. Ctrl-C / SIGTERM / SIGHUP end the stage's processes (training, lm_eval) and exit 130 / 143 / 129; finished
stages keep their outputs. A local-looking `model.path` that is not a model folder fails when the file is read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sftpack import assets

DEFAULT_PIPELINE_NAME = "benchmarks/pipelines/tiny_cpu.yaml"
DEFAULT_PIPELINE = assets.path(DEFAULT_PIPELINE_NAME)   # the shipped copy (checkout or wheel)


def default_out(pipeline_name: str) -> Path:
    """Outputs default to the current folder, never to where sftpack is installed."""
    return Path("runs") / "pipelines" / pipeline_name


def run_pipeline(path: Path, out: Path | None = None, force: list[str] | None = None,
                 offline: bool = False, fit_check: str = "refuse", verbose: bool = False) -> dict:
    from sftpack.extras import TRAINING, require
    from sftpack.pipeline.offline import go_offline
    from sftpack.pipeline.report import terminal_summary

    require(*TRAINING, "lm_eval", what="sftpack run")   # before any stage: one line naming the extra

    go_offline(offline)   # first: before anything in this process imports huggingface_hub or datasets
    from sftpack.pipeline.schema import load_pipeline
    from sftpack.pipeline.stages import run_stages
    from sftpack.pipeline.steps import check_gpu, check_model, print_fallbacks, stages

    pipeline = load_pipeline(path)
    check_gpu(pipeline)
    check_model(pipeline)
    out = (out or default_out(pipeline.name)).resolve()
    print(f"sftpack run: {pipeline.path} -> {out}", flush=True)
    print_fallbacks(pipeline)   # every fallback the spec allows (offline included), before the first stage
    started = time.monotonic()
    records = run_stages(stages(pipeline, fit_check, verbose), out, force, parallel=pipeline.parallel)
    report = out / "report" / "report.md"
    try:
        summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
        text = terminal_summary(summary, report, time.monotonic() - started)
    except (OSError, ValueError, KeyError, TypeError) as err:   # a summary written by another version
        text = f"sftpack run: finished in {time.monotonic() - started:.1f} s; report: {report} ({err})"
    print("\n" + text, flush=True)
    return records


def check_pipeline(path: Path, out: Path | None = None) -> int:
    """Validate a pipeline file (every problem at once, naming file:line and key) and print its stages; run nothing.
    GPU presence is not checked here: `requires_gpu: true` is checked when the pipeline runs."""
    from sftpack.pipeline.schema import load_pipeline
    from sftpack.pipeline.steps import stages

    pipeline = load_pipeline(path)
    out = (out or default_out(pipeline.name)).resolve()
    print(f"sftpack run --check: {pipeline.path} is valid; nothing was run")
    print(f"  name: {pipeline.name}; requires_gpu: {str(pipeline.requires_gpu).lower()}; out: {out}")
    plan = stages(pipeline)
    width = max(len(stage.name) for stage in plan)
    for number, stage in enumerate(plan, 1):
        print(f"  {number}. {stage.name:<{width}}  {stage.what}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.check:
        return check_pipeline(Path(args.pipeline), Path(args.out) if args.out else None)
    run_pipeline(Path(args.pipeline), Path(args.out) if args.out else None, args.force, offline=args.offline,
                 fit_check=args.fit_check, verbose=args.verbose)
    return 0


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("pipeline", nargs="?", default=str(DEFAULT_PIPELINE),
                        help=f"pipeline YAML; relative paths in it resolve against its folder (default: the embedded "
                             f"CPU default {DEFAULT_PIPELINE_NAME}, shipped with sftpack)")
    parser.add_argument("--out", help="output folder (default: ./runs/pipelines/<pipeline name> in the current "
                                      "folder); locked while the run works in it")
    parser.add_argument("--force", action="append", metavar="STAGE",
                        help="redo STAGE (model, data, train_llamafactory, train_swift, eval, report) and the stages "
                             "after it; repeatable")
    parser.add_argument("--offline", action="store_true",
                        help="no hub calls (sets HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE=1); also on "
                             "when one of them is already set. Downloads are skipped and the fallbacks taken at once")
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--force-fit", dest="fit_check", action="store_const", const="warn", default="refuse",
                     help="on a GPU, start a training that `sftpack estimate` predicts will not fit (default: refuse it)")
    fit.add_argument("--no-fit-check", dest="fit_check", action="store_const", const="off",
                     help="on a GPU, do not estimate the peak memory before each training")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the frameworks' and lm-eval's own output (always in each stage's log files; "
                             "by default a progress line with an ETA every 15 s)")
    parser.add_argument("--check", action="store_true",
                        help="validate the pipeline (types, ranges, unknown keys, config files, eval task names, "
                             "LoRA keys, step counts; every problem with file:line) and print its stages; run nothing")
    parser.set_defaults(func=_cmd_run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `run` to the `sftpack` CLI's subparsers."""
    parser = subparsers.add_parser("run", help="run a pipeline: prepare, train with both frameworks, eval, report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure(parser)

