"""The stored form of benchmark results: one folder per run, `result.json` with a schema version.

    benchmarks/results/<suite>/<session>/session.json              suite, environment, fairness, overhead, runs
    benchmarks/results/<suite>/<session>/<run>-r<k>/result.json    one run (RunResult below)
    benchmarks/results/<suite>/<session>/<run>-r<k>/stdout.log     the CLI's whole output
    benchmarks/results/<suite>/<session>/<run>-r<k>/trainer_log.jsonl | logging.jsonl | ...   raw framework logs

A session folder is named by its UTC start time and is never reused, so re-running a suite adds a session.
Units are in key names (`_s`, `_mib`, `_per_s`); unknown values are null, never NaN or infinity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftpack.artifacts import clean, write_json  # noqa: F401  (re-exported: the writer of result.json)
from sftpack.errors import SftpackError

SCHEMA_VERSION = 2   # 2: `utilisation` (MFU), `trained_model`, status `deadline`, session deadline/skip-module keys
STATUSES = ("ok", "failed", "oom", "timeout", "deadline", "killed", "skipped", "interrupted")

MEMORY_MEASURES = {
    "peak_rss_largest_process_mib": "max RSS of the largest single process of the run (os.wait4 rusage = "
                                    "getrusage RUSAGE_CHILDREN; exact kernel high-water mark)",
    "peak_pss_tree_mib": "max over samples of the summed PSS of the whole process tree (psutil; shared pages "
                         "divided among sharers)",
    "peak_rss_sum_tree_mib": "max over samples of the summed RSS of the tree (double-counts shared pages)",
    "peak_gpu_tree_nvml_mib": "max over samples of the GPU memory NVML attributes to the tree's processes, summed "
                              "over devices (includes CUDA context and allocator cache)",
    "peak_gpu_device_used_nvml_mib": "max over samples of device-wide used GPU memory (NVML), summed over devices, "
                                     "all processes",
    "gpu_device_used_baseline_nvml_mib": "device-wide used GPU memory (NVML) just before the run started",
    "peak_gpu_torch_reserved_mib": "framework's own figure: torch.cuda.max_memory_reserved in the training "
                                   "process (LLaMA-Factory RECORD_VRAM=1 vram_reserved / Swift memory(GiB)), "
                                   "rank 0 device, rounded to 0.01 GiB",
    "peak_gpu_torch_allocated_mib": "framework's own figure: torch.cuda.max_memory_allocated (LLaMA-Factory "
                                    "RECORD_VRAM=1 vram_allocated; Swift does not log it), rounded to 0.01 GiB",
}


@dataclass
class Memory:
    peak_rss_largest_process_mib: float | None = None
    peak_pss_tree_mib: float | None = None
    peak_rss_sum_tree_mib: float | None = None
    max_tree_processes: int | None = None
    peak_gpu_tree_nvml_mib: float | None = None
    peak_gpu_device_used_nvml_mib: float | None = None
    gpu_device_used_baseline_nvml_mib: float | None = None
    peak_gpu_torch_reserved_mib: float | None = None
    peak_gpu_torch_allocated_mib: float | None = None


@dataclass
class Throughput:
    steps: int | None = None
    max_steps: int | None = None
    samples_seen: int | None = None
    samples_per_s: float | None = None
    tokens_seen: int | None = None
    tokens_counted: str | None = None
    tokens_per_s: float | None = None
    non_padding_tokens: float | None = None
    non_padding_tokens_per_s: float | None = None
    non_padding_tokens_source: str | None = None


@dataclass
class Utilisation:
    """Model FLOPs utilisation of a GPU run (sftpack.bench.flops; the formula is stored with it)."""

    mfu: float | None = None                       # share of the GPU's dense bf16 peak, 0..1
    model_flops_per_token: float | None = None
    model_tflops_per_s: float | None = None
    matmul_params: int | None = None               # N of the formula
    peak_flops_per_s: float | None = None
    peak_source: str | None = None
    mfu_tokens: str | None = None                  # which token count the tokens/s came from
    formula: str | None = None


@dataclass
class RunResult:
    suite: str
    session: str
    run: str
    repeat: int
    framework: str
    group: str | None
    status: str                          # one of STATUSES
    status_detail: str | None = None     # why: skip reason, exit signal, timeout, OOM
    exit_code: int | None = None
    wall_s: float | None = None          # process start to exit, as the harness saw it
    train_runtime_s: float | None = None  # the Trainer's own train_runtime (training loop only)
    cpu_user_s: float | None = None      # CPU time of the run's processes (rusage; waited-for descendants)
    cpu_system_s: float | None = None
    load_avg_1m_before: float | None = None   # machine load: other work running beside the benchmark
    load_avg_1m_after: float | None = None
    memory: Memory = field(default_factory=Memory)
    throughput: Throughput = field(default_factory=Throughput)
    utilisation: Utilisation = field(default_factory=Utilisation)
    final_loss: float | None = None
    train_loss_mean: float | None = None
    loss_curve: list = field(default_factory=list)
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_percent: float | None = None
    params_source: str | None = None
    comparable: bool | None = None       # None: not in a comparison pair
    fairness_differences: dict = field(default_factory=dict)
    speed_options: dict = field(default_factory=dict)
    config: str | None = None
    overrides: dict = field(default_factory=dict)
    env_overrides: dict = field(default_factory=dict)
    gpus: int = 0
    command: list = field(default_factory=list)
    cwd: str | None = None
    started_at_utc: str | None = None
    model: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    harness: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    log_tail: str | None = None          # last lines of stdout.log when the run did not finish ok
    trained_model: str | None = None     # the folder lm-eval loads (a model, or a LoRA adapter), when ok
    repeatability: dict = field(default_factory=dict)   # seeds, threads, CPU kind: what a re-run must match
    memory_measures: dict = field(default_factory=lambda: dict(MEMORY_MEASURES))
    environment: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    version = data.get("schema_version")
    if version is None or version > SCHEMA_VERSION:
        raise SftpackError(f"{path}: schema_version {version!r} is not readable by this sftpack "
                           f"(reads up to {SCHEMA_VERSION}); update sftpack")
    return data


def sessions(suite_dir: Path) -> list[Path]:
    """Session folders of one suite's results, oldest first (names are UTC start times)."""
    return sorted(p for p in Path(suite_dir).iterdir() if (p / "session.json").is_file())


def load_session(session_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(session.json, [result.json of each run, in run order])."""
    session = read_json(session_dir / "session.json")
    results = [read_json(session_dir / entry["dir"] / "result.json") for entry in session["runs"]]
    return session, results
