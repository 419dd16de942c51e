"""The report folder of a pipeline run, rebuilt from the stage outputs only (never from hand-typed numbers).

    <out>/report/report.md        what ran, versions, eval table (base vs each framework, format rate
                                  included), time/memory table, trainable-parameter ratio
    <out>/report/summary.json     the same numbers, machine-readable (schema_version 1)
    <out>/report/loss.png         both frameworks' loss curves on one chart
    <out>/report/eval.png         eval bars per model
    <out>/report/time_memory.png  time and memory bars per framework

`sftpack run PIPELINE.yaml --force report` rebuilds it from the stored outputs without re-running anything else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sftpack.artifacts import write_json, write_text
from sftpack.bench.compare import not_comparable
from sftpack.bench.results import read_json
from sftpack.pipeline.schema import Pipeline
from sftpack.pipeline.stages import DONE, Context, clock
from sftpack.plots import COLORS, pyplot, save

SCHEMA_VERSION = 1
EVAL_METRICS = ("exact_match", "format_rate")
TIME_MEMORY = [  # (summary key, column title, digits)
    ("wall_s", "wall s (process)", 1), ("train_runtime_s", "training loop s", 1), ("cpu_s", "CPU s", 1),
    ("tokens_per_cpu_s", "tokens per CPU-s", 0),
    ("peak_rss_largest_process_mib", "peak RSS MiB (largest process)", 0),
    ("peak_pss_tree_mib", "peak PSS MiB (process tree)", 0),
    ("peak_gpu_torch_reserved_mib", "peak GPU MiB (torch reserved)", 0),
    ("tokens_per_s", "tokens/s", 0), ("samples_per_s", "samples/s", 2), ("steps", "steps", 0),
    ("load_avg_1m_before", "load avg 1 min before", 2), ("load_avg_1m_after", "after", 2),
]


def _num(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def environment() -> dict[str, Any] | None:
    done = subprocess.run([sys.executable, "-m", "sftpack.provenance"], capture_output=True, text=True,
                          timeout=300, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def eval_values(eval_report: dict[str, Any], exclude: set[str] = frozenset()) -> dict[str, dict[str, float | None]]:
    """{label: {"task filter metric": value}} for the metrics the report shows (tasks in `exclude` have their
    own tables)."""
    values: dict[str, dict[str, float | None]] = {m["label"]: {} for m in eval_report["models"]}
    for row in eval_report["rows"]:
        if row["metric"] not in EVAL_METRICS or row["task"] in exclude:
            continue
        key = f"{row['task']} {row['filter']} {row['metric']}"
        for label, cell in row["values"].items():
            values[label][key] = cell["value"]
    return values


def train_summary(result: dict[str, Any], log: Path) -> dict[str, Any]:
    """The figures the report shows of one training (sftpack.training's result.json), flat."""
    memory, throughput = result["memory"], result["throughput"]
    cpu = (result["cpu_user_s"] or 0) + (result["cpu_system_s"] or 0) if result.get("cpu_user_s") is not None else None
    tokens = throughput.get("non_padding_tokens") or throughput.get("tokens_seen")
    return {
        "command": result["command"], "log": str(log), "trained_model": result.get("trained_model"),
        "wall_s": result["wall_s"], "train_runtime_s": result["train_runtime_s"], "cpu_s": cpu,
        "tokens_per_cpu_s": tokens / cpu if tokens and cpu else None,
        "load_avg_1m_before": result["load_avg_1m_before"], "load_avg_1m_after": result["load_avg_1m_after"],
        "peak_rss_largest_process_mib": memory["peak_rss_largest_process_mib"],
        "peak_pss_tree_mib": memory["peak_pss_tree_mib"],
        "peak_gpu_torch_reserved_mib": memory["peak_gpu_torch_reserved_mib"],
        "peak_gpu_tree_nvml_mib": memory["peak_gpu_tree_nvml_mib"], "mfu": (result.get("utilisation") or {}).get("mfu"),
        "steps": throughput["steps"], "samples_per_s": throughput["samples_per_s"],
        "tokens_per_s": throughput["tokens_per_s"], "tokens_counted": throughput["tokens_counted"],
        "non_padding_tokens_per_s": throughput["non_padding_tokens_per_s"],
        "first_loss": result["loss_curve"][0][1] if result["loss_curve"] else None,
        "final_loss": result["final_loss"], "loss_curve": result["loss_curve"],
        "trainable_params": result["trainable_params"], "total_params": result["total_params"],
        "trainable_percent": result["trainable_percent"], "params_source": result["params_source"],
    }


def fallbacks(pipeline: Pipeline, model: dict[str, Any], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every fallback the pipeline allows, with the reason it was taken in this run (None: not taken)."""
    from sftpack.pipeline.steps import allowed_fallbacks

    offline = model.get("offline") or data.get("offline")     # as recorded when the stages ran
    taken = {"model.build_shape": model.get("random_weights") and model.get("fallback_reason"),
             "model.tokenizer_required": model.get("tokenizer_fallback_reason"),
             "data.fallback_source": data.get("fallback_reason"), "offline": offline}
    return [{"key": f.key, "text": f.text, "taken": taken.get(f.key) or None}
            for f in allowed_fallbacks(pipeline, offline=offline)]


def stage_data(spec, output: dict[str, Any]) -> dict[str, Any]:
    """What a train stage trained on and from: framework, kind (sft / pt), its dataset as its config + overrides
    name it, and the stage it started from (with the adapter merged or continued)."""
    return {"framework": spec.framework, "kind": output.get("kind", spec.kind),
            "dataset": output.get("dataset"), "after": output.get("after"), "adapter": output.get("adapter"),
            "started_from": output.get("model")}


def build_summary(pipeline: Pipeline, ctx: Context) -> dict[str, Any]:
    out = ctx.out
    stages = {}
    for name in ["model", "data"] + [t.stage for t in pipeline.train] + ["eval"]:
        marker = out / name / DONE
        if marker.is_file():
            record = json.loads(marker.read_text(encoding="utf-8"))
            stages[record["stage"]] = {"elapsed_s": record["elapsed_s"], "finished_utc": record["finished_utc"]}
    results = {t.label: read_json(Path(ctx.outputs[t.stage]["result"])) for t in pipeline.train}
    train = {t.label: {**train_summary(results[t.label], Path(ctx.outputs[t.stage]["result"]).with_name(
        "stdout.log")), **stage_data(t, ctx.outputs[t.stage])} for t in pipeline.train}
    env = environment()
    cores = ((env or {}).get("cpu") or {}).get("usable_cores")
    pairs = [results[t.label] for t in pipeline.final_trains()]
    comparability = not_comparable(pairs[0], pairs[1], cores) if len(pairs) == 2 else []
    eval_report = json.loads(Path(ctx.outputs["eval"]["eval_json"]).read_text(encoding="utf-8"))
    leaves = eval_report.get("task_leaves") or {}
    retention = {name for r in pipeline.eval.retention for name in [r.task, *leaves.get(r.task, [])]}
    generated = eval_report.get("generated_tasks") or []
    own = {t["task"] for t in generated}
    return {
        "schema_version": SCHEMA_VERSION,
        "pipeline": {"name": pipeline.name, "path": pipeline.path, "description": pipeline.description},
        "out": str(out),
        "model": ctx.outputs["model"], "data": ctx.outputs["data"],
        "fallbacks": fallbacks(pipeline, ctx.outputs["model"], ctx.outputs["data"]),
        "train": train,
        "eval": {"settings": eval_report["settings"], "base_label": eval_report["base_label"],
                 "values": eval_values(eval_report, retention | own), "eval_json": ctx.outputs["eval"]["eval_json"],
                 "labels": [m["label"] for m in eval_report["models"]],
                 "retention_rows": [row for row in eval_report["rows"] if row["task"] in retention],
                 "dataset_rows": [row for row in eval_report["rows"] if row["task"] in own],
                 "generated_tasks": generated},
        "stages": stages,
        "stages_wall_s": round(sum(s["elapsed_s"] for s in stages.values()), 1),
        "run_wall_s": round(time.monotonic() - ctx.started, 1),   # this run, before the report (skipped stages: 0)
        "parallel": pipeline.parallel,
        "threads": {t.label: ctx.outputs[t.stage].get("threads") for t in pipeline.train},
        "trained_together": overlapped(stages, [t.stage for t in pipeline.train]),
        "not_comparable": comparability,
        "retention": [{"task": r.task, "data": str(r.path)} for r in pipeline.eval.retention],
        "environment": env,
    }


# -- plots ------------------------------------------------------------------------------------------------
def plot_loss(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for framework, metrics in summary["train"].items():
        steps, losses = zip(*metrics["loss_curve"])
        ax.plot(steps, losses, marker=".", label=f"{framework} (final {metrics['final_loss']:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{summary['pipeline']['name']}: training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def plot_eval(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    values = summary["eval"]["values"]
    labels = list(values)
    keys = sorted({k for v in values.values() for k in v})
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(keys)), 4))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        ys = [values[label].get(k) or 0.0 for k in keys]
        bars = ax.bar([x + i * width for x in range(len(keys))], ys, width, label=label)
        ax.bar_label(bars, labels=[_num(values[label].get(k), 2) for k in keys], fontsize=7)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([k.replace(" ", "\n") for k in keys], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"eval (limit {summary['eval']['settings']['limit']})")
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def plot_time_memory(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    frameworks = list(summary["train"])
    panels = [("wall_s", "wall s (process)"), ("train_runtime_s", "training loop s"),
              ("peak_rss_largest_process_mib", "peak RSS MiB"), ("peak_pss_tree_mib", "peak PSS MiB (tree)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        ys = [summary["train"][f].get(key) or 0.0 for f in frameworks]
        bars = ax.bar(frameworks, ys, color=[COLORS.get(f, "gray") for f in frameworks])
        ax.bar_label(bars, labels=[_num(summary["train"][f].get(key), 0) for f in frameworks], fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle("time and memory of training")
    fig.tight_layout()
    save(fig, path)


# -- markdown ---------------------------------------------------------------------------------------------
def _tokenizer_line(model: dict[str, Any]) -> list[str]:
    """The built model's tokenizer, when the pipeline chose one (model.tokenizer)."""
    if model.get("tokenizer_fallback_reason"):
        return [f"- tokenizer: the built byte-level one (**fallback**: {model['tokenizer_fallback_reason']})"]
    if model.get("tokenizer"):
        return [f"- tokenizer: `{model['tokenizer']}`"]
    return []


def fallback_section(allowed: list[dict[str, Any]]) -> list[str]:
    """Every fallback the pipeline allowed, in bold, each saying whether this run took it."""
    if not allowed:
        return ["## Fallbacks", "", "None allowed: the model and the data are the ones the pipeline names.", ""]
    lines = ["## Fallbacks", "", ("**What this pipeline allows in place of what it names; a taken one changed "
                                  "what ran:**"), ""]
    for f in allowed:
        state = f"TAKEN: {f['taken']}" if f["taken"] else "not taken"
        lines.append(f"- **{f['key']}: {f['text']} -- {state}**")
    return lines + [""]


def _recipe_lines(recipes: list[dict[str, Any]]) -> list[str]:
    lines = []
    for recipe in recipes:
        if "mixture" in recipe:
            lines.append(f"- data: mixture `{recipe['recipe']}` -> `{recipe['mixture']}`")
        else:
            outputs = ", ".join(f"{name} {o['rows']:,} rows" for name, o in recipe["outputs"].items())
            lines.append(f"- data: recipe `{recipe['recipe']}`: {outputs}")
    return lines


def _stage_words(m: dict[str, Any]) -> str:
    """'llamafactory sft on gsm8k_train, from train_lf_pt's LoRA adapter (merged)'."""
    dataset = m.get("dataset")
    dataset = ", ".join(dataset) if isinstance(dataset, list) else dataset
    words = f"{m.get('framework', '')} {m.get('kind') or 'sft'} on {dataset or 'the config dataset'}".strip()
    if m.get("after"):
        words += f", from {m['after']}'s " + (f"LoRA adapter ({m['adapter']}d)" if m.get("adapter") else "model")
    return words


def _extra_eval_sections(summary: dict[str, Any]) -> list[str]:
    """The retention table and the tables of eval.datasets' generated tasks: value [95 % interval], stderr and
    each framework's delta to the base (sftpack.evaluate.results.table)."""
    from sftpack.evaluate import results as res

    evaluated = summary["eval"]
    shape = {"models": [{"label": label} for label in evaluated.get("labels") or []],
             "base_label": evaluated["base_label"]}
    lines: list[str] = []
    notes = ("Values: mean [95 % interval over the questions]; Δ: to the base on the same questions, \"n.s.\" when "
             "the paired test gives p ≥ 0.05.")
    if evaluated.get("retention_rows"):
        data = {r["task"]: r["data"] for r in summary.get("retention", [])}
        lines += ["", "## Retention: what the base model could do, after each training", "",
                  "Data: " + "; ".join(f"`{task}` from `{path}`" for task, path in data.items()), "",
                  *res.table(shape, evaluated["retention_rows"]), "", notes]
    if evaluated.get("dataset_rows"):
        lines += ["", "## Your datasets, prompted as trained (`eval.datasets`)", "",
                  *res.table(shape, evaluated["dataset_rows"]), "", notes,
                  *res.generated_tasks_markdown(evaluated.get("generated_tasks") or [])]
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    model, data, env = summary["model"], summary["data"], summary.get("environment") or {}
    lines = [f"# sftpack run: {summary['pipeline']['name']}", ""]
    if summary["pipeline"]["description"]:
        lines += [summary["pipeline"]["description"].strip(), ""]
    if model["random_weights"]:
        lines += [f"> **Random weights.** The model was built offline with random weights ({model['source']}). "
                  "Time and memory are those of its shape; accuracy numbers measure only what training on this "
                  "data taught a random model" + (" and say nothing about the requested model."
                                                  if model.get("requested") else "."), ""]
    lines += fallback_section(summary.get("fallbacks", []))
    lines += ["## What ran", "", f"- pipeline: `{summary['pipeline']['path']}`",
              f"- output folder: `{summary['out']}`",
              f"- model: `{model['path']}` ({model['source']})"
              + (f" (**fallback**: {model['fallback_reason']})" if model.get("fallback_reason") else ""),
              *_tokenizer_line(model),
              f"- data: {data['family']} from `{data['resolved_source']}`: "
              + ", ".join(f"{name} {s['rows']:,} rows" for name, s in data["splits"].items())
              + (f" (**fallback**: {data['fallback_reason']})" if data.get("fallback_reason") else ""),
              *_recipe_lines(data.get("recipes") or [])]
    for label, m in summary["train"].items():
        command = " ".join([Path(m["command"][0]).name, *m["command"][1:]])
        lines.append(f"- {label}: {_stage_words(m)}: `{command}` (log `{m['log']}`)")
    settings = summary["eval"]["settings"]
    lines += [(f"- eval: lm-eval `{', '.join(settings['tasks'])}`, limit {settings['limit']}, device "
               f"{settings['device']}, batch {settings['batch_size']} (`{summary['eval']['eval_json']}`)"), "",
              "| Stage | elapsed s |", "|---|---:|"]
    lines += [f"| {name} | {s['elapsed_s']:.1f} |" for name, s in summary["stages"].items()]
    lines += [f"| **all stages before the report** | **{summary['stages_wall_s']:.1f}** |", ""]
    lines += _parallel_note(summary)
    if env:
        packages = env.get("packages", {})
        git = env.get("git", {})
        lines += ["## Versions", "", (f"Python {env.get('python')}, {env.get('platform')}; sftpack git "
                                      f"{git.get('sha')}{' (dirty)' if git.get('dirty') else ''}"), "",
                  ", ".join(f"{k} {v}" for k, v in packages.items() if v), ""]

    values = summary["eval"]["values"]
    labels = list(values)
    base = summary["eval"]["base_label"]
    header = ["task filter metric"] + labels + [f"Δ {lab}" for lab in labels if lab != base]
    lines += ["## Eval: base vs each framework", "",
              ("`format_rate` = share of generations in which the strict `#### N` answer is found "
               "(`sftpack.answer.extract_answer`)."), "",
              "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for key in sorted({k for v in values.values() for k in v}):
        cells = [key] + [_num(values[lab].get(key), 3) for lab in labels]
        for lab in labels:
            if lab != base:
                b, v = values.get(base, {}).get(key), values[lab].get(key)
                cells.append("—" if b is None or v is None else f"{v - b:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _extra_eval_sections(summary)
    lines += ["", "![eval](eval.png)", "", "## Training: loss, time and memory", "",
              *([f"**NOT COMPARABLE on time: {'; '.join(summary['not_comparable'])}.** The figures below were "
                 "measured under different conditions; do not read their ratio as a framework difference.", ""]
                if summary.get("not_comparable") else []),
              *_parallel_note(summary),
              "| framework | first loss | final loss | " + " | ".join(t for _, t, _ in TIME_MEMORY)
              + " | trainable / total params | trainable % |",
              "|---" + "|---:" * (4 + len(TIME_MEMORY)) + "|"]
    for framework, m in summary["train"].items():
        params = f"{_num(m['trainable_params'], 0)} / {_num(m['total_params'], 0)}"
        lines.append(f"| {framework} | {m['first_loss']:.3f} | {m['final_loss']:.3f} | "
                     + " | ".join(_num(m.get(k), d) for k, _, d in TIME_MEMORY)
                     + f" | {params} | {_num(m['trainable_percent'], 2)} |")
    lines += ["", "tokens/s: " + "; ".join(f"{f}: {m['tokens_counted']}" for f, m in summary["train"].items())
              + " (LLaMA-Factory counts non-padding tokens, ms-swift padded ones unless packing). "
              "Parameter counts: " + "; ".join(f"{f}: {m['params_source']}" for f, m in summary["train"].items()),
              "", "![loss](loss.png)", "", "![time and memory](time_memory.png)", ""]
    return "\n".join(lines)


def overlapped(stages: dict[str, dict[str, Any]], names: list[str]) -> bool:
    """Whether any two of the stages `names` ran at the same time, from their done.json records (finished_utc,
    elapsed_s): with `parallel` a re-run may have trained one of them alone and reused the other."""
    from datetime import datetime, timedelta

    spans = []
    for name in names:
        if name in stages:
            end = datetime.strptime(stages[name]["finished_utc"], "%Y-%m-%dT%H:%M:%SZ")
            spans.append((end - timedelta(seconds=stages[name]["elapsed_s"]), end))
    spans.sort()
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def _parallel_note(summary: dict[str, Any]) -> list[str]:
    """Said wherever times are shown when the trainings ran with `parallel`: at the same time, or (a re-run that
    reused one of them) with the threads of a shared run but alone."""
    if (summary.get("parallel") or 1) <= 1:
        return []
    threads = ", ".join(f"{f}: {n}" for f, n in (summary.get("threads") or {}).items())
    if not summary.get("trained_together", True):
        return [f"**The train stages ran with `parallel: {summary['parallel']}` but not at the same time** (one was "
                f"reused from an earlier run; CPU threads each: {threads}): each time is of a run with those threads, "
                "not of a run with every core.", ""]
    return [f"**The train stages ran at the same time** (`parallel: {summary['parallel']}`; CPU threads each: "
            f"{threads}), so the stage times add up to more than the run took "
            f"({summary.get('run_wall_s', 0):.1f} s before the report). The two trainings' times compare with each "
            "other (same threads, same time), not with a run of one training at a time.", ""]


def terminal_summary(summary: dict[str, Any], report: Path, wall_s: float) -> str:
    """One screen at the end of `sftpack run`: time per stage, the format rate and exact match before and after,
    final losses, and where the report is."""
    lines = [f"sftpack run: {summary['pipeline']['name']} finished in {clock(wall_s)}"
             + (f" (train stages {summary['parallel']} at a time)" if summary.get("trained_together") else "")]
    lines += ["  time:   " + ", ".join(f"{name} {clock(s['elapsed_s'])}" for name, s in summary["stages"].items())]
    values, base = summary["eval"]["values"], summary["eval"]["base_label"]
    limit = summary["eval"]["settings"].get("limit")
    for key in sorted({k for v in values.values() for k in v}):
        if not key.endswith(("format_rate", "strict-match exact_match")):
            continue
        cells = [f"{label} {_percent(values[label].get(key))}" for label in values if label == base]
        cells += [f"{label} {_percent(values[label].get(key))}" for label in values if label != base]
        lines.append(f"  {key}: " + (" -> ".join(cells[:1]) + " -> " + ", ".join(cells[1:]) if base else
                                     ", ".join(cells)) + (f"  ({limit} questions)" if limit else ""))
    lines.append("  loss:   " + ", ".join(f"{f} {_num(m['first_loss'], 2)} -> {_num(m['final_loss'], 2)}"
                                          for f, m in summary["train"].items()))
    lines.append(f"  report: {report} (loss.png, eval.png, time_memory.png beside it)")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def write_report(pipeline: Pipeline, ctx: Context) -> dict[str, Any]:
    folder = ctx.dir("report")
    summary = build_summary(pipeline, ctx)
    write_json(folder / "summary.json", summary)
    plots = {"loss": folder / "loss.png", "eval": folder / "eval.png", "time_memory": folder / "time_memory.png"}
    plot_loss(summary, plots["loss"])
    plot_eval(summary, plots["eval"])
    plot_time_memory(summary, plots["time_memory"])
    write_text(folder / "report.md", render_markdown(summary))
    print(f"report: {folder / 'report.md'}", flush=True)
    return {"report_md": str(folder / "report.md"), "summary_json": str(folder / "summary.json"),
            **{f"{k}_png": str(v) for k, v in plots.items()}}
