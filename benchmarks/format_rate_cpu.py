"""Format-rate variance of the demo: many `sftpack run` outputs side by side, with the trained models' test NLL.

    sftpack run my_variant.yaml --out runs/fr/A          # one run per variant of benchmarks/pipelines/tiny_cpu.yaml
    .venv/bin/python benchmarks/format_rate_cpu.py runs/fr/A runs/fr/B ... [--nll 40] [--out DIR]
    .venv/bin/python benchmarks/format_rate_cpu.py --report benchmarks/results/format_rate_cpu/<session>

The demo's headline (the strict `#### N` format rate of 40 greedy generations) is a noisy readout at a CPU
budget: a small model that has not learnt to stop falls into a greedy loop and never writes the answer line. This
collects, per run, what its pipeline changed against the shipped `tiny_cpu.yaml` (the train overrides), each
trained model's format rate, strict exact match, first/final training loss and training wall time (from the run's
own report/summary.json), and, with `--nll N`, the teacher-forced negative log-likelihood per answer token of
each trained model on the first N test answers in the chat prompt training used: a smooth measure of what the
model learnt, to set beside the format rate. Nothing is asserted.

Writes <out>/result.json (schema_version 1), report.md (rebuilt from result.json alone by `--report`) and
pipelines/<run>.yaml (each run's pipeline as it ran).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))
DEFAULT_OUT = REPO / "benchmarks" / "results" / "format_rate_cpu"
SHIPPED = REPO / "benchmarks" / "pipelines" / "tiny_cpu.yaml"
SCHEMA_VERSION = 1
FORMAT = "gsm8k-local-chat strict-match format_rate"
STRICT = "gsm8k-local-chat strict-match exact_match"


def _settings(spec: dict, framework: str) -> dict:
    """A pipeline's model and data keys (`model.shape`, `data.source`, ...) and `framework`'s train overrides."""
    flat = {f"{section}.{k}": v for section in ("model", "data") for k, v in (spec.get(section) or {}).items()}
    overrides = next((e.get("overrides", {}) for e in spec.get("train", []) if e.get("framework") == framework), {})
    return {**flat, **overrides}


def _changes(pipeline: Path, framework: str, shipped: dict) -> dict:
    """What the run's pipeline sets differently from the shipped tiny_cpu.yaml for `framework`'s model."""
    if not pipeline.is_file():
        return {}
    mine = _settings(yaml.safe_load(pipeline.read_text(encoding="utf-8")), framework)
    base = _settings(shipped, framework)
    return {k: mine.get(k) for k in sorted(set(mine) | set(base)) if mine.get(k) != base.get(k)}


def answer_nll(model_dir: Path, questions: int) -> float:
    """Mean NLL per answer token (answer + <|im_end|>) of the first `questions` sample test rows, prompt rendered by
    the model's own chat template with the generation prompt (the eval task's and training's prompt)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftpack.samples import sample_path

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    rows = [json.loads(line) for line in sample_path("gsm8k", "test").read_text(encoding="utf-8").splitlines()]
    total, count = 0.0, 0
    for row in rows[:questions]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(row["answer"] + "<|im_end|>")["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logprobs = model(ids).logits[0].log_softmax(-1)
        targets = ids[0, len(prompt_ids):]
        picked = logprobs[len(prompt_ids) - 1:-1].gather(1, targets[:, None])
        total -= float(picked.sum())
        count += len(answer_ids)
    return round(total / count, 3)


def collect(run: Path, summary: dict, shipped: dict, nll: int) -> list[dict]:
    """One row per trained model of the run whose report/summary.json is `summary`."""
    pipeline = Path(summary["pipeline"]["path"])
    values = summary["eval"]["values"]
    rows = []
    for name, train in summary["train"].items():
        framework = train.get("framework", name)
        row = {"run": run.name, "pipeline": pipeline.name, "framework": framework,
               "changes": _changes(pipeline, framework, shipped),
               "format_rate": values.get(name, {}).get(FORMAT), "strict_exact_match": values.get(name, {}).get(STRICT),
               "base_format_rate": values.get(summary["eval"]["base_label"], {}).get(FORMAT),
               "first_loss": train.get("first_loss"), "final_loss": train.get("final_loss"),
               "steps": train.get("steps"), "train_wall_s": train.get("wall_s"),
               "trained_together": summary.get("trained_together"), "threads": summary.get("threads"),
               "load_avg_1m_before": train.get("load_avg_1m_before"), "answer_nll": None}
        if nll and train.get("trained_model") and Path(train["trained_model"]).is_dir():
            row["answer_nll"] = answer_nll(Path(train["trained_model"]), nll)
        rows.append(row)
    return rows


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def report(result: dict) -> str:
    lines = ["# Demo format rate: runs side by side", "",
             f"{result['created_utc']}, git `{result['git']}`, {result['cores']} cores. Each row is one trained model "
             "of one `sftpack run`; `changes` are its model/data keys and train overrides that differ from the "
             "shipped benchmarks/pipelines/tiny_cpu.yaml. Format rate = strict `#### N` in 40 greedy chat generations "
             f"(0 % for every base model). Answer NLL: teacher-forced, per answer token, first {result['nll_questions']} "
             "test answers (lower = learnt more).", "",
             "| run | framework | changes | format rate | strict EM | loss first -> final | answer NLL | train wall s |",
             "|---|---|---|---:|---:|---|---:|---:|"]
    for row in result["rows"]:
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "(as shipped)"
        loss = "" if row["final_loss"] is None else f"{row['first_loss']:.2f} -> {row['final_loss']:.2f}"
        nll = "" if row["answer_nll"] is None else f"{row['answer_nll']:.3f}"
        lines.append(f"| {row['run']} | {row['framework']} | {changes} | {_pct(row['format_rate'])} | "
                     f"{_pct(row['strict_exact_match'])} | {loss} | {nll} | {row['train_wall_s'] or 0:.0f} |")
    if result.get("notes"):
        lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="`sftpack run --out` folders (each has report/summary.json)")
    parser.add_argument("--nll", type=int, default=0, metavar="N", help="answer NLL on the first N test rows (0: off)")
    parser.add_argument("--out", type=Path, help=f"result folder (default {DEFAULT_OUT}/<UTC session>)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (machine load, ...)")
    parser.add_argument("--report", type=Path, metavar="SESSION", help="rebuild SESSION/report.md from its result.json")
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads((args.report / "result.json").read_text(encoding="utf-8"))
        (args.report / "report.md").write_text(report(result), encoding="utf-8")
        return 0
    if not args.runs:
        parser.error("give the run folders, or --report SESSION")
    missing = [str(r) for r in args.runs if not (r / "report" / "summary.json").is_file()]
    if missing:
        parser.error(f"no report/summary.json in: {', '.join(missing)}")
    from sftpack.provenance import capture, git_sha, utc_now

    summaries = {run: json.loads((run / "report" / "summary.json").read_text(encoding="utf-8")) for run in args.runs}
    shipped = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    created, environment = utc_now(), capture()
    result = {"schema_version": SCHEMA_VERSION, "created_utc": created, "git": git_sha(),
              "cores": environment["cpu"]["usable_cores"], "environment": environment, "nll_questions": args.nll,
              "notes": args.note,
              "rows": [row for run, summary in summaries.items() for row in collect(run, summary, shipped, args.nll)]}
    out = args.out or DEFAULT_OUT / created.replace("-", "").replace(":", "")
    (out / "pipelines").mkdir(parents=True, exist_ok=True)
    for run, summary in summaries.items():   # each run's pipeline as it ran, beside the result
        if Path(summary["pipeline"]["path"]).is_file():
            shutil.copy(summary["pipeline"]["path"], out / "pipelines" / f"{run.name}.yaml")
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(result), encoding="utf-8")
    print(report(result))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
