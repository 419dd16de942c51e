"""Run lm-eval once per model (and per shot count) and write the comparison report: the core of `sftpack eval`.

One lm-eval run per model (and shot count), each repeatable by hand: eval.json has each run's `command` (also the
first line of its log) and the plain `lm_eval_command` (the same run through the `lm_eval` script). When every task
is in the task folders a run is lm-eval's own CLI with only those folders indexed (sftpack.evaluate.lm_eval_local:
~6 s less per start), and on the hf backend on one device (`shares_processes`) the runs that would wait for each
other share one process (`lm_eval_local --runs`: torch, transformers, peft and lm-eval imported once, ~5 s of CPU
less per run after the first; each run's model released before the next loads; the same results as a process per
run, tests/test_evaluate.py checks it). Otherwise each run has its own process. Outputs under `out/`:

    eval.json                 the report (schema_version, settings, environment, models, rows)
    eval.md                   the Markdown table rendered from eval.json
    lm_eval/<label>/<shots>/  lm-eval's results_*.json and samples_*.jsonl
    logs/<label>-<shots>.log  each lm-eval run's full output
    lm_eval/process-N.json    runs sharing process N: its runs (.json), its own output (.log), each run's exit
                              status and wall time as it finishes (.status.json)
    include_path/             with added task folders (--include_path): the shipped tasks and each added folder,
                              copied into the one folder lm-eval's --include_path reads

`parallel` > 1 runs that many lm-eval processes at once (CPU: give each OMP_NUM_THREADS = cores / parallel in
`env`), the runs dealt out among them; their outputs are the same files, and eval.json lists the runs in the same
order.

Multi-GPU: `num_processes > 1` runs `accelerate launch --num_processes N -m lm_eval ...` (hf backend, one model
copy per GPU); with vLLM, `data_parallel_size` / `tensor_parallel_size` go into its model_args.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sftpack import frameworks as fw
from sftpack.artifacts import write_json, write_text
from sftpack.bench.monitor import concurrently
from sftpack.errors import SftpackError
from sftpack.evaluate import dataset_task
from sftpack.evaluate import results as res
from sftpack.evaluate.models import EvalModel, plan, vllm_max_lora_rank
from sftpack.locks import hold

DEFAULT_TASKS = ("gsm8k-local", "gsm8k-local-chat")
CMMLU_KEY = "cmmlu_dir"  # the --metadata key eval_tasks/cmmlu-local/csv_loader.py reads
# Retention task families -> (the --metadata key their loader reads, what it names): eval_tasks/*-local/
RETENTION_DATA = {"cmmlu-local": (CMMLU_KEY, "folder"), "mmlu-local": ("mmlu_dir", "folder"),
                  "squad-local": ("squad_file", "file")}


def retention_family(task: str) -> str | None:
    """The retention family of a task or group name (`cmmlu-local-agronomy` -> `cmmlu-local`), else None."""
    return next((family for family in sorted(RETENTION_DATA, key=len, reverse=True)
                 if task == family or task.startswith(family + "-")), None)


@dataclass
class Settings:
    """Everything about a run except the models; stored in eval.json."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    datasets: list[str] = field(default_factory=list)   # dataset_info entries: tasks generated into OUT/tasks/
    train_config: str | None = None           # their prompt's training config (default: the shipped LF LoRA one)
    dataset_dir: str | None = None            # their dataset_info.json's folder (default: the config's dataset_dir)
    num_fewshot: list[int] | None = None      # None: each task's own; else one lm-eval run per value
    limit: int | float | None = None
    backend: str = "hf"
    device: str | None = None                 # hf: cpu, cuda, cuda:1 ... (lm-eval's default: cuda if available)
    batch_size: str = "1"
    dtype: str | None = None                  # hf / vllm model dtype (auto, float32, bfloat16, ...)
    gen_kwargs: str | None = None             # lm-eval --gen_kwargs, e.g. "max_gen_toks=64"
    include_path: str = str(fw.EVAL_TASKS)    # the task folder (the shipped eval_tasks/, or a pipeline's copy)
    add_include: list[str] = field(default_factory=list)   # more task folders (lm-eval's --include_path), added:
    #                                         a task named in one of them wins over include_path's (lm-eval's rule)
    workdir: str = "."                        # lm-eval's current directory: task data_files resolve against it
    metadata: dict[str, Any] = field(default_factory=dict)
    num_processes: int = 1                    # hf: >1 = accelerate launch data parallel
    data_parallel_size: int = 1               # vllm
    tensor_parallel_size: int = 1             # vllm
    base_url: str | None = None               # local-completions: http://HOST:PORT/v1/completions
    tokenizer: str | None = None              # local-completions: tokenizer of the served model
    num_concurrent: int = 1                   # local-completions
    extra_model_args: str | None = None       # appended to --model_args, e.g. "parallelize=True,max_length=4096"
    extra_args: list[str] = field(default_factory=list)
    parallel: int = 1                         # lm-eval processes at once (the runs, one per model and shot count,
    #                                         dealt out among them: runner.shares_processes; else one run each)
    builtin_tasks: list[str] = field(default_factory=list)   # of `tasks`, lm-eval's built-in ones (set by run_eval):
    #                                         none = lm-eval runs with only the task folders indexed (lm_eval_local)

    def __post_init__(self):
        if self.num_processes > 1 and self.backend != "hf":
            raise SftpackError("--num-processes (accelerate launch) is for the hf backend; with vllm use "
                               "--data-parallel-size")
        if (self.data_parallel_size > 1 or self.tensor_parallel_size > 1) and self.backend != "vllm":
            raise SftpackError("--data-parallel-size / --tensor-parallel-size are vLLM settings: add --backend vllm")
        if self.backend == "local-completions" and not self.base_url:
            raise SftpackError("--backend local-completions needs --base-url, "
                               "e.g. http://localhost:8000/v1/completions")


