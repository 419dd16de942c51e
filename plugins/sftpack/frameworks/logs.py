"""Read what a training run logged about itself: LLaMA-Factory's trainer_log.jsonl, ms-swift's logging.jsonl.

    log = sftpack.frameworks.adapter("llamafactory").parse_log(output_dir, stdout, on_gpu, per_step, padding_free)

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


def max_number(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def looks_like_oom(text: str) -> bool:
    return bool(_OOM.search(text))
