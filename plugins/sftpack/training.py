"""The training core: one framework CLI run, measured and recorded the same way for bench, pipeline and sweeps.

    from sftpack.training import TrainJob, run_training
    result = run_training(TrainJob(framework="swift", config=cfg, overrides={"max_steps": 20}, model=model,
                                   output_dir=out / "output", cwd=workdir, record_dir=out, cache=out / "cache"))
    result.status, result.wall_s, result.memory.peak_rss_largest_process_mib, result.trained_model

`run_training` merges the config's overrides (the framework's local-model flags first, the job's overrides, then
the keys the core owns: model, output folder, token counting), builds the command and the environment through
the framework's adapter (offline hubs, caches in `cache`, `CUDA_VISIBLE_DEVICES`, `RECORD_VRAM=1` for
LLaMA-Factory, torchrun variables for > 1 GPU), runs it under sftpack.bench.monitor (wall, CPU, load, peak RSS of
the largest process, PSS of the tree, NVML on a GPU) with a timeout and an optional deadline, parses the
framework's own log (loss curve, train runtime, tokens real or padded, torch GPU peaks, parameters), computes MFU
on a GPU, copies the raw logs into `record_dir` and writes `record_dir/result.json` (sftpack.bench.results
RunResult, schema_version 2). A failure, timeout, deadline or kill is a recorded status, not an exception; an
interrupt (Ctrl-C, SIGTERM) is recorded and re-raised.

Before a GPU run the core asks `sftpack estimate` (in a subprocess, so the harness process stays small) for the
run's predicted peak on the GPU it will see, prints it, records it in `record_dir/estimate.json` and in
result.json's `harness.estimate`, and refuses a run predicted not to fit (status `skipped`, the reason in
`status_detail`) unless `job.fit_check` is "warn" (the CLIs' --force-fit: run anyway) or "off".
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sftpack import frameworks as fw
from sftpack import parity
from sftpack.bench import flops
from sftpack.bench.monitor import Measured, Nvml, harness_rss_mib, run_measured
from sftpack.bench.results import Memory, RunResult, Throughput, Utilisation, write_json
from sftpack.errors import SftpackError
from sftpack.frameworks.logs import looks_like_oom
from sftpack.provenance import utc_now

LOG_TAIL_LINES = 40
FIT_CHECKS = ("refuse", "warn", "off")
ESTIMATE_TIMEOUT_S = 300.0
MIB = 1024 ** 2


@dataclass
class TrainJob:
    framework: str                       # an adapter name: "llamafactory" | "swift"
    config: Path                         # the framework's YAML
    overrides: dict                      # on top of the YAML (presets, suite/pipeline overrides); no harness keys
    model: Path
    output_dir: Path                     # checkpoints (deleted by bench after the run unless --keep-outputs)
    cwd: Path                            # where dataset_info/ is (LLaMA-Factory resolves dataset_dir there)
    record_dir: Path                     # result.json, stdout.log, the raw logs, memory_timeline.csv
    cache: Path                          # HF/ModelScope/datasets caches of this run only
    gpus: int = 0
    timeout_s: float = 3600.0
    deadline: float | None = None        # time.monotonic() value: stopped there, recorded as `deadline`
    env: dict = field(default_factory=dict)          # extra environment (a suite's `env:`)
    base_env: Mapping[str, str] | None = None        # default: os.environ
    sample: bool = True                  # False: no sampler (the bare run of the overhead measurement)
    interval_s: float = 0.2
    nvml: Nvml | None = None
    echo: bool = False
    gpu_name: str | None = None          # for MFU's peak (from the captured environment)
    identity: dict = field(default_factory=dict)     # RunResult's suite/session/run/repeat/group/... fields
    # Before a GPU run, `sftpack estimate` against the GPU it sees: "refuse" a run predicted not to fit,
    # "warn" (the CLIs' --force-fit: print the estimate and run anyway), "off" (no estimate).
    fit_check: str = "refuse"
    kind: str = "sft"                    # "sft" | "pt" (pretraining on plain text; Adapter.command)

    def __post_init__(self):
        if self.fit_check not in FIT_CHECKS:
            raise ValueError(f"TrainJob.fit_check {self.fit_check!r} unknown. Expected one of {list(FIT_CHECKS)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merged_config(config: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config as the framework sees it, minus the keys the core sets (model, output_dir)."""
    return {**parity.load_yaml(config), **overrides}