def model_args(model: EvalModel, settings: Settings) -> str:
    """lm-eval `--model_args` for one model on the chosen backend."""
    args: dict[str, Any] = {}
    if settings.backend == "hf":
        args["pretrained"] = model.base if model.kind == "adapter" else model.path
        if model.kind == "adapter":
            args["peft"] = model.path
        if settings.dtype:
            args["dtype"] = settings.dtype
    elif settings.backend == "vllm":
        args["pretrained"] = model.base if model.kind == "adapter" else model.path
        if model.kind == "adapter":
            args["lora_local_path"] = model.path
            args["max_lora_rank"] = vllm_max_lora_rank(model.lora_rank or 8)
        if settings.dtype:
            args["dtype"] = settings.dtype
        if settings.data_parallel_size > 1:
            args["data_parallel_size"] = settings.data_parallel_size
        if settings.tensor_parallel_size > 1:
            args["tensor_parallel_size"] = settings.tensor_parallel_size
    else:  # local-completions: a model the server at base_url serves under this name
        args.update(model=model.path, base_url=settings.base_url, num_concurrent=settings.num_concurrent)
        args["tokenizer"] = settings.tokenizer or model.path
        args["tokenizer_backend"] = "huggingface"
    for key, value in args.items():
        if "," in str(value):
            raise SftpackError(f"{key}={value}: lm-eval splits --model_args on ',', so a value cannot contain one")
    text = ",".join(f"{k}={v}" for k, v in args.items())
    return f"{text},{settings.extra_model_args}" if settings.extra_model_args else text


def indexes_only_task_folders(settings: Settings) -> bool:
    """lm-eval runs as `python -m sftpack.evaluate.lm_eval_local` (every task in the task folders, and lm-eval is
    this Python's)."""
    return not settings.builtin_tasks and (Path(sys.executable).parent / "lm_eval").exists()


def shares_processes(settings: Settings) -> bool:
    """Runs that would wait for each other share one lm-eval process (lm_eval_local --runs): hf on one device,
    lm_eval_local. vLLM (its engine is not reliably released in-process) and accelerate keep one process per run."""
    return settings.backend == "hf" and settings.num_processes == 1 and indexes_only_task_folders(settings)


