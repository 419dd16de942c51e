"""Run a sweep: the base's model and data once, then cell by cell one training (sftpack.training, as bench and
pipeline) and one evaluation (sftpack eval's run_eval), each cell keyed by its resolved spec.

Folders under `<out>/` (locked while a sweep works in it: sftpack.locks):
    base/                     the base pipeline's `model` and `data` stages (sftpack.pipeline.stages: keyed, reused)
    data/<vars>/              a recipe's output per distinct recipe variables (dataset_info/ + done.json)
    cells/<cell>/train_<fw>/  the training core's result.json, stdout.log, the framework's logs, output/ (the model)
    cells/<cell>/eval/        sftpack eval's eval.json, eval.md, lm_eval/ (samples), logs/
    cells/<cell>/questions.json   per-question scores of the first task (what intervals and paired tests use)
    cells/<cell>/done.json    the cell's record: key, inputs, status, measurements, metrics with intervals
    sweep.json                the resolved sweep (cells, keys), environment.json
    report/                   report.md, table.md/.json/.csv, score.png (or heatmap.png), cost.png

A re-run computes every cell's key first (no work): same key as done.json -> skipped (a failed one too, unless
--retry-failed); another key -> re-run, saying what changed; no done.json (never run, or interrupted) -> run.
A failed or timed-out training, or a failed evaluation, is recorded in done.json and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack.artifacts import write_json
from sftpack.errors import SftpackError
from sftpack.locks import hold
from sftpack.pipeline.stages import (
    Context,
    Plan,
    file_sha256,
    plan_stages,
    read_done,
    run_stages,
    stage_key,
    why_changed,
)
from sftpack.provenance import utc_now
from sftpack.sweep.schema import SEED_AXIS, Cell, Sweep, cell_name

SCHEMA_VERSION = 1
OWNED = ".sftpack-sweep"       # written into a sweep's output folder: only such a folder is written into again
BASE_STAGES = ("model", "data")
BASE_CELL = "base_model"       # the reference row when `evaluate_base: true`


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name   # in the current folder, never inside an installed package


# -- what a cell depends on ------------------------------------------------------------------------------------
def base_stages(sweep: Sweep) -> list:
    from sftpack.pipeline.steps import stages

    return [stage for stage in stages(sweep.pipeline) if stage.name in BASE_STAGES]


def recipe_inputs(sweep: Sweep, variables: dict[str, str], data_key: str) -> dict[str, Any]:
    path = sweep.resolve(sweep.recipe.path)
    return {"recipe": str(path), "recipe_sha256": file_sha256(path),
            "vars": {**{k: str(v) for k, v in sweep.recipe.vars.items()}, **variables}, "base_data": data_key}


def data_name(variables: dict[str, str]) -> str:
    return cell_name({k: v for k, v in sorted(variables.items())}) if variables else "base"


def cell_plan(sweep: Sweep, cell: Cell, base_keys: dict[str, str]) -> tuple[Plan, Plan]:
    """(the cell's plan: training + evaluation inputs, the training's own plan)."""
    from sftpack.pipeline.steps import eval_inputs, train_inputs

    data_key = base_keys["data"]
    if cell.recipe_vars:
        data_key = stage_key(recipe_inputs(sweep, cell.recipe_vars, base_keys["data"]), {})
    reads = {"model": base_keys["model"], "data": data_key}
    train = json.loads(json.dumps(train_inputs(sweep.pipeline, cell.train), default=str))
    evaluation = json.loads(json.dumps(eval_inputs(sweep.pipeline), default=str))
    return Plan({"train": train, "eval": evaluation}, reads), Plan(train, reads)


def normalised(cell: Cell) -> dict[str, Any]:
    """The cell's training in sftpack.parity's shared vocabulary (method, learning_rate, lora_rank, max_steps...)."""
    from sftpack.training import merged_config

    values = fw.adapter(cell.framework).normalise(merged_config(cell.train.config_path, cell.train.overrides))
    return {k: values.get(k) for k in ("method", "learning_rate", "lora_rank", "lora_alpha", "max_steps",
                                       "num_train_epochs", "per_device_train_batch_size",
                                       "gradient_accumulation_steps", "max_length", "seed")}


@dataclasses.dataclass
class CellState:
    cell: Cell
    plan: Plan
    train_plan: Plan
    done: dict[str, Any] | None
    reason: str | None           # why it runs; None: skipped


def states(sweep: Sweep, cells: list[Cell], out: Path, retry_failed: bool = False) -> list[CellState]:
    """Every cell's plan and whether it runs now (and why), running nothing."""
    keys = {name: plan.key for name, plan in plan_stages(base_stages(sweep)).items()}
    found = []
    for cell in cells:
        plan, train_plan = cell_plan(sweep, cell, keys)
        done = read_done(out / "cells", cell.name)
        if done is None:
            reason = ("started before but not finished (interrupted): running it again from the start"
                      if (out / "cells" / cell.name).is_dir() else "not run here before")
        else:
            reason = why_changed(done, plan)
            if reason is None and done.get("status") != "ok" and retry_failed:
                reason = f"recorded {done.get('status')} before; --retry-failed"
        found.append(CellState(cell, plan, train_plan, done, reason))
    return found