def run_overrides(job: TrainJob) -> dict[str, Any]:
    """Local-model flags < the job's overrides < the keys the core owns; `data_seed` pinned to the seed unless given
    (LLaMA-Factory draws its data order from `seed`, Swift from its own `data_seed`: explicit, both follow one)."""
    adapter = fw.adapter(job.framework)
    local = adapter.local_model_overrides(job.model) if Path(job.model).is_dir() else {}
    merged = merged_config(job.config, job.overrides)
    pinned = {"data_seed": merged.get("seed", 42)} if "data_seed" not in merged else {}
    return {**local, **pinned, **job.overrides, **adapter.run_overrides(job.model, job.output_dir)}


def threads(base: Mapping[str, str]) -> str:
    """The CPU thread count a run uses: the caller's OMP_NUM_THREADS, else the cores this process may use.
    Pinned because it changes the float reduction order, so the bits of the result (tests/test_repeatable.py)."""
    return base.get("OMP_NUM_THREADS") or str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else os.cpu_count() or 1)


def repeatability(job: TrainJob, overrides: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """What a second run must match to give the same bits (measured on CPU: tests/test_repeatable.py)."""
    merged = {**parity.load_yaml(job.config), **overrides}
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        pass
    return {"seed": merged.get("seed"), "data_seed": merged.get("data_seed"),
            "threads": env.get("OMP_NUM_THREADS"), "cpu_avx512": ("avx512f" in flags) if flags else None,
            "note": "on a CPU the same seeds, thread count and CPU kind gave bit-identical loss curves and weights "
                    "for both frameworks (tests/test_repeatable.py); GPU kernels may not be deterministic "
                    "(not measured)"}


def environment(job: TrainJob) -> tuple[dict[str, str], dict[str, str]]:
    """(full environment, the part set on top of the caller's): offline, devices, the framework's variables.

    A torchrun launch (fw.launch_shape): one process per GPU when gpus > 1, or NPROC_PER_NODE processes (gloo on
    a CPU) and/or NNODES nodes from `job.env`; the core adds NPROC_PER_NODE, a free MASTER_PORT (job.env's wins:
    the nodes of one run share it) and the framework's launch variables (its adapter's `env`)."""
    base = dict(job.base_env) if job.base_env is not None else dict(os.environ)
    extra: dict[str, str] = {}
    if job.gpus == 0:
        extra["CUDA_VISIBLE_DEVICES"] = ""   # a CPU run stays on the CPU even on a GPU machine
    else:
        visible = base.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(job.gpus)]
        extra["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:job.gpus])
        extra["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    processes, nodes = fw.launch_shape(job.gpus, job.env)
    distributed = processes > 1 or nodes > 1
    if distributed:
        extra.update(NPROC_PER_NODE=str(processes), MASTER_PORT=str(_free_port()))
    threads_n = threads(base)
    extra.update(OMP_NUM_THREADS=threads_n, MKL_NUM_THREADS=base.get("MKL_NUM_THREADS") or threads_n)
    extra.update(fw.adapter(job.framework).env(job.gpus, distributed=distributed, base=base))
    extra.update({str(k): str(v) for k, v in job.env.items()})
    env = fw.offline_env(job.cache, base=base)
    env.update(extra)
    return env, extra


def new_result(job: TrainJob) -> RunResult:
    """The record of `job` before it runs: identity, command, environment, speed options (status 'skipped')."""
    adapter = fw.adapter(job.framework)
    merged = merged_config(job.config, job.overrides)
    identity = {"suite": "", "session": "", "run": job.framework, "repeat": 1, "group": None, **job.identity}
    result = RunResult(**identity, framework=job.framework, status="skipped", gpus=job.gpus,
                       started_at_utc=utc_now(), speed_options=adapter.speed_options(merged))
    overrides = run_overrides(job)
    result.overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()}
    result.cwd = str(job.cwd)
    env, result.env_overrides = environment(job)
    result.repeatability = repeatability(job, overrides, env)
    try:
        result.command = [str(c) for c in adapter.command(job.config, overrides, job.kind)]
    except SftpackError as err:   # the framework's CLI is not installed here
        result.status_detail = str(err)
    return result


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "".join(text.splitlines(True)[-lines:])


def _status(measured: Measured, stdout: str, timeout_s: float, by_deadline: bool) -> tuple[str, str | None]:
    if measured.timed_out and by_deadline:
        return "deadline", f"stopped at the session deadline (--deadline-s) after {measured.wall_s:.0f} s"
    if measured.timed_out:
        return "timeout", f"killed after the run's timeout of {timeout_s:g} s"
    if measured.exit_code == 0:
        return "ok", None
    if looks_like_oom(stdout):
        return "oom", f"exit {measured.exit_code}: the log reports a CUDA out-of-memory error"
    if measured.signal_name == "SIGKILL":
        return "killed", "killed by SIGKILL from outside the harness (often the kernel's OOM killer: host RAM)"
    if measured.signal_name:
        return "killed", f"killed by {measured.signal_name}"
    return "failed", f"exit {measured.exit_code}"


def run_training(job: TrainJob, result: RunResult | None = None) -> RunResult:
    """Run `job` (its `result` from new_result, or a fresh one), record it in job.record_dir, return it."""
    result = result or new_result(job)
    job.record_dir.mkdir(parents=True, exist_ok=True)
    if not result.command:
        write_json(job.record_dir / "result.json", result.to_dict())
        return result
    adapter = fw.adapter(job.framework)
    env, _ = environment(job)
    estimate = fit_check(job, env)
    if estimate is not None and estimate.get("fits") is False and job.fit_check == "refuse":
        result.status = "skipped"
        result.status_detail = f"refused before starting: {estimate['line']} (--force-fit to try anyway)"
        result.harness = {"estimate": estimate}
        write_json(job.record_dir / "result.json", result.to_dict())
        return result
    limit_s, by_deadline = job.timeout_s, False
    if job.deadline is not None and job.deadline - time.monotonic() < job.timeout_s:
        limit_s, by_deadline = max(job.deadline - time.monotonic(), 1.0), True
    stdout_log = job.record_dir / "stdout.log"
    try:
        measured = run_measured(result.command, job.cwd, env, stdout_log, limit_s, interval_s=job.interval_s,
                                sample=job.sample, nvml=job.nvml if job.gpus > 0 else None, echo=job.echo)
    except KeyboardInterrupt:
        result.status, result.status_detail = "interrupted", "interrupted (Ctrl-C or SIGTERM); the run was killed"
        result.log_tail = _tail(stdout_log)
        write_json(job.record_dir / "result.json", result.to_dict())
        raise
    parse_started = time.perf_counter()
    stdout = stdout_log.read_text(encoding="utf-8", errors="replace")
    values = adapter.normalise(merged_config(job.config, job.overrides))
    processes, nodes = fw.launch_shape(job.gpus, job.env)   # every process of every node takes a micro-batch
    per_step = (values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] * processes * nodes
                if values["gradient_accumulation_steps"] is not None else None)
    padding_free = bool(result.speed_options.get("packing") or job.overrides.get("padding_free"))
    log = adapter.parse_log(job.output_dir, stdout, job.gpus > 0, per_step, padding_free)
    for name in adapter.raw_logs:
        if (job.output_dir / name).is_file():
            shutil.copy2(job.output_dir / name, job.record_dir / name)
    parse_s = time.perf_counter() - parse_started

    result.status, result.status_detail = _status(measured, stdout, job.timeout_s, by_deadline)
    result.exit_code, result.wall_s = measured.exit_code, measured.wall_s
    result.cpu_user_s, result.cpu_system_s = measured.cpu_user_s, measured.cpu_system_s
    result.load_avg_1m_before, result.load_avg_1m_after = measured.load_avg_1m_before, measured.load_avg_1m_after
    result.train_runtime_s = log.train_runtime_s
    sampler = measured.sampler
    result.memory = Memory(
        peak_rss_largest_process_mib=measured.peak_rss_largest_process_mib,
        peak_pss_tree_mib=sampler.get("peak_pss_tree_mib"),
        peak_rss_sum_tree_mib=sampler.get("peak_rss_sum_tree_mib"),
        max_tree_processes=sampler.get("max_tree_processes"),
        peak_gpu_tree_nvml_mib=sampler.get("peak_gpu_tree_nvml_mib"),
        peak_gpu_device_used_nvml_mib=sampler.get("peak_gpu_device_used_nvml_mib"),
        gpu_device_used_baseline_nvml_mib=sampler.get("gpu_device_used_baseline_nvml_mib"),
        peak_gpu_torch_reserved_mib=log.torch_peak_reserved_mib,
        peak_gpu_torch_allocated_mib=log.torch_peak_allocated_mib)
    runtime = log.train_runtime_s
    result.throughput = Throughput(
        steps=log.steps, max_steps=log.max_steps,
        samples_seen=per_step * log.steps if per_step and log.steps else None,
        samples_per_s=log.samples_per_s, tokens_seen=log.tokens_seen, tokens_counted=log.tokens_counted,
        tokens_per_s=log.tokens_seen / runtime if log.tokens_seen and runtime else None,
        non_padding_tokens=log.non_padding_tokens,
        non_padding_tokens_per_s=log.non_padding_tokens / runtime if log.non_padding_tokens and runtime else None,
        non_padding_tokens_source=log.non_padding_tokens_source)
    result.final_loss, result.train_loss_mean, result.loss_curve = log.final_loss, log.train_loss_mean, log.loss_curve
    result.trainable_params, result.total_params = log.trainable_params, log.total_params
    result.trainable_percent, result.params_source = log.trainable_percent, log.params_source
    result.utilisation = utilisation(job, result, full=values["method"] == "full")
    result.warnings = list(log.warnings) + ([f"the sampler hit {sampler['errors']} NVML errors"]
                                            if sampler.get("errors") else [])
    result.harness = {"sampled": job.sample, "sample_interval_s": job.interval_s,
                      "samples": sampler.get("samples"), "pss_samples": sampler.get("pss_samples"),
                      "pss_budget_of_one_core": sampler.get("pss_budget_of_one_core"),
                      "sampler_cpu_s": sampler.get("cpu_s"), "parse_s": parse_s,
                      "harness_process_peak_rss_mib": harness_rss_mib(), "timeout_s": job.timeout_s,
                      "estimate": estimate}
    if result.status == "ok":
        try:
            result.trained_model = str(adapter.trained_model(job.output_dir))
        except SftpackError as err:
            result.warnings.append(str(err))
    else:
        result.log_tail = _tail(stdout_log)
    if measured.timeline:
        _write_timeline(job.record_dir / "memory_timeline.csv", measured.timeline)
    write_json(job.record_dir / "result.json", result.to_dict())
    return result