def lm_eval_command(model: EvalModel, settings: Settings, output_path: Path, num_fewshot: int | None,
                    plain: bool = False) -> list[str]:
    """The full lm-eval command line of one run: `python -m sftpack.evaluate.lm_eval_local ARGS` (lm-eval's own CLI
    without indexing its built-in tasks) when every task is in the task folders and lm-eval is this Python's,
    else -- or with `plain` -- `lm_eval ARGS`; prefixed by `accelerate launch` for multi-GPU hf."""
    local = not plain and indexes_only_task_folders(settings)
    if settings.num_processes > 1:
        cmd = [fw.executable("accelerate"), "launch", "--num_processes", str(settings.num_processes), "-m",
               "sftpack.evaluate.lm_eval_local" if local else "lm_eval"]
    elif local:
        cmd = [sys.executable, "-m", "sftpack.evaluate.lm_eval_local"]
    else:
        cmd = [fw.executable("lm_eval")]
    cmd += ["--model", settings.backend, "--model_args", model_args(model, settings),
            "--tasks", ",".join(settings.tasks), "--include_path", str(Path(settings.include_path).resolve()),
            "--output_path", str(output_path), "--log_samples", "--batch_size", str(settings.batch_size)]
    if settings.device and settings.backend == "hf":
        cmd += ["--device", settings.device]
    if settings.limit is not None:
        cmd += ["--limit", str(settings.limit)]
    if num_fewshot is not None:
        cmd += ["--num_fewshot", str(num_fewshot)]
    if settings.gen_kwargs:
        cmd += ["--gen_kwargs", settings.gen_kwargs]
    if settings.metadata:
        cmd += ["--metadata", json.dumps(settings.metadata, ensure_ascii=False)]
    return cmd + list(settings.extra_args)


def environment() -> dict[str, Any]:
    """Library versions, machine and the sftpack git commit, stored beside every report."""
    from sftpack.provenance import git_sha, versions

    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
            gpu = [line.strip() for line in query.stdout.splitlines() if line.strip()] or None
        except (OSError, subprocess.SubprocessError):
            gpu = None
    return {
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu,
        **{name.replace("-", "_"): version for name, version in
           versions("lm-eval", "torch", "transformers", "peft", "accelerate", "vllm", "datasets").items()},
    }


def run_eval(model: str, tuned: list[str], out: Path, settings: Settings, include_base: bool = True,
             skip_base_check: bool = False, env: Mapping[str, str] | None = None, echo: bool = True) -> dict[str, Any]:
    """Evaluate the base model and each tuned model; write eval.json + eval.md under `out`; return the report.

    Everything is checked before the first lm-eval run; `out` is then locked (sftpack.locks): a second eval into the
    same folder fails at once, naming this one. Each lm-eval runs in its own process group, ended on every way out
    (sftpack.bench.monitor)."""
    import os

    from sftpack.evaluate.tasks import check_tasks

    started = time.monotonic()
    out = Path(out).resolve()
    workdir = Path(settings.workdir).resolve()
    if not workdir.is_dir():
        raise SftpackError(f"--workdir {workdir}: no such folder")
    settings.workdir = str(workdir)
    settings.include_path = str(Path(settings.include_path).resolve())
    settings.add_include = [str(Path(folder).expanduser().resolve()) for folder in settings.add_include]
    env = dict(os.environ if env is None else env)
    models = plan(model, tuned, settings.backend, include_base=include_base, skip_base_check=skip_base_check,
                  environ=env)
    folders = [Path(settings.include_path), *map(Path, settings.add_include)]
    settings.builtin_tasks = []
    leaves = check_tasks(settings.tasks, folders, workdir, settings.metadata,
                         found_builtin=settings.builtin_tasks) if settings.tasks else {}
    if settings.datasets:
        resolve_dataset_settings(settings, workdir)
        dataset_task.check(settings.datasets, Path(settings.dataset_dir), Path(settings.train_config))
    if not settings.tasks and not settings.datasets:
        raise SftpackError("nothing to evaluate: give --tasks and/or --dataset")
    with hold(out, "sftpack eval"):
        generated = []
        if settings.datasets:  # the tasks are written beside the run's outputs, then added like an --include_path
            generated = dataset_task.generate(settings.datasets, Path(settings.dataset_dir),
                                              Path(settings.train_config), settings.tokenizer or model,
                                              fresh_folder(out / "tasks"))
            names = [t.task for t in generated]
            settings.add_include.append(str(out / "tasks"))
            folders.append(out / "tasks")
            leaves.update(check_tasks(names, [out / "tasks"], workdir, settings.metadata))
            settings.tasks = [*settings.tasks, *names]
        if settings.add_include:   # lm-eval's CLI reads one --include_path: one folder holding them all
            settings.include_path = str(combine_task_folders(folders, out / "include_path"))
        per_model, model_records = _run_models(models, out, settings, env, echo)
        base_label = models[0].label if include_base else None
        report = {
            "schema_version": res.SCHEMA_VERSION,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": asdict(settings),
            "task_leaves": leaves,
            "generated_tasks": dataset_task.records(generated),
            "environment": environment(),
            "base_label": base_label,
            "models": model_records,
            "rows": res.combine(per_model, base_label),
            "wall_s": round(time.monotonic() - started, 2),
        }
        write_json(out / "eval.json", report, ensure_ascii=False)
        write_text(out / "eval.md", res.render_markdown(report))
    return report


