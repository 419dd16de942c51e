"""`sftpack estimate CONFIG [KEY=VALUE ...]`: the peak memory of a training config, and the batch that fits a GPU.

    sftpack estimate train_configs/qwen_gsm8k.yaml                          peak + breakdown on a GPU (no GPU needed)
    sftpack estimate train_configs/swift/qwen_full_gsm8k.yaml --gpu-mem 80GiB   ... and the largest micro-batch
    sftpack estimate train_configs/qwen_gsm8k.yaml --gpu-mem 8GiB --dataset gsm8k_train --tokenizer DIR
    sftpack estimate train_configs/qwen_gsm8k.yaml per_device_train_batch_size=1 --json estimate.json
    python -m sftpack.estimate ...                                            the same without the main CLI

Exit status 0; with --gpu-mem, 3 when the config as given (worst micro-batch) does not fit that memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError

USAGE = __doc__.split("\n\n")[1]
EXIT_DOES_NOT_FIT = 3
GIB = 1024 ** 3

ROWS = (   # table row, breakdown categories summed
    ("weights, frozen", ("weights_frozen",)),
    ("weights, trainable", ("weights_trainable",)),
    ("gradients", ("grads",)),
    ("optimizer states", ("optimizer_states",)),
    ("activations (saved, recomputed)", ("activations",)),
    ("logits and loss", ("logits_loss",)),
    ("backward temporaries", ("backward_temporaries",)),
    ("optimizer temporaries", ("optimizer_temporaries",)),
    ("inputs, buffers, other", ("inputs", "buffers", "other")),
)


def _overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SftpackError(f"override {item!r}: expected KEY=VALUE (VALUE read as YAML), e.g. "
                               "per_device_train_batch_size=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def format_report(report: dict[str, Any]) -> str:
    """The text of an estimate report: header, Markdown table (worst | typical), fit search, time."""
    from sftpack import frameworks as fw

    plan, model = report["plan"], report["model"]
    lora = (f"LoRA r{plan['lora_rank']} alpha {plan['lora_alpha']} {plan['lora_targets']}"
            if plan["method"] == "lora" else "full")
    trainable = "fp32" if plan["upcast_trainable"] else plan["weight_dtype"]
    gc = (f"gradient checkpointing ({'reentrant' if plan['use_reentrant'] else 'non-reentrant'})"
          if plan["gradient_checkpointing"] else "no gradient checkpointing")
    speed = [plan["attention"]] + (["Liger"] if plan["liger"] else []) + \
        ([f"packing {plan['packing']}"] if plan["packing"] != "none" else [])
    lines = [
        f"sftpack estimate {report['config']} ({fw.adapter(report['framework']).short}"
        f"{', overrides ' + json.dumps(report['overrides']) if report['overrides'] else ''})",
        f"model:  {model['source']}",
        f"        {model['params']:,} parameters, {model['trainable_params']:,} trainable "
        f"({100 * model['trainable_params'] / model['params']:.2f} %)",
        f"plan:   {lora}; weights {plan['weight_dtype']}, trainable {trainable}, AMP {plan['autocast_dtype'] or 'off'}; "
        f"{gc}; {', '.join(speed)}; {plan['optim']}; micro-batch {plan['batch']} x accumulation "
        f"{plan['accumulation']}; max length {plan['max_length']}",
    ]
    if report["dataset"]:
        d = report["dataset"]
        lines.append(f"data:   {d['source']}: {d['rows']:,} rows, tokens {d['tokens_min']}/{d['tokens_median']}/"
                     f"{d['tokens_max']} (min/median/max), {d['truncated']} truncated, {d['dropped']} dropped")
    columns = [(name, b) for name, b in (("worst", report["batches"]["worst"]),
                                         ("typical", report["batches"]["typical"])) if b]
    header = ["memory, GiB"] + [f"{name}: {b['batch']['text']}" for name, b in columns]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(columns)]

    def row(label: str, values: list[str]) -> None:
        table.append(f"| {label} | " + " | ".join(values) + " |")

    for label, keys in ROWS:
        row(label, [_gib(sum(b["breakdown_bytes"][k] for k in keys)) for _, b in columns])
    row("**traced peak**", [f"**{_gib(b['peak_bytes'])}** ({b['peak_phase']})" for _, b in columns])
    if report["device"] == "gpu":
        terms = report["gpu_terms"]
        row("+ cuBLAS workspace", [_gib(b["gpu"]["cublas_workspace_bytes"]) for _, b in columns])
        row("+ attention backward workspace", [_gib(b["gpu"]["attention_workspace_bytes"]) for _, b in columns])
        row("= **predicted torch max allocated**", [f"**{_gib(b['gpu']['allocated_bytes'])}**" for _, b in columns])
        row(f"predicted torch max reserved (+{100 * terms['reserved_overhead']:.0f} %)",
            [_gib(b["gpu"]["reserved_bytes"]) for _, b in columns])
        row("+ CUDA context", [_gib(b["gpu"]["cuda_context_bytes"]) for _, b in columns])
        row("= **predicted GPU memory (NVML)**", [f"**{_gib(b['gpu']['device_bytes'])}**" for _, b in columns])
        if report["gpu_mem_bytes"] is not None:
            row(f"fits {_gib(report['gpu_mem_bytes'])} GiB", ["yes" if b["fits"] else "**no**" for _, b in columns])
    lines += ["", *table, ""]
    fit = report.get("fit")
    if fit is not None:
        where = f"--gpu-mem {_gib(report['gpu_mem_bytes'])} GiB ({report['gpu_mem_source'] or 'given'})"
        if fit["fits"] and fit["change"] == "none":
            lines.append(f"fit {where}: largest micro-batch {fit['batch']} x accumulation {fit['accumulation']} "
                         f"(effective {fit['effective_batch']}): predicted {_gib(fit['worst']['gpu']['device_bytes'])}"
                         f" GiB; set {_kv(fit['overrides'])}")
        elif fit["fits"]:
            cut = f"; {fit['rows_cut']} rows longer than that are cut" if fit.get("rows_cut") is not None else ""
            lines.append(f"fit {where}: no micro-batch fits as configured; cheapest change that does: {fit['text']}: "
                         f"micro-batch {fit['batch']} x accumulation {fit['accumulation']}, predicted "
                         f"{_gib(fit['worst']['gpu']['device_bytes'])} GiB{cut}; set {_kv(fit['overrides'])}")
        else:
            lines.append(f"fit {where}: {fit['text']}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"time: {report['seconds']:.1f} s, {report['traces']} trace(s) (load average {report['load_avg_1m']})")
    return "\n".join(lines)


def _kv(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items())


def build_parser(prog: str = "sftpack estimate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from sftpack.frameworks import ADAPTERS

    parser.add_argument("config", help="a LLaMA-Factory or ms-swift training YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config keys to change, in the framework's names (VALUE read as YAML)")
    parser.add_argument("--framework", choices=sorted(ADAPTERS), help="whose config it is (default: from its keys)")
    parser.add_argument("--model", help="model folder (with config.json) or hub id instead of the config's")
    parser.add_argument("--shape", help="a named shape of sftpack.tiny_model (tiny, small, qwen2.5-1.5b) instead")
    parser.add_argument("--dataset", help="a dataset_info entry (in the config's dataset_dir, resolved against the "
                                          "current folder) or a .jsonl: worst and typical micro-batch from its lengths")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for --dataset (default: the model folder)")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                        help="gpu (default): a CUDA device's allocator and terms; cpu: this CPU (the proofs' setting)")
    parser.add_argument("--gpu-mem", metavar="SIZE|auto",
                        help="GPU memory to fit (8GiB, 80GB, 24576MiB; auto: the GPU this process sees): says "
                             "whether it fits and searches the largest micro-batch / the cheapest change")
    parser.add_argument("--fit-search", choices=["always", "if-not-fit", "never"], default="always",
                        help="with --gpu-mem: search the largest micro-batch always (default), only when the config "
                             "does not fit, or never (just say whether it fits)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--cuda-context-mib", type=float, help="GPU term (default 512)")
    parser.add_argument("--cublas-workspace-mib", type=float, help="GPU term (default 32)")
    parser.add_argument("--reserved-overhead", type=float, help="GPU term: reserved/allocated - 1 (default 0.10)")
    parser.add_argument("--overrides-json", help=argparse.SUPPRESS)   # the training core's call: one JSON object
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from sftpack.artifacts import write_json
    from sftpack.estimate.core import estimate
    from sftpack.estimate.gpu import GpuTerms, parse_size, visible_gpu_bytes

    overrides = _overrides(args.overrides)
    if args.overrides_json:
        overrides.update(json.loads(args.overrides_json))
    gpu_mem, source = None, None
    if args.gpu_mem == "auto":
        gpu_mem, source = visible_gpu_bytes()
        if gpu_mem is None:
            raise SftpackError(f"--gpu-mem auto: {source}")
    elif args.gpu_mem:
        try:
            gpu_mem, source = parse_size(args.gpu_mem), "given"
        except ValueError as err:
            raise SftpackError(f"--gpu-mem: {err}") from None
    defaults = GpuTerms()
    terms = GpuTerms(
        cublas_workspace_mib=args.cublas_workspace_mib if args.cublas_workspace_mib is not None
        else defaults.cublas_workspace_mib,
        reserved_overhead=args.reserved_overhead if args.reserved_overhead is not None else defaults.reserved_overhead,
        cuda_context_mib=args.cuda_context_mib if args.cuda_context_mib is not None else defaults.cuda_context_mib)
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    report = estimate(Path(args.config), overrides, framework=args.framework, model=args.model, shape=args.shape,
                      dataset=args.dataset, tokenizer=args.tokenizer, device=args.device, gpu_mem=gpu_mem,
                      gpu_mem_source=source, terms=terms, progress=progress, fit_search=args.fit_search)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json.resolve()}")
    fits = report["batches"]["worst"].get("fits")
    return EXIT_DOES_NOT_FIT if fits is False else 0


def _cmd(args: argparse.Namespace) -> int:
    return main(list(args.rest), prog="sftpack estimate")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `estimate` to the `sftpack` command line (`subparsers` from parser.add_subparsers()).

    The sub-parser takes everything after `estimate` and hands it to `main`, which parses options and KEY=VALUE
    overrides in any order (argparse's intermixed parsing, which sub-parsers do not support); its help is main's."""
    parser = subparsers.add_parser(
        "estimate", help="peak GPU memory of a training config (no GPU needed) and the batch that fits")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    full = build_parser("sftpack estimate")
    parser.format_help, parser.format_usage = full.format_help, full.format_usage   # `-h` shows every option
    parser.set_defaults(func=_cmd)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m sftpack.estimate") -> int:
    args = build_parser(prog).parse_intermixed_args(argv)
    try:
        return run(args)
    except SftpackError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
