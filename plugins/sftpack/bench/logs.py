"""Read what a training run logged about itself: LLaMA-Factory's trainer_log.jsonl, ms-swift's logging.jsonl.

    from sftpack.bench.logs import parse_run
    log = parse_run("llamafactory", output_dir, stdout_text)

Both frameworks run transformers' Trainer, so `train_runtime` (training loop only: no imports, model
loading or tokenising) and `train_samples_per_second` mean the same in both. Token counts:
- LLaMA-Factory: the harness sets `include_num_input_tokens_seen=non_padding`, so `total_tokens` in
  trainer_log.jsonl counts non-padding tokens exactly.
- ms-swift parses that flag as a boolean (only `true` = "all"), so `num_input_tokens_seen` in logging.jsonl
  includes padding. With packing (padding-free in Swift) there is no padding and the count is exact; otherwise
  the non-padding figure is an estimate: samples seen x the mean tokenised length Swift prints for the
  training set (`train_dataset` in its summary line), labelled as such.
GPU memory from the frameworks themselves (torch max counters inside the training process, GiB rounded to
0.01): LLaMA-Factory `vram_allocated`/`vram_reserved` with env `RECORD_VRAM=1`, Swift `memory(GiB)` (max
reserved). On a CPU both are meaningless (0 / -0.0 / absent) and are reported as null.
Parameter counts: LLaMA-Factory's "trainable params: N || all params: M" line (exact); Swift's
`model_parameter_info` ("0.3607M Params (0.0451M Trainable [12.4911%])", rounded to 100 parameters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB_TO_MIB = 1024.0
LF_LOG = "trainer_log.jsonl"
LF_RESULTS = ("train_results.json", "all_results.json")
SWIFT_LOG = "logging.jsonl"
# Files copied next to result.json (raw evidence; weights are not kept).
RAW_LOGS = {"llamafactory": (LF_LOG,) + LF_RESULTS, "swift": (SWIFT_LOG, "args.json")}

_LF_PARAMS = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)")
_SWIFT_PARAMS = re.compile(r"([\d.]+)M Params \(([\d.]+)M Trainable \[([\d.]+)%\]\)")
_SWIFT_DATASET = re.compile(r"^([\d.]+)±")
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|torch\.OutOfMemoryError", re.IGNORECASE)


@dataclass
class TrainLog:
    """One run's own log, in one vocabulary. None = the log does not say."""

    steps: int | None = None
    max_steps: int | None = None
    train_runtime_s: float | None = None
    samples_per_s: float | None = None
    tokens_seen: int | None = None
    tokens_counted: str | None = None          # "non_padding" | "all_including_padding" | "padding_free"
    non_padding_tokens: float | None = None
    non_padding_tokens_source: str | None = None
    final_loss: float | None = None
    train_loss_mean: float | None = None
    loss_curve: list = field(default_factory=list)   # [[step, loss], ...]
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_percent: float | None = None
    params_source: str | None = None
    torch_peak_reserved_mib: float | None = None
    torch_peak_allocated_mib: float | None = None
    dataset_mean_tokens: float | None = None
    warnings: list = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return rows


