"""Run a benchmark suite: every run through the framework's own CLI, measured from outside, results kept.

    sftpack bench benchmarks/suites/cpu_tiny.yaml [--repeats N] [--only a,b] [--overhead-repeats N]
    python -m sftpack.bench benchmarks/suites/cpu_tiny.yaml          # the same, before `bench` is wired in

Per session (one invocation): check fairness of every pair (refuse or mark, per the suite); capture the
environment (subprocess); prepare the model (a local/cached checkpoint, else built offline with random
weights) and the dataset into the session's work folder (the frameworks' current directory, so
`dataset_dir: dataset_info` resolves there); then run each run x repeat, interleaving repeats. Each run gets
its own cache folder (no tokenised-dataset cache carried between runs) and output folder (deleted after its
logs are copied, unless --keep-outputs). A run that fails, times out or is killed is recorded with its exit,
reason and log tail, and the suite goes on. Optionally the harness's overhead is measured: the same command
bare and under the harness, alternately.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack import training
from sftpack.bench import fairness
from sftpack.bench.monitor import (
    Interrupted,
    Measured,
    Nvml,
    harness_rss_mib,
    install_stop_handlers,
    restore_handlers,
    run_measured,
)
from sftpack.bench.results import SCHEMA_VERSION, RunResult, write_json
from sftpack.bench.suite import RunSpec, Suite, SuiteError, load_suite
from sftpack.errors import SftpackError
from sftpack.frameworks.common import cached_hub_model, model_path_problem
from sftpack.locks import hold
from sftpack.provenance import utc_now
from sftpack.spec import nowhere
from sftpack.training import TrainJob

# Outputs default to the current folder (in a checkout, run from its root: the committed benchmarks/results/).
DEFAULT_RESULTS = Path("benchmarks") / "results"
DEFAULT_WORK = Path("runs") / "bench"
OVERHEAD_TARGETS = {"wall_pct": 2.0, "memory_mib": 50.0}
BUILT_MARKER = ".sftpack-bench-built"


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(fw.REPO_ROOT))
    except ValueError:
        return str(path)


# -- the model and the dataset ------------------------------------------------------------------------------
def local_model_places(path: str, bases: tuple[Path, ...] = ()) -> list[Path]:
    """Where a model `path` is looked for: as given when absolute, else in each of `bases` (a pipeline's or suite's
    folder), the assets root (older files named paths from the repository root), the current folder."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return [candidate]
    return list(dict.fromkeys((Path(base) / candidate).resolve() for base in (*bases, fw.REPO_ROOT, Path.cwd())))


def find_local_model(path: str, bases: tuple[Path, ...] = ()) -> tuple[Path | None, str | None]:
    """A model folder for `path` available offline: a folder (local_model_places), or a hub id in this machine's
    HF/ModelScope cache."""
    for folder in local_model_places(path, bases):
        if (folder / "config.json").is_file():
            return folder.resolve(), f"local folder {folder.resolve()}"
    return cached_hub_model(path)


def prepare_model(suite: Suite, work_root: Path, env: dict[str, str], log) -> tuple[Path, dict[str, Any]]:
    spec = suite.model
    if spec.path:
        found, source = find_local_model(spec.path, spec.bases)
        if found is not None:
            return found, {"requested": spec.path, "used": str(found), "source": source, "random_weights": False}
        if spec.build_shape is None:
            raise SuiteError(f"{suite.path}: model.path {spec.path!r} is not available offline (no folder, no "
                             "HuggingFace/ModelScope cache entry) and no build_shape is given")
    tokenizer = spec.tokenizer_path()
    options = ["--shape", spec.build_shape, "--seed", str(spec.seed)]
    if tokenizer is not None:
        options += ["--tokenizer", str(tokenizer)]
    # The folder is named by what built it, and reused only when its marker records the same build.
    identity = hashlib.sha256(" ".join(options).encode()).hexdigest()[:10]
    folder = work_root / "models" / f"{spec.build_shape}-seed{spec.seed}-{identity}"
    marker = " ".join(options) + "\n"
    built = folder / BUILT_MARKER
    if not (built.is_file() and built.read_text() == marker):
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "sftpack", "tiny-model", str(tmp), *options]
        _setup_step(cmd, work_root, env, log, f"building the {spec.build_shape} model")
        (tmp / BUILT_MARKER).write_text(marker)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    tokenizer_note = (f"the tokenizer of {tokenizer}" if tokenizer is not None
                      else "the tiny GSM8K-trained tokenizer (tokens per row differ from the real model's)")
    note = (f"random weights of shape {spec.build_shape} built offline by `sftpack tiny-model {' '.join(options)}`"
            f", with {tokenizer_note}")
    if spec.path:
        note += f"; because {spec.path!r} is not available offline. Time and memory per token match the real model"
    return folder.resolve(), {"requested": spec.path, "used": str(folder.resolve()), "source": note,
                              "random_weights": True, "shape": spec.build_shape, "seed": spec.seed,
                              "tokenizer": str(tokenizer) if tokenizer is not None else None}