# -- --plan ------------------------------------------------------------------------------------------------------
def estimate_s(sweep: Sweep, state: CellState, finished: list[dict[str, Any]]) -> tuple[float | None, str]:
    """(seconds for the cell's training + evaluation, where the figure comes from)."""
    values = normalised(state.cell)
    steps = values["max_steps"] if values["max_steps"] and values["max_steps"] > 0 else None
    limit = sweep.pipeline.eval.limit
    same = [d for d in finished if d.get("normalised", {}).get("method") == values["method"]
            and d.get("framework") == state.cell.framework and d.get("train", {}).get("wall_s")
            and d.get("eval_wall_s") and d.get("normalised", {}).get("max_steps")]
    if same and steps:
        train = statistics.median(d["train"]["wall_s"] * steps / d["normalised"]["max_steps"] for d in same)
        evals = statistics.median(d["eval_wall_s"] * (limit or 1) / (d.get("eval_limit") or limit or 1) for d in same)
        return train + evals, f"measured ({len(same)} finished cell(s) of {state.cell.framework} {values['method']})"
    if steps is None or limit is None:
        return None, "no estimate (training by epochs, or no eval limit)"
    model = sweep.estimate
    return (model.train_startup_s + steps * model.train_step_s + model.eval_startup_s + limit * model.eval_question_s,
            "the sweep's `estimate:`")


def plan_text(sweep: Sweep, found: list[CellState], out: Path) -> str:
    finished = [s.done for s in found if s.done and s.done.get("status") == "ok"]
    lines = [f"Plan of {sweep.path} -> {out} ({len(found)} cells):", "",
             "| # | cell | " + " | ".join(_axis_names(found)) + " | now | estimated s | from |",
             "|" + "---|" * (5 + len(_axis_names(found)))]
    total, unknown = 0.0, 0
    for i, state in enumerate(found, 1):
        seconds, source = estimate_s(sweep, state, finished)
        now = "skip (done, unchanged)" if state.reason is None else f"run: {state.reason}"
        if state.reason is None and state.done.get("status") != "ok":
            now = f"skip (recorded {state.done.get('status')}; --retry-failed runs it)"
        if state.reason is not None:
            if seconds is None:
                unknown += 1
            else:
                total += seconds
        axes = [str(state.cell.axes.get(name, "")) for name in _axis_names(found)]
        shown = "–" if seconds is None else f"{seconds:.0f}"
        lines.append(f"| {i} | {state.cell.name} | " + " | ".join(axes) + f" | {now} | {shown} | {source} |")
    runs = sum(s.reason is not None for s in found)
    lines += ["", f"{runs} of {len(found)} cells would run: estimated {total:.0f} s ({total / 60:.1f} min)"
              + (f" + {unknown} cell(s) without an estimate" if unknown else "")
              + " plus the base model/data stages the first time. Arithmetic, not a measurement."]
    return "\n".join(lines)


