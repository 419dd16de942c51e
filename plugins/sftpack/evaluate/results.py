"""Read lm-eval's output folders, add the format rate, and build the comparison report (JSON + Markdown).

    python -m sftpack.evaluate.results runs/eval/eval.json     # rebuild eval.md from a stored eval.json

The Markdown table is always rendered from the JSON report (`render_markdown(report)`), never edited by hand.
Rows follow lm-eval's own table (task, n-shot, filter, metric), with one value and stderr column per model and,
when the base model was evaluated, each tuned model's delta to it.

Format rate: the share of a task's generations in which `sftpack.answer.extract_answer` finds the strict
`#### N` answer. It is reported for tasks whose `strict-match` filter uses that same regex (the gsm8k-local family
and gsm8k-local-chat); other tasks get no format-rate row.

Intervals and paired tests (sftpack.stats, the same as `sftpack sweep`'s): every value carries a 95 % interval over
the questions (Wilson for 0/1 scores, else bootstrap), and every delta to the base model a paired test on the same
questions (exact McNemar for 0/1 scores, else a paired permutation test); the table marks a delta whose p >= 0.05
"n.s." (not significant).
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


def read_samples(samples_file: Path) -> list[dict[str, Any]]:
    """The records of an lm-eval samples file (one JSON line per document and filter)."""
    with samples_file.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def generations_by_doc(records: list[dict[str, Any]]) -> dict[int, str]:
    """{doc_id: the first generation} of a samples file's records."""
    by_doc: dict[int, str] = {}
    for sample in records:
        resps = sample.get("resps") or [[]]
        first = resps[0][0] if resps and resps[0] else ""
        by_doc.setdefault(int(sample["doc_id"]), first if isinstance(first, str) else "")
    return by_doc


def generations(samples_file: Path) -> list[str]:
    """The first generation of each document of a samples file, in document order."""
    by_doc = generations_by_doc(read_samples(samples_file))
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