# One estimate per distinct (framework, config, overrides, visible GPU) in a process: repeats reuse it.
_ESTIMATES: dict[str, dict[str, Any]] = {}


def fit_check(job: TrainJob, env: Mapping[str, str]) -> dict[str, Any] | None:
    """Before a GPU run: the run's estimate against the GPU its environment makes visible (None on a CPU run or
    with fit_check "off"). The report goes to record_dir/estimate.json; the summary returned has `fits`
    (True/False, None when unknown), the predicted figures in MiB and a printed `line`."""
    if job.gpus == 0 or job.fit_check == "off":
        return None
    if job.gpus > 1:
        summary = {"fits": None, "line": f"estimate: not checked for {job.gpus} GPUs (sftpack estimate models one "
                                         "GPU without DDP buckets or ZeRO/FSDP sharding)"}
        print(summary["line"], flush=True)
        return summary
    overrides = run_overrides(job)
    key = json.dumps([job.framework, str(Path(job.config).resolve()), overrides, str(job.cwd),
                      env.get("CUDA_VISIBLE_DEVICES"), env.get("SFTPACK_GPU_MEM")], sort_keys=True, default=str)
    if key not in _ESTIMATES:
        _ESTIMATES[key] = _estimate(job, overrides, env)
    report = _ESTIMATES[key].get("report")
    if report is not None:
        write_json(job.record_dir / "estimate.json", report)
    summary = {k: v for k, v in _ESTIMATES[key].items() if k != "report"}
    print(summary["line"], flush=True)
    return summary