def _axis_names(found: list[CellState]) -> list[str]:
    names: dict[str, None] = {}
    for state in found:
        names.update(dict.fromkeys(state.cell.axes))
    return list(names)


# -- running -----------------------------------------------------------------------------------------------------
def check_out(out: Path) -> None:
    """Refuse an output folder that has files but is not a sweep's (nothing of it would be overwritten silently)."""
    if out.is_dir() and any(p.name != ".sftpack.lock" for p in out.iterdir()) and not (out / OWNED).is_file():
        raise SftpackError(f"--out {out}: a folder with files that `sftpack sweep` did not write (no {OWNED} "
                           "marker); nothing was changed: choose another --out")


def eval_env(sweep: Sweep, folder: Path) -> dict[str, str]:
    env = fw.offline_env(folder / "cache")
    if not sweep.pipeline.requires_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""   # a CPU sweep stays on the CPU, even on a GPU machine
    return env


def prepare_recipe_data(sweep: Sweep, variables: dict[str, str], base: dict[str, Any], out: Path,
                        data_key: str) -> str:
    """The cell's data folder: a copy of the base's dataset_info/ plus the recipe's output for these variables
    (made once per distinct variables, keyed like a stage); returns the folder (the frameworks' cwd)."""
    from sftpack.recipes import load_recipe, run_recipe

    inputs = recipe_inputs(sweep, variables, data_key)
    plan = Plan(inputs, {})
    name = data_name(variables)
    done = read_done(out / "data", name)
    folder = out / "data" / name
    if done is not None and why_changed(done, plan) is None:
        return done["outputs"]["workdir"]
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(Path(base["data"]["workdir"]) / "dataset_info", folder / "dataset_info")
    started = time.monotonic()
    result = run_recipe(sweep.resolve(sweep.recipe.path), folder / "dataset_info", inputs["vars"], progress=False)
    names = load_recipe(sweep.resolve(sweep.recipe.path), inputs["vars"]).dataset_names()
    train = next((n for n in names if n.endswith("_train")), names[0])
    outputs = {"workdir": str(folder), "dataset": train, "rows": {o.dataset: o.rows for o in result.outputs}}
    write_json(folder / "done.json", {"key": plan.key, "inputs": inputs, "reads": {}, "outputs": outputs,
                                      "elapsed_s": round(time.monotonic() - started, 2), "finished_utc": utc_now()})
    return str(folder)


def train_summary(result) -> dict[str, Any]:
    """The measurements of the training core's RunResult a sweep table shows (the rest stays in result.json)."""
    memory, throughput = result.memory, result.throughput
    return {"status": result.status, "status_detail": result.status_detail, "wall_s": result.wall_s,
            "train_runtime_s": result.train_runtime_s, "final_loss": result.final_loss,
            "peak_rss_largest_process_mib": memory.peak_rss_largest_process_mib,
            "peak_pss_tree_mib": memory.peak_pss_tree_mib,
            "peak_gpu_torch_reserved_mib": memory.peak_gpu_torch_reserved_mib,
            "peak_gpu_device_used_nvml_mib": memory.peak_gpu_device_used_nvml_mib,
            "non_padding_tokens_per_s": throughput.non_padding_tokens_per_s,
            "non_padding_tokens_source": throughput.non_padding_tokens_source,
            "steps": throughput.steps, "trainable_params": result.trainable_params,
            "load_avg_1m_before": result.load_avg_1m_before, "load_avg_1m_after": result.load_avg_1m_after}