def question_values(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{"metric,filter": {doc_id: value}} of a samples file's records, plus the format rate's per-question hits."""
    from sftpack import stats

    scores = stats.question_scores(records)
    scores[f"{FORMAT_RATE},{STRICT_FILTER}"] = {doc: 1.0 if extract_answer(text) is not None else 0.0
                                                for doc, text in generations_by_doc(records).items()}
    return scores


def _with_interval(row: dict[str, Any], values: dict[int, float] | None) -> dict[str, Any]:
    """`row` with `ci` (the interval over its questions) and `questions` ({doc_id: value}, for paired tests)."""
    from sftpack import stats

    if values:
        iv = stats.interval([values[doc] for doc in sorted(values)])
        row["ci"] = {"low": iv.low, "high": iv.high, "method": iv.method, "confidence": iv.confidence}
        row["questions"] = values
    return row


def metric_rows(run: RunOutput) -> list[dict[str, Any]]:
    """[{task, n_shot, filter, metric, value, stderr, higher_is_better, ci, questions}] of one run, format rate
    included; `ci`/`questions` only where lm-eval logged the samples."""
    results = run.results
    rows = []
    for task, metrics in results.get("results", {}).items():
        records = read_samples(run.samples_files[task]) if task in run.samples_files else []
        per_question = question_values(records) if records else {}
        n_shot = results.get("n-shot", {}).get(task)
        better = results.get("higher_is_better", {}).get(task, {})
        for key, value in metrics.items():
            if "," not in key:
                continue  # alias, name, sample_len, ...
            metric, flt = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            rows.append(_with_interval(
                {"task": task, "n_shot": n_shot, "filter": flt, "metric": metric, "value": number(value),
                 "stderr": number(metrics.get(f"{metric}_stderr,{flt}")), "higher_is_better": better.get(metric)},
                per_question.get(key)))
        config = results.get("configs", {}).get(task, {})
        if config.get("output_type") == "generate_until" and uses_answer_regex(config) and task in run.samples_files:
            by_doc = generations_by_doc(records)
            value, stderr = format_rate([by_doc[doc] for doc in sorted(by_doc)])
            rows.append(_with_interval({"task": task, "n_shot": n_shot, "filter": STRICT_FILTER, "metric": FORMAT_RATE,
                                        "value": value, "stderr": stderr, "higher_is_better": True},
                                       per_question.get(f"{FORMAT_RATE},{STRICT_FILTER}")))
    return rows


def combine(per_model: dict[str, list[dict[str, Any]]], base_label: str | None) -> list[dict[str, Any]]:
    """One row per (task, n-shot, filter, metric) with every model's value and interval, and the delta to the base
    model with its paired test on the questions both answered (`paired`)."""
    from sftpack import stats

    table: dict[tuple, dict[str, Any]] = {}
    questions: dict[tuple, dict[str, dict[int, float]]] = {}
    for label, rows in per_model.items():
        for row in rows:
            key = (row["task"], row["n_shot"], row["filter"], row["metric"])
            entry = table.setdefault(key, {"task": row["task"], "n_shot": row["n_shot"], "filter": row["filter"],
                                           "metric": row["metric"], "higher_is_better": row["higher_is_better"],
                                           "values": {}, "delta": {}, "paired": {}})
            entry["values"][label] = {"value": row["value"], "stderr": row["stderr"], "ci": row.get("ci")}
            if row.get("questions"):
                questions.setdefault(key, {})[label] = row["questions"]
    for key, entry in table.items():
        base = entry["values"].get(base_label, {}).get("value") if base_label else None
        for label, cell in entry["values"].items():
            if label != base_label and base is not None and cell["value"] is not None:
                entry["delta"][label] = cell["value"] - base
                by_label = questions.get(key, {})
                if base_label in by_label and label in by_label:
                    docs = sorted(set(by_label[base_label]) & set(by_label[label]))
                    test = stats.paired([by_label[base_label][d] for d in docs], [by_label[label][d] for d in docs])
                    entry["paired"][label] = {k: v for k, v in test.to_dict().items() if k not in ("mean_a", "mean_b")}
    return list(table.values())


def _ci(ci: dict[str, Any] | None) -> str:
    return "" if not ci or ci.get("low") is None else f" [{ci['low']:.2f}, {ci['high']:.2f}]"


def _sig(test: dict[str, Any] | None) -> str:
    if not test or test.get("p_value") is None:
        return ""
    return f" (p={test['p_value']:.2g})" if test.get("significant") else " n.s."


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def table(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of `rows` (eval.json rows): each model's value [95 % interval], stderr, and each tuned
    model's delta to the base ("n.s." when the paired test says not significant)."""
    labels = [m["label"] for m in report["models"]]
    base = report.get("base_label")
    header = ["Task", "n-shot", "Filter", "Metric"]
    for label in labels:
        header += [label, "±"] + ([f"Δ {label}"] if base and label != base else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i >= 4 or h == "n-shot" else "---" for i, h in enumerate(header)) + "|"]
    for row in rows:
        arrow = {True: " ↑", False: " ↓"}.get(row.get("higher_is_better"), "")
        cells = [row["task"], "" if row["n_shot"] is None else str(row["n_shot"]), row["filter"],
                 row["metric"] + arrow]
        for label in labels:
            cell = row["values"].get(label, {})
            cells += [_fmt(cell.get("value")) + _ci(cell.get("ci")), _fmt(cell.get("stderr"))]
            if base and label != base:
                cells.append(_fmt(row["delta"].get(label), signed=True) + _sig((row.get("paired") or {}).get(label)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown table (plus what was evaluated) of a report dict as written to eval.json."""
    lines = table(report, report["rows"])
    settings = report["settings"]
    out = [f"# sftpack eval: {', '.join(settings['tasks'])}", "",
           f"backend `{settings['backend']}`, limit {settings['limit']}, "
           f"num_fewshot {settings['num_fewshot'] if settings['num_fewshot'] is not None else 'task default'}, "
           f"lm-eval {report['environment'].get('lm_eval')}, sftpack {report['environment'].get('git_sha')}", "",
           *lines, "", "Values: mean [95 % interval over the questions]; Δ: to the base on the same questions, "
           "\"n.s.\" when the paired test (exact McNemar for 0/1 scores) gives p ≥ 0.05.", "",
           "| Model | Kind | Path | lm-eval wall s |", "|---|---|---|---:|"]
    for m in report["models"]:
        path = m["path"] + (f" (on {m['base']})" if m.get("base") else "")
        out.append(f"| {m['label']} | {m['kind']} | {path} | {sum(r['wall_s'] for r in m['runs']):.1f} |")
    return "\n".join(out + generated_tasks_markdown(report.get("generated_tasks") or [])) + "\n"


def generated_tasks_markdown(tasks: list[dict[str, Any]]) -> list[str]:
    """The tasks `--dataset` generated: what each reads and how it prompts (lines of Markdown; none: [])."""
    if not tasks:
        return []
    lines = ["", "Generated tasks (`--dataset`; each YAML's header has the `lm_eval` command that re-runs it):", "",
             "| Task | Dataset | Kind | Documents | Dropped | Prompted as | Task file |", "|---|---|---|---:|---|---|---|"]
    for t in tasks:
        dropped = ", ".join(f"{n}: {reason}" for reason, n in t["dropped"].items()) or "none"
        lines.append(f"| {t['task']} | {t['dataset']} ({t['formatting']}) | {t['kind'].replace('_', ' ')} | "
                     f"{t['documents']} | {dropped} | {t['framework']} `{t['template']}` ({Path(t['config']).name}) | "
                     f"{t['yaml']} |")
    return lines


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