def _max(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def parse_lf(output_dir: Path, stdout: str, on_gpu: bool) -> TrainLog:
    log = TrainLog()
    rows = read_jsonl(output_dir / LF_LOG)
    if not rows:
        log.warnings.append(f"no {LF_LOG} in {output_dir}")
    losses = [(r["current_steps"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    log.loss_curve = [list(p) for p in losses]
    log.final_loss = losses[-1][1] if losses else None
    steps = [r["current_steps"] for r in rows if isinstance(r.get("current_steps"), int)]
    log.steps = max(steps) if steps else None
    log.max_steps = rows[-1].get("total_steps") if rows else None
    tokens = [r["total_tokens"] for r in rows if isinstance(r.get("total_tokens"), int)]
    if on_gpu:
        reserved = _max([r.get("vram_reserved") for r in rows])
        allocated = _max([r.get("vram_allocated") for r in rows])
        log.torch_peak_reserved_mib = reserved * GIB_TO_MIB if reserved is not None and reserved > 0 else None
        log.torch_peak_allocated_mib = allocated * GIB_TO_MIB if allocated is not None and allocated > 0 else None
    results: dict[str, Any] = {}
    for name in LF_RESULTS:
        path = output_dir / name
        if path.is_file():
            results.update(json.loads(path.read_text(encoding="utf-8")))
    log.train_runtime_s = results.get("train_runtime")
    log.samples_per_s = results.get("train_samples_per_second")
    log.train_loss_mean = results.get("train_loss")
    seen = results.get("num_input_tokens_seen", tokens[-1] if tokens else None)
    if seen:
        log.tokens_seen = int(seen)
        log.tokens_counted = "non_padding"
        log.non_padding_tokens = float(seen)
        log.non_padding_tokens_source = "llamafactory total_tokens (include_num_input_tokens_seen=non_padding)"
    match = _LF_PARAMS.search(stdout)
    if match:
        log.trainable_params = int(match.group(1).replace(",", ""))
        log.total_params = int(match.group(2).replace(",", ""))
        log.trainable_percent = float(match.group(3))
        log.params_source = "llamafactory log 'trainable params: N || all params: M' (exact)"
    return log


def parse_swift(output_dir: Path, stdout: str, on_gpu: bool, samples_per_step: int | None,
                padding_free: bool) -> TrainLog:
    log = TrainLog()
    rows = read_jsonl(output_dir / SWIFT_LOG)
    if not rows:
        log.warnings.append(f"no {SWIFT_LOG} in {output_dir}")
    step_rows = [r for r in rows if "global_step/max_steps" in r]
    losses = []
    for row in step_rows:
        step, total = (int(x) for x in str(row["global_step/max_steps"]).split("/"))
        log.steps, log.max_steps = max(log.steps or 0, step), total
        if isinstance(row.get("loss"), (int, float)):
            losses.append([step, row["loss"]])
    log.loss_curve = losses
    log.final_loss = losses[-1][1] if losses else None
    summary = next((r for r in rows if "train_runtime" in r), {})
    log.train_runtime_s = summary.get("train_runtime")
    log.samples_per_s = summary.get("train_samples_per_second")
    log.train_loss_mean = summary.get("train_loss")
    if on_gpu:
        memory = _max([r.get("memory(GiB)") for r in rows])
        log.torch_peak_reserved_mib = memory * GIB_TO_MIB if memory else None
    seen = [r["num_input_tokens_seen"] for r in rows if isinstance(r.get("num_input_tokens_seen"), int)]
    final = next((r for r in reversed(rows) if "model_parameter_info" in r), {})
    match = _SWIFT_DATASET.match(str(final.get("train_dataset", "")))
    log.dataset_mean_tokens = float(match.group(1)) if match else None
    if seen:
        log.tokens_seen = max(seen)
        log.tokens_counted = "padding_free" if padding_free else "all_including_padding"
    if padding_free and log.tokens_seen:
        log.non_padding_tokens = float(log.tokens_seen)
        log.non_padding_tokens_source = "swift num_input_tokens_seen (packing is padding-free: exact)"
    elif samples_per_step and log.steps and log.dataset_mean_tokens:
        log.non_padding_tokens = samples_per_step * log.steps * log.dataset_mean_tokens
        log.non_padding_tokens_source = ("ESTIMATE: samples seen x swift's mean tokenised length of the training "
                                         "set (swift logs only padded token counts)")
    match = _SWIFT_PARAMS.search(str(final.get("model_parameter_info", ""))) or _SWIFT_PARAMS.search(stdout)
    if match:
        log.total_params = round(float(match.group(1)) * 1e6)
        log.trainable_params = round(float(match.group(2)) * 1e6)
        log.trainable_percent = float(match.group(3))
        log.params_source = "swift model_parameter_info (millions, 4 decimals: +-50 parameters)"
    return log


def looks_like_oom(text: str) -> bool:
    return bool(_OOM.search(text))
