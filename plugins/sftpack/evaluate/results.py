"""Read lm-eval's output folders, add the format rate, and build the comparison report (JSON + Markdown).

    python -m sftpack.evaluate.results runs/eval/eval.json     # rebuild eval.md from a stored eval.json

The Markdown table is always rendered from the JSON report (`render_markdown(report)`), never edited by hand.
Rows follow lm-eval's own table (task, n-shot, filter, metric), with one value and stderr column per model and,
when the base model was evaluated, each tuned model's delta to it.

Format rate: the share of a task's generations in which `sftpack.answer.extract_answer` finds the strict
`#### N` answer. It is reported for tasks whose `strict-match` filter uses that same regex (the gsm8k-local family
and gsm8k-local-chat); other tasks get no format-rate row.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack.answer import ANSWER_RE, extract_answer
from sftpack.artifacts import write_text
from sftpack.errors import SftpackError

SCHEMA_VERSION = 1
FORMAT_RATE = "format_rate"
STRICT_FILTER = "strict-match"


@dataclass
class RunOutput:
    """One lm-eval run's files: the results JSON and the per-task samples next to it."""

    results_file: Path
    results: dict[str, Any]
    samples_files: dict[str, Path] = field(default_factory=dict)


def read_run(output_dir: Path) -> RunOutput:
    """The newest `results_*.json` under `output_dir` (lm-eval writes `<dir>/<model name>/results_<time>.json`)."""
    found = sorted(Path(output_dir).rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SftpackError(f"{output_dir}: lm-eval wrote no results_*.json")
    newest = found[-1]
    stamp = newest.stem[len("results_"):]
    samples = {}
    for path in newest.parent.glob(f"samples_*_{stamp}.jsonl"):
        samples[path.stem[len("samples_"):-len(stamp) - 1]] = path
    return RunOutput(newest, json.loads(newest.read_text(encoding="utf-8")), samples)


def number(value: Any) -> float | None:
    """lm-eval writes "N/A" (or NaN) for an unknown stderr: stored as null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def uses_answer_regex(task_config: dict[str, Any]) -> bool:
    """True when the task's strict-match filter is the `#### N` regex of sftpack.answer."""
    for flt in task_config.get("filter_list") or []:
        if flt.get("name") == STRICT_FILTER:
            return any(step.get("function") == "regex" and step.get("regex_pattern") == ANSWER_RE.pattern
                       for step in flt.get("filter") or [])
    return False


def generations(samples_file: Path) -> list[str]:
    """The first generation of each document of a samples file (lm-eval writes one line per doc and filter)."""
    by_doc: dict[int, str] = {}
    with samples_file.open(encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            resps = sample.get("resps") or [[]]
            first = resps[0][0] if resps and resps[0] else ""
            by_doc.setdefault(int(sample["doc_id"]), first if isinstance(first, str) else "")
    return [by_doc[doc] for doc in sorted(by_doc)]


def format_rate(texts: list[str]) -> tuple[float | None, float | None]:
    """(share of texts with a `#### N` answer, its standard error as lm-eval computes it for a mean)."""
    if not texts:
        return None, None
    hits = [1.0 if extract_answer(text) is not None else 0.0 for text in texts]
    n = len(hits)
    mean = sum(hits) / n
    if n < 2:
        return mean, None
    variance = sum((h - mean) ** 2 for h in hits) / (n - 1)
    return mean, math.sqrt(variance / n)


def metric_rows(run: RunOutput) -> list[dict[str, Any]]:
    """[{task, n_shot, filter, metric, value, stderr, higher_is_better}] of one run, format rate included."""
    results = run.results
    rows = []
    for task, metrics in results.get("results", {}).items():
        n_shot = results.get("n-shot", {}).get(task)
        better = results.get("higher_is_better", {}).get(task, {})
        for key, value in metrics.items():
            if "," not in key:
                continue  # alias, name, sample_len, ...
            metric, flt = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            rows.append({"task": task, "n_shot": n_shot, "filter": flt, "metric": metric, "value": number(value),
                         "stderr": number(metrics.get(f"{metric}_stderr,{flt}")),
                         "higher_is_better": better.get(metric)})
        config = results.get("configs", {}).get(task, {})
        if config.get("output_type") == "generate_until" and uses_answer_regex(config) and task in run.samples_files:
            value, stderr = format_rate(generations(run.samples_files[task]))
            rows.append({"task": task, "n_shot": n_shot, "filter": STRICT_FILTER, "metric": FORMAT_RATE,
                         "value": value, "stderr": stderr, "higher_is_better": True})
    return rows


def combine(per_model: dict[str, list[dict[str, Any]]], base_label: str | None) -> list[dict[str, Any]]:
    """One row per (task, n-shot, filter, metric) with every model's value, and the delta to the base model."""
    table: dict[tuple, dict[str, Any]] = {}
    for label, rows in per_model.items():
        for row in rows:
            key = (row["task"], row["n_shot"], row["filter"], row["metric"])
            entry = table.setdefault(key, {"task": row["task"], "n_shot": row["n_shot"], "filter": row["filter"],
                                           "metric": row["metric"], "higher_is_better": row["higher_is_better"],
                                           "values": {}, "delta": {}})
            entry["values"][label] = {"value": row["value"], "stderr": row["stderr"]}
    for entry in table.values():
        base = entry["values"].get(base_label, {}).get("value") if base_label else None
        for label, cell in entry["values"].items():
            if label != base_label and base is not None and cell["value"] is not None:
                entry["delta"][label] = cell["value"] - base
    return list(table.values())


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown table (plus what was evaluated) of a report dict as written to eval.json."""
    labels = [m["label"] for m in report["models"]]
    base = report.get("base_label")
    header = ["Task", "n-shot", "Filter", "Metric"]
    for label in labels:
        header += [label, "±"] + ([f"Δ {label}"] if base and label != base else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i >= 4 or h == "n-shot" else "---" for i, h in enumerate(header)) + "|"]
    for row in report["rows"]:
        arrow = {True: " ↑", False: " ↓"}.get(row.get("higher_is_better"), "")
        cells = [row["task"], "" if row["n_shot"] is None else str(row["n_shot"]), row["filter"],
                 row["metric"] + arrow]
        for label in labels:
            cell = row["values"].get(label, {})
            cells += [_fmt(cell.get("value")), _fmt(cell.get("stderr"))]
            if base and label != base:
                cells.append(_fmt(row["delta"].get(label), signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    settings = report["settings"]
    out = [f"# sftpack eval: {', '.join(settings['tasks'])}", "",
           f"backend `{settings['backend']}`, limit {settings['limit']}, "
           f"num_fewshot {settings['num_fewshot'] if settings['num_fewshot'] is not None else 'task default'}, "
           f"lm-eval {report['environment'].get('lm_eval')}, sftpack {report['environment'].get('git_sha')}", "",
           *lines, "", "| Model | Kind | Path | lm-eval wall s |", "|---|---|---|---:|"]
    for m in report["models"]:
        path = m["path"] + (f" (on {m['base']})" if m.get("base") else "")
        out.append(f"| {m['label']} | {m['kind']} | {path} | {sum(r['wall_s'] for r in m['runs']):.1f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    path = Path(args[0])
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("schema_version") != SCHEMA_VERSION:
        print(f"{path}: schema_version {report.get('schema_version')}, expected {SCHEMA_VERSION}", file=sys.stderr)
        return 1
    out = path.with_suffix(".md")
    write_text(out, render_markdown(report))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