def read_questions(report: dict[str, Any], task: str) -> dict[str, Any]:
    """Per-question scores of one evaluated model's `task`: {"metric,filter": {doc_id: value}}, format_rate
    included when sftpack eval reported one, and each document's hash (to pair cells on the same questions)."""
    from sftpack import stats
    from sftpack.answer import extract_answer
    from sftpack.evaluate.results import FORMAT_RATE, STRICT_FILTER, generations

    files = report["models"][-1]["runs"][0]["samples_files"]
    if task not in files:
        raise SftpackError(f"lm-eval wrote no samples for task {task!r} (tasks with samples: {sorted(files)})")
    records = [json.loads(line) for line in Path(files[task]).read_text(encoding="utf-8").splitlines() if line]
    scores = stats.question_scores(records)
    texts = generations(Path(files[task]))
    if any(row["task"] == task and row["metric"] == FORMAT_RATE for row in report["rows"]):   # as sftpack eval
        docs = sorted({int(r["doc_id"]) for r in records})
        scores[f"{FORMAT_RATE},{STRICT_FILTER}"] = {doc: 1.0 if extract_answer(text) is not None else 0.0
                                                    for doc, text in zip(docs, texts)}
    hashes = {int(r["doc_id"]): r.get("doc_hash") for r in records}
    return {"task": task, "scores": {k: {str(d): v for d, v in sorted(s.items())} for k, s in scores.items()},
            "doc_hashes": {str(d): h for d, h in sorted(hashes.items())},
            "distinct_generations": len(set(texts)), "generations": len(texts)}


def metrics(questions: dict[str, Any]) -> dict[str, Any]:
    """{"metric,filter": Interval as a dict} over the questions."""
    from sftpack import stats

    return {name: stats.interval(list(values.values())).to_dict() for name, values in questions["scores"].items()}


def evaluate(sweep: Sweep, label: str, base_model: str, trained: str | None, folder: Path,
             workdir: str) -> tuple[dict[str, Any], float]:
    """sftpack eval of one model (the base when `trained` is None) into folder/eval; (questions, wall seconds)."""
    from sftpack.evaluate.runner import Settings, run_eval

    spec = sweep.pipeline.eval
    settings = Settings(tasks=list(spec.tasks), limit=spec.limit, device=spec.device, batch_size=str(spec.batch_size),
                        dtype=spec.dtype, gen_kwargs=spec.gen_kwargs, workdir=workdir,
                        include_path=str(spec.tasks_folder))
    started = time.monotonic()
    report = run_eval(base_model, [f"{label}={trained}"] if trained else [], folder / "eval", settings,
                      include_base=trained is None, env=eval_env(sweep, folder))
    wall = time.monotonic() - started
    return read_questions(report, spec.tasks[0]), wall