def _setup_step(cmd: list[str], cwd: Path, env: dict[str, str], log, what: str) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SftpackError(f"{what} failed (exit {done.returncode}); see {log.name}")


def prepare_dataset(suite: Suite, work: Path, env: dict[str, str], log) -> dict[str, Any]:
    source = suite.dataset.resolved_source()
    cmd = [sys.executable, "-m", "sftpack", "prepare", suite.dataset.family, "--source", source,
           "--out", str(work / "dataset_info"), "--quiet"]
    _setup_step(cmd, work, env, log, f"preparing dataset {suite.dataset.family} from {source}")
    return {"family": suite.dataset.family, "source": suite.dataset.source, "resolved_source": source,
            "dataset_info": str(work / "dataset_info" / "dataset_info.json")}


def capture_environment(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "sftpack.provenance"], env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise SftpackError(f"environment capture failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# -- one run --------------------------------------------------------------------------------------------------
@dataclass
class Session:
    suite: Suite
    session_id: str
    results_dir: Path      # <results>/<suite>/<session>
    work: Path             # the frameworks' current directory (holds dataset_info/)
    model: Path
    model_info: dict
    dataset_info: dict
    environment: dict
    verdicts: dict         # group -> fairness.PairVerdict
    nvml: Nvml | None = None
    keep_outputs: bool = False
    echo: bool = False
    base_env: dict = field(default_factory=lambda: dict(os.environ))
    timeout_s: float | None = None       # --timeout-s: every run's timeout (else the suite's)
    deadline: float | None = None        # time.monotonic() after which no run starts; the run in flight stops
    unusable: dict = field(default_factory=dict)   # --skip-module NAME=REASON: importable but unusable here
    fit_check: str = "refuse"            # TrainJob.fit_check: --force-fit "warn", --no-fit-check "off"


def job(session: Session, run: RunSpec, run_dir: Path, repeat: int = 1, sample: bool = True,
        scratch: Path | None = None) -> TrainJob:
    """`run` of the suite as a training-core job (scratch: checkpoints and caches, deleted after the run)."""
    suite = session.suite
    scratch = scratch or session.work / run_dir.name
    devices = (session.environment.get("gpu") or {}).get("devices") or []
    return TrainJob(framework=run.framework, config=run.config_path, overrides=suite.overrides(run),
                    model=session.model, output_dir=scratch / "output", cwd=session.work, record_dir=run_dir,
                    cache=scratch / "cache", gpus=suite.gpus(run),
                    timeout_s=session.timeout_s if session.timeout_s is not None else suite.timeout_s(run),
                    deadline=session.deadline, env=suite.env(run), base_env=session.base_env, sample=sample,
                    interval_s=suite.sample_interval_s, nvml=session.nvml, echo=session.echo,
                    gpu_name=devices[0]["name"] if devices else None,
                    identity={"suite": suite.name, "session": session.session_id, "run": run.name,
                              "repeat": repeat, "group": run.group}, fit_check=session.fit_check)


def skip_reason(suite: Suite, environment: dict[str, Any], run: RunSpec,
                unusable: dict[str, str] | None = None) -> str | None:
    """Why `run` cannot run on this machine (too few GPUs, a required module missing or unusable), or None."""
    reasons = []
    gpus = suite.gpus(run)
    gpu = environment.get("gpu") or {}
    have = gpu.get("device_count") or 0
    if gpus > have:
        reasons.append(f"needs {gpus} GPU(s); this machine has {have} visible to torch "
                       f"(torch {gpu.get('torch_version')}, CUDA build {gpu.get('cuda')})")
    missing = [name for name in suite.requires(run) if importlib.util.find_spec(name) is None]
    if missing:
        reasons.append(f"Python module(s) {missing} not importable in {sys.executable}'s environment")
    reasons += [f"{name} unusable here: {why}" for name, why in (unusable or {}).items()
                if name in suite.requires(run) and name not in missing]
    return "; ".join(reasons) or None


def execute(session: Session, run: RunSpec, repeat: int, run_dir: Path, sample: bool = True) -> RunResult:
    """Run one repeat of `run` through the training core; `run_dir/result.json` and the raw logs are written."""
    suite = session.suite
    run_dir.mkdir(parents=True, exist_ok=False)
    train_job = job(session, run, run_dir, repeat, sample)
    result = training.new_result(train_job)
    verdict = session.verdicts.get(run.group)
    result.comparable = verdict.comparable if verdict else None
    result.fairness_differences = verdict.differences if verdict else {}
    result.config, result.model, result.dataset = _rel(run.config_path), session.model_info, session.dataset_info
    result.environment = session.environment
    reason = skip_reason(suite, session.environment, run, session.unusable)
    if reason is None and session.deadline is not None and time.monotonic() >= session.deadline:
        reason = "not started: the session deadline (--deadline-s) had passed"
    if reason or not result.command:   # not result.command: the CLI is not installed (new_result says why)
        result.status_detail = "; ".join(filter(None, [reason, result.status_detail]))
        write_json(run_dir / "result.json", result.to_dict())
        return result
    result = training.run_training(train_job, result)
    if not session.keep_outputs:
        shutil.rmtree(train_job.output_dir.parent, ignore_errors=True)
    return result


# -- overhead --------------------------------------------------------------------------------------------------
def measure_overhead(session: Session, run: RunSpec, repeats: int, out: Path) -> dict[str, Any]:
    """The same command bare (no sampler, no parsing) and under the harness, alternately (B,H then H,B...)."""
    bare: list[Measured] = []
    harnessed: list[RunResult] = []
    for i in range(1, repeats + 1):
        for mode in (("bare", "harness") if i % 2 else ("harness", "bare")):
            print(f"  overhead {mode} r{i}: {run.name}", flush=True)
            if mode == "harness":
                harnessed.append(execute(session, run, i, out / f"harness-r{i}"))
                continue
            run_dir = out / f"bare-r{i}"
            scratch = session.work / f"overhead-bare-r{i}"
            bare_job = job(session, run, run_dir, i, sample=False, scratch=scratch)
            env, _ = training.environment(bare_job)
            bare.append(run_measured(training.new_result(bare_job).command, session.work, env,
                                     run_dir / "stdout.log", bare_job.timeout_s, sample=False))
            shutil.rmtree(scratch, ignore_errors=True)
    pairs = [(b, h) for b, h in zip(bare, harnessed) if b.exit_code == 0 and h.status == "ok"]
    if not pairs:
        return {"run": run.name, "repeats": repeats, "error": "a bare or harnessed run failed; see the run folders"}
    b_wall, h_wall = [b.wall_s for b, _ in pairs], [h.wall_s for _, h in pairs]
    pair_pct = [(h - b) / b * 100 for b, h in zip(b_wall, h_wall)]
    b_rss = [b.peak_rss_largest_process_mib for b, _ in pairs]
    h_rss = [h.memory.peak_rss_largest_process_mib for _, h in pairs]
    b_cpu = [(b.cpu_user_s or 0) + (b.cpu_system_s or 0) for b, _ in pairs]
    h_cpu = [(h.cpu_user_s or 0) + (h.cpu_system_s or 0) for _, h in pairs]
    sampler_cpu = [h.harness["sampler_cpu_s"] / h.wall_s for _, h in pairs]
    wall_pct = statistics.median(pair_pct)
    harness_rss = harness_rss_mib()
    child_delta = statistics.median(h - b for b, h in zip(b_rss, h_rss))
    return {
        "run": run.name, "repeats": repeats, "pairs_ok": len(pairs),
        "order": "pairs run back to back, alternating which goes first: (bare, harness), (harness, bare), ...",
        "bare_wall_s": b_wall, "harness_wall_s": h_wall, "pair_wall_overhead_pct": pair_pct,
        "wall_overhead_pct": wall_pct,
        "bare_wall_spread_pct": (max(b_wall) - min(b_wall)) / statistics.median(b_wall) * 100,
        "sampler_cpu_pct_of_wall": statistics.median(sampler_cpu) * 100,
        "parse_s": statistics.median(h.harness["parse_s"] for _, h in pairs),
        "bare_peak_rss_largest_process_mib": b_rss, "harness_peak_rss_largest_process_mib": h_rss,
        "child_peak_rss_delta_mib": child_delta,
        "bare_child_cpu_s": b_cpu, "harness_child_cpu_s": h_cpu,
        "child_cpu_overhead_pct": statistics.median((h - b) / b * 100 for b, h in zip(b_cpu, h_cpu)),
        "load_avg_1m_before_runs": [x for b, h in pairs for x in (b.load_avg_1m_before, h.load_avg_1m_before)],
        "harness_process_peak_rss_mib": harness_rss,
        "targets": OVERHEAD_TARGETS,
        "within_target_wall": wall_pct < OVERHEAD_TARGETS["wall_pct"],
        "within_target_memory": harness_rss < OVERHEAD_TARGETS["memory_mib"]
                                and abs(child_delta) < OVERHEAD_TARGETS["memory_mib"],
        "note": "wall_overhead_pct is the median over pairs of (harness - bare) / bare; each pair runs back to "
                "back, so slow drifts in machine load cancel, but run-to-run noise remains (bare_wall_spread_pct, "
                "load_avg_1m_before_runs); sampler_cpu_pct_of_wall is the sampler thread's own CPU time (noise-free); "
                "harness_process_peak_rss_mib is the whole harness process (interpreter included), a separate "
                "process from the training, which is why the child's peak RSS barely moves.",
    }


# -- a suite -------------------------------------------------------------------------------------------------
def new_session_dir(suite_dir: Path) -> tuple[str, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    session_id, n = stamp, 1
    while (suite_dir / session_id).exists():
        n += 1
        session_id = f"{stamp}-{n}"
    (suite_dir / session_id).mkdir(parents=True)
    return session_id, suite_dir / session_id


def select_runs(suite: Suite, only: list[str] | None) -> list[RunSpec]:
    if not only:
        return list(suite.runs)
    unknown = sorted(set(only) - {r.name for r in suite.runs})
    if unknown:
        raise SuiteError(f"--only: {unknown} not in {suite.path}. Runs: {[r.name for r in suite.runs]}")
    return [r for r in suite.runs if r.name in only]


def parse_skip_modules(items: list[str] | None) -> dict[str, str]:
    """`--skip-module NAME=REASON` (repeatable) -> {NAME: REASON}."""
    out = {}
    for item in items or []:
        name, sep, why = item.partition("=")
        if not name.strip():
            raise SuiteError(f"--skip-module {item!r}: expected MODULE=REASON, e.g. liger_kernel='no CUDA'")
        out[name.strip()] = why.strip() or "marked unusable (--skip-module)"
    return out


Stop = Interrupted   # SIGTERM (or SIGHUP) while a suite runs: handled like Ctrl-C (the run in flight is killed, recorded)


def run_suite(suite_path: Path, results_root: Path = DEFAULT_RESULTS, work_root: Path = DEFAULT_WORK,
              repeats: int | None = None, only: list[str] | None = None, overhead_repeats: int | None = None,
              keep_outputs: bool = False, echo: bool = False, sets: list[str] | None = None,
              timeout_s: float | None = None, deadline_s: float | None = None,
              skip_modules: dict[str, str] | None = None, fit_check: str = "refuse") -> tuple[Path, list[RunResult]]:
    """Run a suite; return (session results folder, results). Raises SuiteError before running an unfair pair.

    `deadline_s`: seconds from now after which no run starts; the run in flight is stopped and recorded as
    `deadline`. `timeout_s`: every run's timeout instead of the suite's. `skip_modules`: module -> reason, for
    modules that import but cannot work here (runs requiring them are recorded as skipped with the reason).
    `fit_check`: before each GPU run, refuse ("refuse") or only print ("warn") a predicted out-of-memory, or do not
    estimate ("off"); see sftpack.training.fit_check.
    """
    t0 = time.monotonic()
    deadline = t0 + deadline_s if deadline_s is not None else None
    suite = load_suite(suite_path, sets)
    runs = select_runs(suite, only)
    check_model(suite)
    suite.model.check_tokenizer()
    verdicts = {v.group: v for v in fairness.check_suite(suite)}
    unfair = [v for v in verdicts.values() if not v.comparable]
    if unfair and suite.fairness == "refuse":
        raise SuiteError(f"{suite.path}: refusing to run unfair comparison pair(s) (set `fairness: mark` to run "
                         "them flagged as not comparable):\n  " + "\n  ".join(v.describe() for v in unfair))
    results_root, work_root = Path(results_root).resolve(), Path(work_root).resolve()
    previous_handlers = install_stop_handlers()   # Ctrl-C, SIGTERM, SIGHUP: the run in flight is killed, recorded
    try:
        with ExitStack() as held:   # a second bench on the same results or work folder fails at once, naming us
            for folder in dict.fromkeys((results_root, work_root)):
                held.enter_context(hold(folder, "sftpack bench"))
            return _run_suite(suite, runs, verdicts, results_root, work_root, repeats, overhead_repeats,
                              keep_outputs, echo, timeout_s, deadline, skip_modules or {}, t0, fit_check)
    finally:
        restore_handlers(previous_handlers)


def check_model(suite: Suite) -> None:
    """`model.path` checked before any work (sftpack.paths' rule): a local-looking path must be a model folder; a
    hub id not in this machine's cache needs `build_shape` (a suite never downloads)."""
    spec = suite.model
    if not spec.path:
        return
    at = (spec._at or nowhere("model"))["path"]
    problem = model_path_problem(spec.path, "model.path", spec.bases)
    if problem is not None:
        at.fail(SuiteError, problem, spec.path, "a model folder (with config.json), or a hub id")
    if find_local_model(spec.path, spec.bases)[0] is None and spec.build_shape is None:
        at.fail(SuiteError, "not available offline (no folder, no HuggingFace/ModelScope cache entry) and no "
                "model.build_shape", spec.path, "a model folder, a cached hub id, or model.build_shape for random "
                "weights of its shape")


def _run_suite(suite: Suite, runs: list[RunSpec], verdicts: dict, results_root: Path, work_root: Path,
               repeats: int | None, overhead_repeats: int | None, keep_outputs: bool, echo: bool,
               timeout_s: float | None, deadline: float | None, skip_modules: dict[str, str],
               t0: float, fit_check: str = "refuse") -> tuple[Path, list[RunResult]]:
    plan = run_plan(suite, runs, repeats)
    session_id, session_dir = new_session_dir(results_root / suite.name)
    work = work_root / suite.name / session_id
    work.mkdir(parents=True)
    setup_env = fw.offline_env(work / "setup-cache")
    print(f"sftpack bench: suite {suite.name} -> {session_dir}\n  work folder (frameworks' cwd): {work}", flush=True)
    if deadline is not None:
        print(f"  deadline: {deadline - time.monotonic():.0f} s from now (no run starts after it)", flush=True)
    started = utc_now()
    with (session_dir / "setup.log").open("w", encoding="utf-8") as setup_log:
        environment = capture_environment(setup_env)
        runnable = [run.name for run, _ in plan if skip_reason(suite, environment, run, skip_modules) is None]
        n_overhead = (suite.overhead.repeats if suite.overhead and overhead_repeats is None
                      else (overhead_repeats or 0))
        overhead_run = suite.run(suite.overhead.run if suite.overhead else runs[0].name)
        overhead_skip = skip_reason(suite, environment, overhead_run, skip_modules) if n_overhead else None
        if runnable or (n_overhead and overhead_skip is None):
            model, model_info = prepare_model(suite, work_root, setup_env, setup_log)
            dataset_info = prepare_dataset(suite, work, setup_env, setup_log)
        else:  # every run will be recorded as skipped: building a 1.5B model for nothing helps no one
            model, model_info = Path("not-prepared"), {"requested": suite.model.path, "used": None,
                                                       "source": "not prepared: every run is skipped here"}
            dataset_info = {"family": suite.dataset.family, "source": suite.dataset.source, "prepared": False}
    nvml = None
    if (environment.get("gpu") or {}).get("device_count"):
        nvml, why = Nvml.open()
        if nvml is None:
            print(f"  NVML not used: {why}", flush=True)
    session = Session(suite, session_id, session_dir, work, model, model_info, dataset_info, environment,
                      verdicts, nvml=nvml, keep_outputs=keep_outputs, echo=echo, timeout_s=timeout_s,
                      deadline=deadline, unusable=skip_modules, fit_check=fit_check)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "suite": suite.name, "suite_file": _rel(suite.path),
        "suite_text": suite.path.read_text(encoding="utf-8"), "session": session_id, "started_at_utc": started,
        "finished_at_utc": None, "argv": sys.argv, "setup_s": time.monotonic() - t0, "model": model_info,
        "dataset": dataset_info, "environment": environment,
        "fairness": [v.as_dict() for v in verdicts.values()], "fairness_mode": suite.fairness,
        "runs": [], "overhead": None, "timeout_s_override": timeout_s,
        "deadline_s": round(deadline - t0, 3) if deadline is not None else None, "skip_modules": skip_modules,
        "fit_check": fit_check,
        "interrupted": None,
    }
    write_json(session_dir / "session.json", record)
    for verdict in verdicts.values():
        print(f"  fairness {verdict.describe()}", flush=True)
    cores = (environment.get("cpu") or {}).get("usable_cores") or os.cpu_count() or 1
    if os.getloadavg()[0] > 0.5 * cores:
        print(f"  WARNING: load average {os.getloadavg()[0]:.2f} on {cores} cores before the first run: other work "
              "is running; wall and CPU times will be inflated (each result records the load)", flush=True)

    results: list[RunResult] = []
    for index, (run, repeat) in enumerate(plan, 1):
        run_dir = session_dir / f"{run.name}-r{repeat}"
        try:
            result = execute(session, run, repeat, run_dir)
        except KeyboardInterrupt as stop:   # the run was killed and recorded as interrupted
            record["runs"].append({"run": run.name, "repeat": repeat, "dir": run_dir.name, "status": "interrupted"})
            record["interrupted"] = str(stop) or "SIGINT"
            record["finished_at_utc"] = utc_now()
            write_json(session_dir / "session.json", record)
            if nvml is not None:
                nvml.close()
            raise
        results.append(result)
        record["runs"].append({"run": run.name, "repeat": repeat, "dir": run_dir.name, "status": result.status})
        write_json(session_dir / "session.json", record)
        print(f"[{index}/{len(plan)}] {_one_line(result)}", flush=True)

    if n_overhead and deadline is not None and time.monotonic() >= deadline:
        record["overhead"] = {"run": overhead_run.name, "repeats": n_overhead,
                              "error": "not measured: the session deadline (--deadline-s) had passed"}
    elif n_overhead and overhead_skip:
        record["overhead"] = {"run": overhead_run.name, "repeats": n_overhead,
                              "error": f"not measured: {overhead_skip}"}
    elif n_overhead:
        print(f"measuring harness overhead on {overhead_run.name} ({n_overhead} bare + {n_overhead} harnessed "
              "runs)", flush=True)
        record["overhead"] = measure_overhead(session, overhead_run, n_overhead, session_dir / "overhead")
        print(f"  {describe_overhead(record['overhead'])}", flush=True)
    record["finished_at_utc"] = utc_now()
    record["harness_process_peak_rss_mib"] = harness_rss_mib()
    write_json(session_dir / "session.json", record)
    if nvml is not None:
        nvml.close()
    return session_dir, results


def run_plan(suite: Suite, runs: list[RunSpec], repeats: int | None) -> list[tuple[RunSpec, int]]:
    """(run, repeat) in the order they run: repeats interleaved (r1 of every run, then r2, ...)."""
    return [(run, r) for r in range(1, max((repeats or suite.repeats(run)) for run in runs) + 1)
            for run in runs if r <= (repeats or suite.repeats(run))]


def _one_line(result: RunResult) -> str:
    head = f"{result.run} r{result.repeat} ({result.framework}): {result.status}"
    if result.status == "skipped":
        return f"{head}: {result.status_detail}"
    if result.status != "ok":
        return f"{head}: {result.status_detail}; log tail in result.json"

    def fmt(value, spec):
        return format(value, spec) if value is not None else "?"

    m, t = result.memory, result.throughput
    return (f"{head}  wall {fmt(result.wall_s, '.1f')} s, train {fmt(result.train_runtime_s, '.2f')} s, "
            f"peak RSS {fmt(m.peak_rss_largest_process_mib, '.0f')} MiB, PSS tree {fmt(m.peak_pss_tree_mib, '.0f')} "
            f"MiB, {fmt(t.non_padding_tokens_per_s, ',.0f')} tokens/s, loss {fmt(result.final_loss, '.3f')}")


def describe_overhead(overhead: dict[str, Any]) -> str:
    if "error" in overhead:
        return f"overhead: {overhead['error']}"
    return (f"harness overhead on {overhead['run']}: wall {overhead['wall_overhead_pct']:+.2f} % (pairs: "
            f"{', '.join(f'{x:+.2f}' for x in overhead['pair_wall_overhead_pct'])} %) "
            f"(run-to-run spread bare {overhead['bare_wall_spread_pct']:.1f} %), sampler CPU "
            f"{overhead['sampler_cpu_pct_of_wall']:.2f} % of wall, parse {overhead['parse_s'] * 1000:.0f} ms, "
            f"harness process peak RSS {overhead['harness_process_peak_rss_mib']:.0f} MiB, child peak RSS delta "
            f"{overhead['child_peak_rss_delta_mib']:+.1f} MiB")
