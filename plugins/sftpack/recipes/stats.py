"""The stats of one recipe run: `<name>.stats.json` (the record) and `<name>.stats.md` (rebuilt from it).

Rows in/out per step with each step's own figures (duplicates removed, quotas delivered, ...), the written
datasets with their rows, sha256, per-tag counts (language, category, variant) and token lengths, the
warnings, the environment (versions, git sha) and timing. Unknown values are null.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PACKAGES = ("sftpack", "numpy", "orjson", "xxhash", "datasketch", "tokenizers", "pyyaml")


def environment() -> dict[str, Any]:
    import os

    from sftpack.provenance import git_sha, versions

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "packages": versions(*PACKAGES), "git_sha": git_sha()}


def build(plan, run, outputs, steps, wall_s: float, info_path: Path) -> dict[str, Any]:
    warnings = [f"{s.step} (steps[{s.index}]): {w}" for s in steps for w in s.warnings]
    rows_read = run.rows_read
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": {"path": str(plan.path), "sha256": plan.sha256, "description": plan.description,
                   "seed": plan.seed, "vars": {k: v for k, v in plan.vars.items() if k != "recipe_dir"}},
        "inputs": [{"name": spec.name, "path": str(Path(spec.path).resolve()) if Path(spec.path).exists()
                    else spec.path, "files": sum(1 for f in run.files if f.input == i)}
                   for i, spec in enumerate(plan.inputs)],
        "rows_read": rows_read,
        "steps": [{"index": s.index, "step": s.step, "kind": s.kind, "rows_in": s.rows_in, "rows_out": s.rows_out,
                   "details": s.details, "warnings": s.warnings} for s in steps],
        "outputs": [{"dataset": o.dataset, "file": str(o.file.resolve()), "rows": o.rows, "sha256": o.sha256,
                     "tags": o.tags, "tokens": o.tokens} for o in outputs],
        "dataset_info": str(info_path.resolve()),
        "entry": plan.entry,
        "warnings": warnings,
        "timing": {"wall_s": round(wall_s, 3), "pass_s": run.pass_seconds, "workers": run.workers,
                   "rows_read_per_s": round(rows_read / wall_s) if wall_s > 0 else None},
        "environment": environment(),
    }


def to_json(stats: dict) -> str:
    return json.dumps(stats, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


SHOWN_ITEMS = 8


def _cell(value: Any, depth: int = 0) -> str:
    """One Markdown table cell; nested mappings in parentheses, long ones cut (the JSON has them all)."""
    if isinstance(value, dict):
        items = list(value.items())
        more = f", ... ({len(items)} in all)" if depth and len(items) > SHOWN_ITEMS else ""
        if depth:
            return "(" + ", ".join(f"{k} {_cell(v, depth + 1)}" for k, v in items[:SHOWN_ITEMS]) + more + ")"
        return "; ".join(f"{k}: {_cell(v, depth + 1)}" for k, v in items)
    if isinstance(value, list):
        return f"{len(value)} items" if value and isinstance(value[0], dict) else ", ".join(map(str, value))
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def to_markdown(stats: dict) -> str:
    """The report, rebuilt from the stats record alone."""
    recipe = stats["recipe"]
    lines = [f"# Recipe stats: {Path(recipe['path']).name}", ""]
    if recipe["description"]:
        lines += [recipe["description"].strip(), ""]
    lines += [f"- recipe: `{recipe['path']}` (sha256 `{recipe['sha256'][:12]}`), seed {recipe['seed']}",
              f"- rows read: {stats['rows_read']:,}; wall time {stats['timing']['wall_s']} s "
              f"({stats['timing']['workers']} workers)",
              f"- git sha: {stats['environment']['git_sha']}", "",
              "## Steps", "", "| # | step | rows in | rows out | details |", "| --- | --- | ---: | ---: | --- |"]
    for step in stats["steps"]:
        details = {k: v for k, v in step["details"].items() if k != "examples"}
        lines.append(f"| {step['index']} | {step['step']} | {step['rows_in']:,} | {step['rows_out']:,} | "
                     f"{_cell(details)} |")
    lines += ["", "## Outputs", "", "| dataset | rows | tags | tokens | sha256 |", "| --- | ---: | --- | --- | --- |"]
    for out in stats["outputs"]:
        tokens = out["tokens"]
        token_text = (f"mean {tokens['mean']}, p50 {tokens['p50']}, p90 {tokens['p90']}, max {tokens['max']}, "
                      f"total {tokens['total']:,}") if tokens else "-"
        lines.append(f"| {out['dataset']} | {out['rows']:,} | {_cell(out['tags']) or '-'} | {token_text} | "
                     f"`{out['sha256'][:12]}` |")
    examples = [(s, e) for s in stats["steps"] for e in s["details"].get("examples", [])]
    if examples:
        lines += ["", "## Near-duplicate examples", ""]
        lines += [f"- {e['removed']} ~ {e['kept']} (Jaccard ≈ {e['jaccard']})" for _, e in examples]
    if stats["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in stats["warnings"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # rebuild the Markdown from a stats JSON: python -m sftpack.recipes.stats X.stats.json
    source = Path(sys.argv[1])
    source.with_suffix(".md").write_text(to_markdown(json.loads(source.read_text(encoding="utf-8"))))
