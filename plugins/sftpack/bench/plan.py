"""`sftpack bench SUITE --plan`: the runs in order and the time the suite's `time_model` gives each, run nothing.

    sftpack bench benchmarks/suites/gpu_quick.yaml --plan
    sftpack bench benchmarks/suites/gpu_quick.yaml --plan --deadline-s 420

The suite is fully validated first (schema, fairness, the tokenizer folder), so `--plan` is also the check
to run before renting a machine. Times are arithmetic from sftpack.bench.flops.planned_run_s, not measurements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftpack.bench import fairness, flops
from sftpack.bench.suite import RunSpec, Suite

def model_config(suite: Suite) -> dict[str, Any] | None:
    """The config the suite's runs will train: a local folder's config.json, else the build shape's."""
    from sftpack.bench.runner import find_local_model
    from sftpack.tiny_model import SHAPES, tiny_tokenizer_size

    spec = suite.model
    if spec.path:
        found, _ = find_local_model(spec.path, spec.bases)
        if found is not None:
            return json.loads((found / "config.json").read_text(encoding="utf-8"))
    if spec.build_shape is None:
        return None
    config = dict(SHAPES[spec.build_shape])
    if "vocab_size" not in config:
        config["vocab_size"] = _tokenizer_size(spec.tokenizer_path()) or tiny_tokenizer_size()
    return config


def _tokenizer_size(folder: Path | None) -> int | None:
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    ids = set(data["model"]["vocab"].values()) | {token["id"] for token in data.get("added_tokens", [])}
    return max(ids) + 1


def plan_rows(suite: Suite, plan: list[tuple[RunSpec, int]]) -> list[dict[str, Any]]:
    config = model_config(suite)
    rows = []
    for run, repeat in plan:
        values, speed = fairness.normalised(suite, run), fairness.speed_options(suite, run)
        steps = values["max_steps"] if values["max_steps"] > 0 else None
        row = {"run": run.name, "repeat": repeat, "framework": run.framework, "method": values["method"],
               "steps": steps, "samples_per_step": values["effective_batch"],
               "gradient_checkpointing": speed["gradient_checkpointing"], "liger_kernel": speed["liger_kernel"],
               "requires": suite.requires(run), "planned": None}
        if suite.time_model is not None and config is not None and steps and values["effective_batch"]:
            row["planned"] = flops.planned_run_s(vars(suite.time_model), config, values["method"] == "full", steps,
                                                 values["effective_batch"], speed["gradient_checkpointing"],
                                                 speed["liger_kernel"])
        rows.append(row)
    return rows


def plan_total_s(rows: list[dict[str, Any]]) -> float | None:
    planned = [row["planned"]["total_s"] for row in rows if row["planned"]]
    return sum(planned) if planned and len(planned) == len(rows) else None


def format_plan(suite: Suite, rows: list[dict[str, Any]], deadline_s: float | None = None) -> str:
    head = "| # | run | framework | method | steps | samples/step | grad. ckpt | Liger | planned s (fixed + save + compute) |"
    lines = [f"Plan of {suite.path} ({len(rows)} runs):", "", head, "|" + "---|" * 9]
    for i, row in enumerate(rows, 1):
        p = row["planned"]
        planned = (f"{p['total_s']:.0f} ({p['fixed_s']:.0f} + {p['save_s']:.0f} + {p['compute_s']:.1f})" if p
                   else "–")
        lines.append(f"| {i} | {row['run']} r{row['repeat']} | {row['framework']} | {row['method']} | "
                     f"{row['steps'] or 'epochs'} | {row['samples_per_step']} | {row['gradient_checkpointing']} | "
                     f"{row['liger_kernel']} | {planned} |")
    total = plan_total_s(rows)
    lines.append("")
    if suite.time_model is None:
        lines.append("No `time_model` in the suite: no planned time.")
        return "\n".join(lines)
    if total is None:
        lines.append("Some runs have no planned time (no max_steps, or an unknown model shape).")
        return "\n".join(lines)
    tm = suite.time_model
    lines.append(f"Planned: {total:.0f} s for the runs (time model: {tm.peak_tflops:g} TFLOP/s peak x assumed MFU "
                 f"{tm.assumed_mfu:g}, {tm.tokens_per_sample:g} tokens/sample, start-up {tm.startup_s:g} s/run, "
                 f"Liger compile {tm.liger_compile_s:g} s/run, save {tm.save_gb_per_s:g} GB/s) + {tm.setup_s:g} s "
                 f"set-up outside bench = {total + tm.setup_s:.0f} s. Arithmetic, not a measurement.")
    if deadline_s is not None:
        verdict = "fits" if total <= deadline_s else "does NOT fit"
        lines.append(f"Deadline {deadline_s:g} s: the plan {verdict} (runs past it are not started).")
    return "\n".join(lines)