def resolve_dataset_settings(settings: Settings, workdir: Path) -> None:
    """--train-config (default: the shipped LF LoRA config) and --dataset-dir (default: the config's dataset_dir,
    else dataset_info/) as absolute paths, against `workdir`."""
    from sftpack.parity import load_yaml

    config = Path(settings.train_config).expanduser() if settings.train_config else fw.LF_LORA_CONFIG
    if not config.is_absolute():
        config = (Path.cwd() / config) if (Path.cwd() / config).exists() else workdir / config
    settings.train_config = str(config.resolve())
    if settings.dataset_dir:
        folder = Path(settings.dataset_dir).expanduser()
    else:
        folder = Path(str(load_yaml(config).get("dataset_dir") or "dataset_info")) if config.is_file() \
            else Path("dataset_info")
    settings.dataset_dir = str(folder if folder.is_absolute() else (workdir / folder).resolve())


def fresh_folder(folder: Path) -> Path:
    """`folder` emptied: what a previous run generated there is replaced, never mixed with this run's."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def combine_task_folders(folders: list[Path], dest: Path) -> Path:
    """Copy task `folders` into `dest` (replaced), one sub-folder each, so that lm-eval's single --include_path
    indexes them as lm-eval's TaskManager does a list: a later folder's task wins over an earlier one of the same
    name. (In one root lm-eval keeps the first of two same-named tasks in path order, so the later a folder, the
    earlier its sub-folder sorts: 00-<last>, 01-<...>, ...)"""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for rank, folder in enumerate(reversed(folders)):
        shutil.copytree(folder, dest / f"{rank:02d}-{folder.name}", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _run_models(models: list[EvalModel], out: Path, settings: Settings, env: dict[str, str],
                echo: bool) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """One lm-eval run per model and shot count, `settings.parallel` processes at a time: ({label: metric rows}, the
    models' records), in the models' order. With `shares_processes`, the runs are dealt to `parallel` processes and
    each process runs its share one after another (lm_eval_local --runs: imports paid once per process); else one
    process per run."""
    shots: list[int | None] = list(settings.num_fewshot) if settings.num_fewshot else [None]
    jobs = [(m, n) for m in models for n in shots]
    parallel = max(1, min(settings.parallel, len(jobs)))
    indices = list(range(len(jobs)))
    groups = [indices[i::parallel] for i in range(parallel)] if shares_processes(settings) else [[i] for i in indices]
    show = echo and parallel == 1       # lm-eval's output on the terminal (else in each run's log only)
    for stale in (out / "lm_eval").glob("process-*"):   # a previous eval's shared processes
        stale.unlink()

    def prepared(m: EvalModel, n: int | None, announce: bool = True) -> tuple[str, Path, list[str], Path, str]:
        """The run's shot tag, output folder, command, log and header line (printed now with `announce`)."""
        tag = "default-shots" if n is None else f"{n}-shot"
        output_path = out / "lm_eval" / m.label / tag
        if output_path.exists():
            shutil.rmtree(output_path)  # never read a previous run's results by mistake
        log = out / "logs" / f"{m.label}-{tag}.log"
        header = (f"\n=== sftpack eval: {m.label} ({m.kind}), {tag}: {' '.join(settings.tasks)}"
                  + ("" if show else f" -> {log}")) if echo or parallel > 1 else ""
        if header and announce:
            print(header, flush=True)
        return tag, output_path, lm_eval_command(m, settings, output_path, n), log, header

    def record(m: EvalModel, n: int | None, output_path: Path, cmd: list[str], wall: float,
               process: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = res.read_run(output_path)
        return ({"num_fewshot": n, "command": cmd,
                 "lm_eval_command": lm_eval_command(m, settings, output_path, n, plain=True),
                 "results_file": str(run.results_file),
                 "samples_files": {k: str(v) for k, v in sorted(run.samples_files.items())},
                 "wall_s": round(wall, 2), "parallel": parallel, **({"process": process} if process else {}),
                 "lm_eval_total_evaluation_time_s": res.number(
                     float(run.results.get("total_evaluation_time_seconds", "nan")))},
                res.metric_rows(run))

    def one_process(number: int, indices: list[int]) -> list[Any]:
        group = [jobs[index] for index in indices]
        if len(group) == 1:
            m, n = group[0]
            tag, output_path, cmd, log, _ = prepared(m, n)
            run_started = time.monotonic()
            fw.run_logged(cmd, Path(settings.workdir), env, log, echo=show)
            wall = time.monotonic() - run_started
            if parallel > 1:
                print(f"=== sftpack eval: {m.label}, {tag} done in {wall:.1f} s", flush=True)
            return [record(m, n, output_path, cmd, wall, None)]
        runs = [prepared(m, n, announce=not show) for m, n in group]   # shown: the process prints each header
        base = out / "lm_eval" / f"process-{number}"
        spec = {"runs": [{"args": cmd[3:], "log": str(log), "command": shlex.join(cmd),
                          "header": header if show else ""} for _, _, cmd, log, header in runs],
                "echo": show, "status": f"{base}.status.json"}
        write_json(base.with_suffix(".json"), spec)   # (a previous eval's status file went with the stale ones)
        cmd = [sys.executable, "-m", "sftpack.evaluate.lm_eval_local", "--runs", str(base.with_suffix(".json"))]
        process = {"command": cmd, "runs": len(group), "log": f"{base}.log"}
        try:
            fw.run_logged(cmd, Path(settings.workdir), env, Path(process["log"]), echo=show)
        except SftpackError as err:   # name the run that failed and show its log
            status = json.loads(Path(spec["status"]).read_text()) if Path(spec["status"]).is_file() else []
            failed = min(len(status) if not status or status[-1]["exit"] == 0 else len(status) - 1, len(runs) - 1)
            (m, _), (tag, _, _, log, _) = group[failed], runs[failed]
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:]) \
                if log.is_file() else ""
            how = (f"exited {status[failed]['exit']}" if failed < len(status)
                   else f"did not finish ({str(err).splitlines()[0]})")   # the process itself was ended
            raise SftpackError(f"lm-eval's run of {m.label}, {tag} (run {failed + 1} of {len(runs)} in one process) "
                               f"{how}; log: {log}\n{tail}") from None
        status = json.loads(Path(spec["status"]).read_text())
        if parallel > 1:
            print(f"=== sftpack eval: {', '.join(m.label for m, _ in group)} done in "
                  f"{sum(s['wall_s'] for s in status):.1f} s (one process)", flush=True)
        return [record(m, n, output_path, cmd, done["wall_s"], process)
                for (m, n), (_, output_path, cmd, _, _), done in zip(group, runs, status)]

    if parallel == 1:
        finished = [one_process(i + 1, group) for i, group in enumerate(groups)]
    else:
        finished = concurrently([lambda i=i, g=g: one_process(i + 1, g) for i, g in enumerate(groups)], parallel,
                                "lm_eval")
        failed = next((result for result in finished if isinstance(result, Exception)), None)
        if failed is not None:
            raise failed
    by_job = {index: result for indices, results in zip(groups, finished) for index, result in zip(indices, results)}
    done = [by_job[index] for index in range(len(jobs))]
    per_model: dict[str, list[dict[str, Any]]] = {}
    model_records = []
    for m in models:
        mine = [result for (job_model, _), result in zip(jobs, done) if job_model is m]
        per_model[m.label] = [row for _, rows in mine for row in rows]
        model_records.append({**asdict(m), "runs": [run for run, _ in mine]})
    return per_model, model_records


_PERCENT = re.compile(rb"Running \w+ requests:\s+(\d+)%")
_TABLE = re.compile(rb"^\|\s*(Tasks|Groups)\s*\|Version\|", re.MULTILINE)


def log_progress(log: Path) -> float:
    """How far the lm-eval run writing `log` is, 0..1, from lm-eval's own request bar (1.0 once it has written its
    results); 0.0 before the bar shows (model loading, task building)."""
    try:
        with Path(log).open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            tail = handle.read()
    except OSError:
        return 0.0
    if _TABLE.search(tail):    # lm-eval's results table: the run has finished
        return 1.0
    found = _PERCENT.findall(tail)
    return int(found[-1]) / 100 if found else 0.0
