"""The distributed suite's CPU twin: each strategy of benchmarks/suites/distributed.yaml (DDP, DeepSpeed ZeRO-2,
ZeRO-3, FSDP2; LLaMA-Factory and ms-swift) launched with 2 processes on a CPU (gloo), timed and measured; for each
strategy that cannot run on a CPU, the exact reason from its own log.

    .venv/bin/python benchmarks/distributed_cpu.py                          # all 10 runs, ~6 min on 2 cores
    .venv/bin/python benchmarks/distributed_cpu.py --only lf_ddp,swift_ddp --steps 2
    .venv/bin/python benchmarks/distributed_cpu.py --report benchmarks/results/distributed_cpu/<session>
    PYTHONPATH=/path/to/deepspeed/site .venv/bin/python benchmarks/distributed_cpu.py   # a DeepSpeed kept apart

Run from the repo root. Every run is the suite's own run (its config and overrides, DeepSpeed JSON or FSDP2 file,
`{repo}` filled) through the one training core (sftpack.training.run_training) with `NPROC_PER_NODE=2` on the CPU,
plus the CPU changes only: the framework's `tiny_cpu` overrides (fp32), per-device batch 2, accumulation 1,
`--steps` steps, one repeat. A `single` run per framework (one process, same overrides) is the baseline.

The model is the `twin` shape (this file: Qwen2 with 4 layers of width 512 and the tiny model's 3,000-token
vocabulary, 13.6M parameters, random weights, seed 0): large enough that full fine-tuning's fp32 weights, gradients
and AdamW states (16 bytes a parameter, 208 MiB per process unsharded) stand out of each process's ~700 MiB of
imports, so sharding shows in the largest process's peak RSS. Data: the first 64 rows of the shipped GSM8K sample,
prepared by sftpack's converter.

DeepSpeed (the `[deepspeed]` extra; an sdist built without its ops, `DS_BUILD_OPS=0`): on a CPU it picks its CPU
accelerator and gloo, and JIT-compiles one op (`deepspeed_shm_comm`, its shared-memory all-reduce) with ninja and
the system C++ compiler on first use. Before the ZeRO runs this script builds it once into the work folder's
TORCH_EXTENSIONS_DIR and records how long that took (or that it was cached), so that no run's time includes it.

Writes benchmarks/results/distributed_cpu/<UTC session>/result.json (schema_version 1; per run: status, exit,
reason, wall / train / CPU seconds, peak RSS of the largest process, peak PSS of the process tree, processes,
world size seen, final loss, load average) and report.md (rebuilt from result.json alone by `--report`); each
run's own record (result.json, stdout.log, the framework's logs) in `runs/<run>/` beside them. Checkpoints go
to `--work` (default runs/bench/distributed_cpu, git-ignored) and are deleted after each run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "benchmarks" / "suites" / "distributed.yaml"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "distributed_cpu"
DEFAULT_WORK = REPO / "runs" / "bench" / "distributed_cpu"
SCHEMA_VERSION = 1
PROCESSES = 2
ROWS = 64
TWIN = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2)
STRATEGY = {"single": "1 process (baseline)", "ddp": "DDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3",
            "fsdp": "FSDP2"}
_ERROR = re.compile(r"^\s*(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b:?.*)$")


# -- inputs ------------------------------------------------------------------------------------------------------
def build_twin(folder: Path) -> Path:
    """The twin model: the tiny model's tokenizer, a wider and deeper random Qwen2 (TWIN), seed 0."""
    import torch
    from sftpack import tiny_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = folder / "twin"
    if (model / "model.safetensors").is_file():
        return model
    tiny = tiny_model.build(folder / "tiny", seed=0)
    config = Qwen2Config.from_pretrained(tiny)
    for key, value in TWIN.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    config.max_window_layers = config.num_hidden_layers
    torch.manual_seed(0)
    staging = folder / "twin.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tiny, staging)
    Qwen2ForCausalLM(config).save_pretrained(staging)
    staging.rename(model)
    return model