def run_cell(sweep: Sweep, state: CellState, out: Path, base: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Train and evaluate one cell from an empty folder; its record (also written as done.json). A failure is a
    recorded status; an interrupt leaves no done.json (the cell runs again next time)."""
    from sftpack.pipeline.steps import train_job
    from sftpack.training import run_standalone

    cell = state.cell
    folder = out / "cells" / cell.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "cell": cell.name, "group": cell.group,
                              "axes": cell.axes, "framework": cell.framework, "normalised": normalised(cell),
                              "config": cell.train.config, "overrides": cell.train.overrides,
                              "recipe_vars": cell.recipe_vars, "key": state.plan.key,
                              "train_key": state.train_plan.key, "inputs": state.plan.inputs,
                              "reads": state.plan.reads, "ran_because": state.reason, "started_utc": utc_now()}
    spec = dataclasses.replace(cell.train)
    if cell.recipe_vars:
        dataset = json.loads((Path(workdir) / "done.json").read_text(encoding="utf-8"))["outputs"]["dataset"]
        spec.overrides = {**spec.overrides, "dataset": dataset}
        record["overrides"] = spec.overrides
    ctx = Context(out=folder, outputs={"model": base["model"], "data": {"workdir": workdir}}, started=started)
    job = train_job(sweep.pipeline, spec, ctx)   # cells/<cell>/train_<framework>/, as a pipeline's stage folder
    job.identity.update(suite=sweep.name, session=out.name, run=cell.name, group=cell.group)
    result = run_standalone(job)
    record["train"] = train_summary(result)
    record["train_result"] = str(job.record_dir / "result.json")
    record["status"], record["status_detail"] = result.status, result.status_detail
    if result.status != "ok":
        last = [line.strip() for line in (result.log_tail or "").splitlines() if line.strip()]
        record["status_detail"] = f"{result.status_detail}" + (f"; last log line: {last[-1][:300]}" if last else "")
        record["log"] = str(job.record_dir / "stdout.log")
    if not os.environ.get("SFTPACK_KEEP_CACHE"):
        shutil.rmtree(job.cache, ignore_errors=True)
    if result.status == "ok":
        try:
            questions, record["eval_wall_s"] = evaluate(sweep, cell.name, base["model"]["path"],
                                                        result.trained_model, folder, workdir)
            record["eval_limit"] = sweep.pipeline.eval.limit
            write_json(folder / "questions.json", questions)
            record["questions"] = "questions.json"
            record["metrics"] = metrics(questions)
        except SftpackError as err:
            logs = sorted((folder / "eval" / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
            record["status"] = "eval_failed"
            record["status_detail"] = f"{str(err)[:500]}" + (f" (log: {logs[-1]})" if logs else "")
    if not os.environ.get("SFTPACK_KEEP_CACHE"):
        shutil.rmtree(folder / "cache", ignore_errors=True)   # lm-eval's (eval_env)
    record["elapsed_s"] = round(time.monotonic() - started, 2)
    record["finished_utc"] = utc_now()
    write_json(folder / "done.json", record)   # atomic: a done-marker is whole
    return record


def run_base_eval(sweep: Sweep, out: Path, base: dict[str, Any], keys: dict[str, str]) -> dict[str, Any] | None:
    """The base model evaluated once (evaluate_base: true), keyed by the model and the eval settings."""
    from sftpack.pipeline.steps import eval_inputs

    plan = Plan({"eval": json.loads(json.dumps(eval_inputs(sweep.pipeline), default=str))},
                {"model": keys["model"], "data": keys["data"]})
    done = read_done(out / "cells", BASE_CELL)
    if done is not None and why_changed(done, plan) is None:
        return done
    folder = out / "cells" / BASE_CELL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "cell": BASE_CELL, "group": BASE_CELL, "axes": {},
                              "framework": None, "normalised": {}, "key": plan.key, "inputs": plan.inputs,
                              "reads": plan.reads, "train": None, "status": "ok", "status_detail": None}
    try:
        questions, record["eval_wall_s"] = evaluate(sweep, BASE_CELL, base["model"]["path"], None, folder,
                                                    base["data"]["workdir"])
        write_json(folder / "questions.json", questions)
        record.update(questions="questions.json", metrics=metrics(questions))
    except SftpackError as err:
        record["status"], record["status_detail"] = "eval_failed", str(err)[:500]
    write_json(folder / "done.json", record)
    return record


def run_sweep(path: Path, out: Path | None = None, plan_only: bool = False, max_cells: int | None = None,
              retry_failed: bool = False, report_only: bool = False, offline: bool = False) -> int:
    """`sftpack sweep`: exit status 0 when every cell is ok, 1 when any cell failed (all are recorded)."""
    from sftpack.pipeline.offline import go_offline

    go_offline(offline)   # first: before anything in this process imports huggingface_hub or datasets
    from sftpack.pipeline.steps import check_gpu, check_model
    from sftpack.sweep.report import write_report
    from sftpack.sweep.schema import load_sweep

    sweep, cells = load_sweep(path)
    out = (out or default_out(sweep)).resolve()
    check_out(out)
    found = states(sweep, cells, out, retry_failed)
    if plan_only:
        print(plan_text(sweep, found, out))
        return 0
    if report_only:
        records = [read_done(out / "cells", s.cell.name) for s in found]
        base_record = read_done(out / "cells", BASE_CELL) if sweep.evaluate_base else None
        paths = write_report(sweep, [r for r in records if r], out, base_record)
        stored = sum(r is not None for r in records)
        print(f"sftpack sweep: report rebuilt from {stored} stored cells: {paths['report']}")
        return 0
    check_gpu(sweep.pipeline)
    check_model(sweep.pipeline)
    with hold(out, "sftpack sweep"):
        return _run(sweep, found, out, max_cells)


def _run(sweep: Sweep, found: list[CellState], out: Path, max_cells: int | None) -> int:
    from sftpack.bench.runner import capture_environment
    from sftpack.sweep.report import write_report

    started = time.monotonic()
    (out / OWNED).write_text("written by `sftpack sweep`; cells/ and report/ are replaced as cells re-run\n",
                             encoding="utf-8")
    todo = [s for s in found if s.reason is not None]
    print(f"sftpack sweep: {sweep.path} -> {out}\n  {len(found)} cells: {len(found) - len(todo)} done before "
          f"(skipped), {len(todo)} to run" + (f", at most {max_cells} now (--max-cells)" if max_cells is not None
                                               else ""), flush=True)
    write_json(out / "sweep.json", {"schema_version": SCHEMA_VERSION, "sweep": sweep.path, "name": sweep.name,
                                    "select": sweep.select, "written_utc": utc_now(),
                                    "cells": [{"cell": s.cell.name, "axes": s.cell.axes, "key": s.plan.key}
                                              for s in found]})
    captured: dict[str, Any] = {}    # the environment, captured in a subprocess beside the first cell

    def environment() -> None:
        try:
            captured.update(capture_environment(eval_env(sweep, out / "base")))
        except (SftpackError, OSError, ValueError) as err:   # the report then has no environment line
            print(f"sftpack sweep: environment not captured: {err}", flush=True)

    capture = threading.Thread(target=environment, daemon=True)
    if todo and max_cells != 0:
        capture.start()
    base = {name: record["outputs"] for name, record in
            run_stages(base_stages(sweep), out / "base", command="sftpack sweep (base)").items()}
    keys = {name: plan.key for name, plan in plan_stages(base_stages(sweep)).items()}
    base_record = run_base_eval(sweep, out, base, keys) if sweep.evaluate_base else None
    ran = 0
    for number, state in enumerate(found, 1):
        label = f"[{time.monotonic() - started:7.1f} s] cell {number}/{len(found)} {state.cell.name}"
        if state.reason is None:
            print(f"\n=== sftpack sweep {label} -- unchanged, skipped ({state.done.get('status')} before)", flush=True)
            continue
        if max_cells is not None and ran >= max_cells:
            continue
        print(f"\n=== sftpack sweep {label} -- {state.reason}", flush=True)
        workdir = base["data"]["workdir"]
        if state.cell.recipe_vars:
            workdir = prepare_recipe_data(sweep, state.cell.recipe_vars, base, out, keys["data"])
        state.done = run_cell(sweep, state, out, base, workdir)
        state.reason = None
        ran += 1
        print(f"=== sftpack sweep cell {state.cell.name}: {_one_line(state.done)}", flush=True)
    if capture.is_alive():
        capture.join()
    if captured:
        write_json(out / "environment.json", captured)
    left = [s for s in found if s.reason is not None]
    records = [s.done for s in found if s.done is not None]
    paths = write_report(sweep, records, out, base_record)
    failed = [r for r in records if r.get("status") != "ok"]
    print(f"\nsftpack sweep: {ran} cell(s) ran in {time.monotonic() - started:.1f} s; {len(records)} of {len(found)} "
          f"recorded ({len(failed)} not ok)" + (f"; {len(left)} left (--max-cells): run the same command again"
                                                if left else "") + f"\n  report: {paths['report']}", flush=True)
    return 1 if failed else 0


def _one_line(record: dict[str, Any]) -> str:
    if record.get("status") != "ok":
        return f"{record.get('status').upper()}: {record.get('status_detail')}"
    train = record.get("train") or {}
    shown = ", ".join(f"{name} {m['mean']:.3f}" for name, m in (record.get("metrics") or {}).items()
                      if m.get("mean") is not None)
    return (f"ok: train {train.get('wall_s') or 0:.1f} s, final loss {train.get('final_loss')}, eval "
            f"{record.get('eval_wall_s') or 0:.1f} s; {shown}")


__all__ = ["SEED_AXIS", "run_sweep", "states", "plan_text", "run_cell"]