def _estimate(job: TrainJob, overrides: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """`python -m sftpack.estimate` on the job; its report and a summary (never raises: an estimate that cannot be
    made lets the run start, saying why)."""
    import tempfile

    started = time.perf_counter()
    model = str(Path(job.model).resolve()) if Path(job.model).is_dir() else str(job.model)   # a folder or hub id
    with tempfile.TemporaryDirectory(prefix="sftpack-estimate-") as tmp:
        out = Path(tmp) / "estimate.json"
        cmd = [sys.executable, "-m", "sftpack.estimate", str(Path(job.config).resolve()), "--framework",
               job.framework, "--model", model, "--gpu-mem", "auto", "--fit-search", "never",
               "--json", str(out), "--quiet",
               "--overrides-json", json.dumps(dict(overrides), default=str)]
        try:
            proc = subprocess.run(cmd, cwd=job.cwd, env=dict(env), capture_output=True, text=True,
                                  timeout=ESTIMATE_TIMEOUT_S)
            report = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        except subprocess.TimeoutExpired:
            report, why = None, f"timed out after {ESTIMATE_TIMEOUT_S:g} s"
    seconds = round(time.perf_counter() - started, 1)
    if report is None:
        return {"fits": None, "seconds": seconds, "line": f"estimate: unavailable ({why}); the run starts anyway"}
    worst = report["batches"]["worst"]
    gpu, total = worst["gpu"], report["gpu_mem_bytes"]
    summary = {"fits": worst["fits"], "seconds": seconds, "file": "estimate.json",
               "predicted_allocated_mib": round(gpu["allocated_bytes"] / MIB, 1),
               "predicted_reserved_mib": round(gpu["reserved_bytes"] / MIB, 1),
               "predicted_device_mib": round(gpu["device_bytes"] / MIB, 1),
               "gpu_total_mib": round(total / MIB, 1), "gpu_source": report["gpu_mem_source"],
               "micro_batch": worst["batch"]["text"], "peak_phase": worst["peak_phase"]}
    verdict = "fits" if worst["fits"] else "does NOT fit"
    hint = "" if worst["fits"] else (f"; `sftpack estimate {job.config} --gpu-mem {total / 2 ** 30:.0f}GiB` finds "
                                     "the micro-batch or the change that fits")
    summary["line"] = (f"estimate: predicted {gpu['device_bytes'] / 2 ** 30:.2f} GiB on the GPU (torch allocated "
                       f"{gpu['allocated_bytes'] / 2 ** 30:.2f} GiB) for micro-batch {worst['batch']['text']}: "
                       f"{verdict} the {total / 2 ** 30:.2f} GiB of {report['gpu_mem_source']}{hint}")
    return {**summary, "report": report}


def arm_nvml(job: TrainJob) -> str | None:
    """On a GPU job, open NVML for the sampler (job.nvml) and name the device for MFU; returns why not, if not."""
    if job.gpus == 0:
        return None
    job.nvml, why = Nvml.open()
    if job.nvml is not None:
        job.gpu_name = job.gpu_name or job.nvml.device_names()[0]
    return why


def run_standalone(job: TrainJob) -> RunResult:
    """`run_training` for a job that owns its NVML handle (a pipeline stage, a sweep cell; bench shares one per
    session): opened before the run, said when it cannot be, closed after."""
    why = arm_nvml(job)
    if why:
        print(f"NVML not used: {why}", flush=True)
    try:
        return run_training(job)
    finally:
        if job.nvml is not None:
            job.nvml.close()


def utilisation(job: TrainJob, result: RunResult, full: bool) -> Utilisation:
    """MFU of a GPU run (sftpack.bench.flops); every figure None on a CPU or when an input is unknown."""
    util = Utilisation(formula=flops.FORMULA)
    config_path = Path(job.model) / "config.json"
    if job.gpus == 0 or not config_path.is_file():
        return util
    util.peak_flops_per_s, util.peak_source = flops.gpu_peak_bf16(job.gpu_name)
    util.matmul_params = flops.matmul_params(json.loads(config_path.read_text(encoding="utf-8")))
    if full or result.trainable_params is not None:
        util.model_flops_per_token = flops.train_flops_per_token(util.matmul_params, result.trainable_params, full)
    tokens_per_s = result.throughput.non_padding_tokens_per_s
    util.mfu = flops.mfu(util.model_flops_per_token, tokens_per_s, util.peak_flops_per_s)
    if util.mfu is not None:
        util.mfu_tokens = result.throughput.non_padding_tokens_source
        util.model_tflops_per_s = util.model_flops_per_token * tokens_per_s / 1e12
    return util


def _write_timeline(path: Path, timeline: list) -> None:
    def mib(value):
        return "" if value is None else f"{value / 1024 ** 2:.1f}"

    rows = ["t_s,pss_tree_mib,rss_sum_tree_mib,processes,gpu_tree_nvml_mib,gpu_device_used_nvml_mib"]
    rows += [f"{t:.3f},{mib(pss)},{mib(rss)},{n},{mib(gt)},{mib(gd)}" for t, pss, rss, n, gt, gd in timeline]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