def prepare_data(work: Path) -> Path:
    """work/data/dataset_info/ with the first ROWS rows of the shipped GSM8K sample's train split."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS
    from sftpack.samples import sample_dir

    cwd = work / "data"
    if (cwd / "dataset_info" / "gsm8k_train.jsonl").is_file():
        return cwd
    lines = (sample_dir("gsm8k") / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:ROWS]
    source = cwd / "source" / "gsm8k-train.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(lines), encoding="utf-8")
    prepare(CONVERTERS["gsm8k"], str(source), cwd / "dataset_info", splits=("train",), progress=False)
    return cwd


def deepspeed_state(env: dict[str, str]) -> dict:
    """Whether deepspeed imports in the runs' environment; if so, its shm op built once (timed) before any run."""
    probe = ("import json, deepspeed\nfrom deepspeed.accelerator import get_accelerator\na = get_accelerator()\n"
             "print(json.dumps({'version': deepspeed.__version__, 'path': deepspeed.__path__[0], "
             "'accelerator': a.device_name(), 'backend': a.communication_backend_name()}))")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"importable": False, "reason": f"deepspeed does not import here ({last}); install the extra: "
                                               "pip install 'sftpack[deepspeed]' (see benchmarks/README.md)"}
    state = {"importable": True, **json.loads(proc.stdout.strip().splitlines()[-1])}
    ext = Path(env["TORCH_EXTENSIONS_DIR"])
    cached = any(ext.glob("**/deepspeed_shm_comm*.so"))
    build = ("from deepspeed.accelerator import get_accelerator\n"
             "get_accelerator().create_op_builder('ShareMemCommBuilder').load()")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=1800)
    state["shm_op"] = {"cached_before": cached, "seconds": round(time.monotonic() - started, 1),
                       "ok": proc.returncode == 0, "load_avg_1m_after": round(os.getloadavg()[0], 2),
                       "error": None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return state


# -- one run ------------------------------------------------------------------------------------------------------
def reason(stdout: str) -> str | None:
    """The decisive error line of a failed run's log: the last exception line, else None."""
    lines = [m.group(1).strip() for m in map(_ERROR.match, stdout.splitlines()) if m]
    lines = [line for line in lines if not line.startswith(("torch.distributed.elastic.multiprocessing.errors",
                                                             "subprocess.CalledProcessError"))]
    return lines[-1][:600] if lines else None


def world_size(output_dir: Path, steps: int, batch: int) -> float | None:
    """World size from the Trainer's epoch counter: epoch x rows / (steps x per-device batch)."""
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json")) or [output_dir / "trainer_state.json"]
    if not states[-1].is_file():
        return None
    state = json.loads(states[-1].read_text(encoding="utf-8"))
    return round(state["epoch"] * ROWS / (state["global_step"] * batch), 3) if state.get("global_step") else None


def run_one(name: str, framework: str, config: Path, overrides: dict, processes: int, args, model: Path,
            cwd: Path, session_dir: Path, env: dict[str, str], skip: str | None) -> dict:
    from sftpack import frameworks as fw
    from sftpack.training import TrainJob, run_training

    record = session_dir / "runs" / name
    output = args.work / "outputs" / name
    shutil.rmtree(output, ignore_errors=True)
    strategy = name.split("_", 1)[1]
    row = {"run": name, "framework": framework, "strategy": strategy, "processes": processes,
           "overrides": {k: str(v) for k, v in overrides.items()}}
    if skip:
        row.update(status="skipped", reason=skip)
        return row
    overrides = {**fw.adapter(framework).tiny_cpu, **overrides, "max_steps": args.steps, "save_steps": args.steps,
                 "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1, "logging_steps": 1}
    job = TrainJob(framework=framework, config=config, overrides=overrides, model=model, output_dir=output,
                   cwd=cwd, record_dir=record, cache=args.work / "cache" / name, gpus=0, timeout_s=args.timeout_s,
                   env={"NPROC_PER_NODE": str(processes)} if processes > 1 else {}, base_env=env, interval_s=0.5)
    print(f"-- {name}: {framework}, {STRATEGY[strategy]}, {processes} process(es)", flush=True)
    result = run_training(job)
    stdout = (record / "stdout.log").read_text(encoding="utf-8", errors="replace")
    memory = result.memory
    row.update(status=result.status, exit_code=result.exit_code,
               reason=None if result.status == "ok" else (reason(stdout) or result.status_detail),
               wall_s=result.wall_s, train_runtime_s=result.train_runtime_s,
               cpu_s=(result.cpu_user_s or 0) + (result.cpu_system_s or 0),
               peak_rss_largest_process_mib=memory.peak_rss_largest_process_mib,
               peak_pss_tree_mib=memory.peak_pss_tree_mib, max_tree_processes=memory.max_tree_processes,
               world_size=world_size(output, args.steps, args.batch) if result.status == "ok" else None,
               steps=result.throughput.steps, final_loss=result.final_loss,
               load_avg_1m_before=result.load_avg_1m_before, load_avg_1m_after=result.load_avg_1m_after,
               overrides={k: str(v) for k, v in overrides.items()})
    print(f"   {row['status']}: wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, peak RSS "
          f"{row['peak_rss_largest_process_mib'] or 0:.0f} MiB" + (f"; {row['reason']}" if row["reason"] else ""),
          flush=True)
    if not args.keep_outputs:
        shutil.rmtree(output, ignore_errors=True)
    return row


# -- the report -------------------------------------------------------------------------------------------------
def _num(value, digits=1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def report(data: dict) -> str:
    env, ds = data["environment"], data["deepspeed"]
    loads = [r[k] for r in data["runs"] for k in ("load_avg_1m_before", "load_avg_1m_after") if r.get(k) is not None]
    lines = [
        f"Session `{data['session']}`, git {env['git']}; {env['cpu']} ({env['cores']} cores); Python "
        f"{env['python']}; torch {env['torch']}, transformers {env['transformers']}, llamafactory "
        f"{env['llamafactory']}, ms-swift {env['ms-swift']}, deepspeed {ds.get('version') or 'not importable'}.",
        f"Model: the `twin` shape ({data['model']['params']:,} parameters, fp32, random weights); {ROWS} GSM8K rows; "
        f"{data['steps']} steps of per-device batch {data['batch']} (accumulation 1), full fine-tuning, each "
        f"strategy launched with NPROC_PER_NODE={PROCESSES} on the CPU (gloo). Machine load (1-min average) "
        f"around the runs: {min(loads):.1f}-{max(loads):.1f} on {env['cores']} cores." if loads else "",
        "",
        "| run | strategy | processes | status | wall s | train s | CPU s | peak RSS largest proc MiB "
        "| peak PSS tree MiB | world size seen | final loss | exact reason (when not ok) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["runs"]:
        why = (r.get("reason") or "").replace("|", "\\|")
        lines.append(f"| {r['run']} | {STRATEGY[r['strategy']]} | {r['processes']} | {r['status']} | "
                     f"{_num(r.get('wall_s'))} | {_num(r.get('train_runtime_s'), 2)} | {_num(r.get('cpu_s'))} | "
                     f"{_num(r.get('peak_rss_largest_process_mib'), 0)} | {_num(r.get('peak_pss_tree_mib'), 0)} | "
                     f"{_num(r.get('world_size'), 0)} | {_num(r.get('final_loss'), 4)} | {why} |")
    op = ds.get("shm_op")
    lines += ["", "- *peak RSS largest proc*: the kernel's high-water mark of the largest process of the run (one "
              "rank); *peak PSS tree*: sampled PSS summed over the launcher, torchrun and every rank; *world size "
              "seen*: the Trainer's epoch after the run x rows / (steps x per-device batch) — 2 means each rank "
              "read half the data.",
              "- DeepSpeed: " + (f"{ds['version']} from `{ds['path']}`, accelerator `{ds['accelerator']}`, "
                                 f"backend `{ds['backend']}`; its `deepspeed_shm_comm` op "
                                 + ("was already built (cached)" if op and op["cached_before"] else
                                    f"JIT-compiled once before the runs in {op['seconds']:.0f} s (load "
                                    f"{op['load_avg_1m_after']:.1f})" if op and op["ok"] else
                                    f"failed to build: {op and op['error']}") + "; not included in any run's time."
                                 if ds.get("importable") else ds["reason"])]
    return "\n".join(line for line in lines if line is not None) + "\n"


def environment() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"python": platform.python_version(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "git": (sha.stdout.strip() or "unknown") + (" (dirty)" if dirty else ""),
            **{name: ver(name) for name in ("torch", "transformers", "llamafactory", "ms-swift", "accelerate")}}


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated run names (lf_single, lf_ddp, swift_zero3, ...)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="per-device batch")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument("--report", type=Path, help="rebuild report.md of a session folder from its result.json")
    args = parser.parse_args(argv)
    if args.report:
        data = json.loads((args.report / "result.json").read_text(encoding="utf-8"))
        (args.report / "report.md").write_text(report(data), encoding="utf-8")
        print(report(data))
        return 0

    sys.path.insert(0, str(REPO / "plugins"))
    from sftpack import frameworks as fw
    from sftpack.bench.suite import load_suite

    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    session = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    session_dir = args.out / session
    session_dir.mkdir(parents=True)
    model = build_twin(args.work / "models")
    cwd = prepare_data(args.work)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as handle:
        params = sum(_prod(handle.get_slice(key).get_shape()) for key in handle.keys())

    env = fw.offline_env(args.work / "cache" / "shared")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(args.work / "torch_extensions"))
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS") or "1"   # 2 ranks on 2 cores: one thread each
    suite = load_suite(SUITE)
    plan: list[tuple[str, str, Path, dict, int, list[str]]] = []
    for name, spec in fw.ADAPTERS.items():   # the baseline: the suite's DDP run of each framework, 1 process
        ddp = next(r for r in suite.runs if r.framework == name and r.group == "ddp")
        plan.append((f"{spec.short.lower()}_single", name, ddp.config_path, suite.overrides(ddp), 1, []))
    for run in suite.runs:
        plan.append((run.name, run.framework, run.config_path, suite.overrides(run), PROCESSES, suite.requires(run)))
    wanted = set(args.only.split(",")) if args.only else None
    plan = [p for p in plan if wanted is None or p[0] in wanted]
    ds = deepspeed_state(env) if any("deepspeed" in p[5] for p in plan) else {"importable": None,
                                                                               "reason": "not asked for"}
    rows, machine = [], environment()
    for name, framework, cfg, overrides, processes, requires in plan:
        missing = [m for m in requires if importlib.util.find_spec(m) is None and not (m == "deepspeed"
                                                                                      and ds.get("importable"))]
        skip = f"needs {', '.join(missing)}: {ds['reason']}" if missing and "deepspeed" in missing else (
            f"needs {', '.join(missing)}" if missing else None)
        rows.append(run_one(name, framework, cfg, overrides, processes, args, model, cwd, session_dir, env, skip))
        data = {"schema_version": SCHEMA_VERSION, "session": session, "suite": str(SUITE.relative_to(REPO)),
                "environment": machine, "deepspeed": ds, "steps": args.steps, "batch": args.batch,
                "processes": PROCESSES, "rows": ROWS,
                "model": {"shape": "twin", **TWIN, "vocab_size": config["vocab_size"], "params": params},
                "runs": rows}
        (session_dir / "result.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (session_dir / "report.md").write_text(report(data), encoding="utf-8")
    print(report(data))
    return 0 if all(r["status"] in ("ok", "failed", "skipped") for r in rows) else 1


def _prod(shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


if __name__ == "__main__":
    sys.exit(main())
