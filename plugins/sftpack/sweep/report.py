"""The sweep's report, rebuilt from the cells' done.json and questions.json files (never edited by hand):

    report/table.json   schema_version, one row per cell (seeds averaged), comparisons, transfer, environment
    report/table.csv    the rows, flat (sort it in any tool)
    report/table.md     the rows as Markdown, best first
    report/report.md    the table, the best cell per framework, paired framework comparisons, the LoRA -> full
                        transfer section (when the sweep has LoRA and full cells over learning rates), the plots
    report/score.png    the ranking metric with its intervals: lines over one numeric axis, a heatmap for two
    report/cost.png     the ranking metric vs training time and vs peak memory

`sftpack sweep SWEEP.yaml --report-only` rebuilds it. Every number of the ranking metric carries its 95 %
interval over questions (sftpack.stats: Wilson for 0/1 scores); two cells are compared on the same questions
with a paired test (exact McNemar for 0/1 scores) and a difference with p >= 0.05 is marked not significant.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from sftpack import stats
from sftpack.artifacts import write_json, write_text
from sftpack.sweep.schema import SEED_AXIS, Sweep

SCHEMA_VERSION = 1
NOT_SIGNIFICANT = "n.s."
HIDDEN = ("framework", "method", SEED_AXIS)   # axes shown by their own columns or aggregated


# -- rows ------------------------------------------------------------------------------------------------------
def _questions(out: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    if not record.get("questions"):
        return None
    path = out / "cells" / record["cell"] / record["questions"]
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def make_rows(sweep: Sweep, records: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One row per cell (its seeds averaged per question). Each row keeps its per-question values under `_q`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record.get("group") or record["cell"], []).append(record)
    rows = []
    for group, members in groups.items():
        ok = [m for m in members if m.get("status") == "ok"]
        first = members[0]
        row: dict[str, Any] = {
            "cell": group, "axes": {k: v for k, v in first.get("axes", {}).items() if k != SEED_AXIS},
            "framework": first.get("framework"), "method": first.get("normalised", {}).get("method"),
            "learning_rate": first.get("normalised", {}).get("learning_rate"),
            "status": "ok" if len(ok) == len(members) else ", ".join(sorted({m.get("status") for m in members
                                                                            if m.get("status") != "ok"})),
            "status_detail": next((m.get("status_detail") for m in members if m.get("status") != "ok"), None),
            "seeds": [m["axes"][SEED_AXIS] for m in members if SEED_AXIS in m.get("axes", {})]}
        questions = [q for q in (_questions(out, m) for m in ok) if q is not None]
        per_metric = _average(questions)
        row["metrics"] = {name: stats.interval(list(v.values())).to_dict() for name, v in per_metric.items()}
        row["primary"] = row["metrics"].get(sweep.select)
        row["primary_by_seed"] = [m.get("metrics", {}).get(sweep.select, {}).get("mean") for m in ok]
        row["n_questions"] = row["primary"]["n"] if row["primary"] else None
        row["distinct_generations"] = (f"{questions[0]['distinct_generations']}/{questions[0]['generations']}"
                                       if questions and "distinct_generations" in questions[0] else None)
        row["_q"] = per_metric.get(sweep.select)
        row["_hashes"] = questions[0]["doc_hashes"] if questions else {}
        trains = [m.get("train") or {} for m in members]
        row.update(
            final_loss=_mean([t.get("final_loss") for t in trains]),
            train_wall_s=_mean([t.get("wall_s") for t in trains]),
            train_runtime_s=_mean([t.get("train_runtime_s") for t in trains]),
            peak_rss_mib=max((t["peak_rss_largest_process_mib"] for t in trains
                              if t.get("peak_rss_largest_process_mib") is not None), default=None),
            peak_gpu_mib=max((t.get("peak_gpu_torch_reserved_mib") or t.get("peak_gpu_device_used_nvml_mib")
                              for t in trains if t.get("peak_gpu_torch_reserved_mib")
                              or t.get("peak_gpu_device_used_nvml_mib")), default=None),
            tokens_per_s=_mean([t.get("non_padding_tokens_per_s") for t in trains]),
            tokens_estimated=any("ESTIMATE" in str(t.get("non_padding_tokens_source") or "").upper()
                                 or "estimate" in str(t.get("non_padding_tokens_source") or "") for t in trains),
            eval_wall_s=_mean([m.get("eval_wall_s") for m in ok]),
            load_avg_1m=max((t.get("load_avg_1m_after") or 0 for t in trains), default=None) or None)
        rows.append(row)
    return rows


def _average(questions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{metric: {doc: mean over the seeds}} on the documents every seed has."""
    if not questions:
        return {}
    averaged = {}
    for name in questions[0]["scores"]:
        docs = set.intersection(*(set(q["scores"].get(name, {})) for q in questions))
        averaged[name] = {d: sum(q["scores"][name][d] for q in questions) / len(questions)
                          for d in sorted(docs, key=int)}
    return averaged


def compare(a: dict[str, Any], b: dict[str, Any]) -> stats.Paired | None:
    """b vs a on the questions both answered (same documents, same hashes); None when they share none."""
    if not a.get("_q") or not b.get("_q"):
        return None
    docs = [d for d in a["_q"] if d in b["_q"] and a["_hashes"].get(d) == b["_hashes"].get(d)]
    if not docs:
        return None
    return stats.paired([a["_q"][d] for d in docs], [b["_q"][d] for d in docs])


def rank(rows: list[dict[str, Any]]) -> None:
    """Best cell per framework; each row's paired difference to it and whether that is significant."""
    for row in rows:
        row.update(vs_best=None, near_best=None, best_of_framework=False)
    for framework in dict.fromkeys(r["framework"] for r in rows if r["framework"]):
        scored = [r for r in rows if r["framework"] == framework and r["primary"] and r["primary"]["mean"] is not None]
        if not scored:
            continue
        best = max(scored, key=lambda r: r["primary"]["mean"])
        best["best_of_framework"] = True
        for row in scored:
            paired = None if row is best else compare(best, row)
            row["vs_best"] = paired.to_dict() if paired else None
            row["near_best"] = row is best or (paired is not None and not paired.significant())


def framework_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells equal in every axis but the framework, compared on the same questions."""
    by_rest: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rest = {k: v for k, v in row["axes"].items() if k != "framework"}
        by_rest.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(row)
    pairs = []
    for rest, members in by_rest.items():
        for other in members[1:]:
            paired = compare(members[0], other)
            if paired is not None and members[0]["framework"] != other["framework"]:
                pairs.append({"axes": json.loads(rest), "a": members[0]["cell"], "b": other["cell"],
                              "a_framework": members[0]["framework"], "b_framework": other["framework"],
                              **paired.to_dict()})
    return pairs


def transfer(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LoRA -> full, per framework (and any other axis): rank correlation of the learning-rate orderings, the
    ratio of the best learning rates, and whether the full cell at LoRA's best position is in full's near-best
    band (cells whose paired difference to full's best is not significant)."""
    lr_axes = {name for name, axis in sweep.axes.items()
               if axis.key == "learning_rate" or (isinstance(axis.key, dict) and "learning_rate" in axis.key.values())}
    lr_axes.update(("learning_rate", "method"))
    scored = [r for r in rows if r["primary"] and r["primary"]["mean"] is not None and r["learning_rate"] is not None]
    by_method = {m: [r for r in scored if r["method"] == m] for m in ("lora", "full")}
    lora_only = {k for r in by_method["lora"] for k in r["axes"]} - {k for r in by_method["full"] for k in r["axes"]}

    def rest(row: dict[str, Any], drop: set[str]) -> str:
        return json.dumps({k: v for k, v in row["axes"].items() if k not in lr_axes | drop}, sort_keys=True,
                          default=str)

    fulls: dict[str, list[dict[str, Any]]] = {}
    for row in by_method["full"]:
        fulls.setdefault(rest(row, set()), []).append(row)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}   # a LoRA-only axis (rank...) makes one series each
    for row in by_method["lora"]:
        extra = json.dumps({k: row["axes"][k] for k in sorted(lora_only) if k in row["axes"]}, default=str)
        series.setdefault((rest(row, lora_only), extra), []).append(row)
    found = []
    for (key, extra), members in series.items():
        lora = sorted(members, key=lambda r: r["learning_rate"])
        full = sorted(fulls.get(key, []), key=lambda r: r["learning_rate"])
        if len({r["learning_rate"] for r in lora}) < 2 or len({r["learning_rate"] for r in full}) < 2:
            continue
        best_lora = max(lora, key=lambda r: r["primary"]["mean"])
        best_full = max(full, key=lambda r: r["primary"]["mean"])
        band = [r["cell"] for r in full if r is best_full or ((p := compare(best_full, r)) and not p.significant())]
        item = {"group": {**json.loads(key), **json.loads(extra)},
                "lora_learning_rates": [r["learning_rate"] for r in lora],
                "lora_scores": [r["primary"]["mean"] for r in lora],
                "full_learning_rates": [r["learning_rate"] for r in full],
                "full_scores": [r["primary"]["mean"] for r in full],
                "best_lora_learning_rate": best_lora["learning_rate"],
                "best_full_learning_rate": best_full["learning_rate"],
                "best_lr_ratio_lora_over_full": best_lora["learning_rate"] / best_full["learning_rate"],
                "lora_best_ties": sum(r["primary"]["mean"] == best_lora["primary"]["mean"] for r in lora),
                "full_best_ties": sum(r["primary"]["mean"] == best_full["primary"]["mean"] for r in full),
                "full_near_best_band": band, "spearman": None, "lora_best_in_full_band": None,
                "full_at_lora_best_position": None}
        if len(lora) == len(full):
            item["spearman"] = stats.spearman(item["lora_scores"], item["full_scores"])
            twin = full[lora.index(best_lora)]
            item["full_at_lora_best_position"] = twin["cell"]
            item["lora_best_in_full_band"] = twin["cell"] in band
        found.append(item)
    return found


# -- writing ---------------------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _interval(data: dict[str, Any] | None) -> str:
    if not data or data.get("mean") is None:
        return "—"
    return stats.Interval(**data).text(3)


def _vs_best(row: dict[str, Any]) -> str:
    if row["best_of_framework"]:
        return "**best**"
    paired = row["vs_best"]
    if not paired:
        return "—"
    mark = NOT_SIGNIFICANT if not paired["significant"] else "significant"
    return f"{paired['difference']:+.3f} (p={paired['p_value']:.2g}, {mark})"


def table_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    axes = [name for name in dict.fromkeys(k for r in rows for k in r["axes"]) if name not in HIDDEN]
    metrics = [sweep.select] + sorted({m for r in rows for m in r["metrics"]} - {sweep.select})
    head = (["#", "cell", "framework", "method"] + axes + ["status"] + [f"{m} (95 % CI)" for m in metrics[:1]]
            + ["vs best of framework", "distinct outputs"] + metrics[1:]
            + ["final loss", "train s", "peak RSS MiB", "peak GPU MiB", "tokens/s", "eval s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ordered = sorted(rows, key=lambda r: -(r["primary"]["mean"] if r["primary"] and r["primary"]["mean"] is not None
                                           else -1))
    for i, row in enumerate(ordered, 1):
        cells = [str(i), row["cell"], row["framework"] or "(base)", row["method"] or "—"]
        cells += [str(row["axes"].get(a, "")) for a in axes] + [row["status"]]
        cells += [_interval(row["primary"]), _vs_best(row), row["distinct_generations"] or "—"]
        cells += [_interval(row["metrics"].get(m)) for m in metrics[1:]]
        tokens = _num(row["tokens_per_s"], 0) + (" (≈)" if row["tokens_estimated"] and row["tokens_per_s"] else "")
        cells += [_num(row["final_loss"], 3), _num(row["train_wall_s"]), _num(row["peak_rss_mib"], 0),
                  _num(row["peak_gpu_mib"], 0), tokens, _num(row["eval_wall_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    axes = list(dict.fromkeys(k for r in rows for k in r["axes"]))
    metrics = sorted({m for r in rows for m in r["metrics"]})
    head = (["cell", "framework", "method", "learning_rate"] + [f"axis:{a}" for a in axes] + ["status"]
            + [f"{m}:{part}" for m in metrics for part in ("mean", "ci_low", "ci_high", "n")]
            + ["vs_best_difference", "vs_best_p", "near_best", "distinct_generations", "final_loss", "train_wall_s",
               "train_runtime_s", "peak_rss_mib", "peak_gpu_mib", "tokens_per_s", "eval_wall_s"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for row in rows:
        values = [row["cell"], row["framework"], row["method"], row["learning_rate"]]
        values += [row["axes"].get(a) for a in axes] + [row["status"]]
        for m in metrics:
            iv = row["metrics"].get(m) or {}
            values += [iv.get("mean"), iv.get("low"), iv.get("high"), iv.get("n")]
        vs = row["vs_best"] or {}
        values += [vs.get("difference"), vs.get("p_value"), row["near_best"], row["distinct_generations"],
                   row["final_loss"], row["train_wall_s"],
                   row["train_runtime_s"], row["peak_rss_mib"], row["peak_gpu_mib"], row["tokens_per_s"],
                   row["eval_wall_s"]]
        writer.writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def transfer_markdown(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return []
    lines = ["## Transfer: LoRA -> full fine-tuning", "",
             "Per framework: the learning rates of the LoRA and the full cells in increasing order, with the ranking "
             "metric. *Rank correlation*: Spearman's rho between the two score profiles over the learning-rate "
             "order (1 = the same ordering; needs as many LoRA as full learning rates). *Near-best band*: the full "
             "cells whose paired difference to full's best is not significant (p >= 0.05). *Transfers*: whether the "
             "full cell at the position of LoRA's best learning rate is in that band.", "",
             "| group | LoRA lr: score | full lr: score | best LoRA lr | best full lr | ratio LoRA/full | rank "
             "correlation | full near-best band | LoRA's best transfers |", "|---|---|---|---|---|---|---|---|---|"]
    for item in items:
        group = ", ".join(f"{k}={v}" for k, v in item["group"].items())
        lora = ", ".join(f"{lr:g}: {s:.3f}" for lr, s in zip(item["lora_learning_rates"], item["lora_scores"]))
        full = ", ".join(f"{lr:g}: {s:.3f}" for lr, s in zip(item["full_learning_rates"], item["full_scores"]))
        ties = (" (tie of " + str(item["lora_best_ties"]) + ")") if item["lora_best_ties"] > 1 else ""
        full_ties = (" (tie of " + str(item["full_best_ties"]) + ")") if item["full_best_ties"] > 1 else ""
        rho = "undefined (a constant profile)" if item["spearman"] is None and item["full_at_lora_best_position"] \
            else _num(item["spearman"], 2) if item["spearman"] is not None else "— (different counts)"
        verdict = {True: "yes", False: "**no**", None: "—"}[item["lora_best_in_full_band"]]
        if item["full_at_lora_best_position"]:
            verdict += f" ({item['full_at_lora_best_position']})"
        lines.append(f"| {group} | {lora} | {full} | {item['best_lora_learning_rate']:g}{ties} | "
                     f"{item['best_full_learning_rate']:g}{full_ties} | {item['best_lr_ratio_lora_over_full']:.3g} | "
                     f"{rho} | {', '.join(item['full_near_best_band'])} | {verdict} |")
    return lines + [""]


def report_markdown(sweep: Sweep, rows: list[dict[str, Any]], pairs: list[dict[str, Any]],
                    transfers: list[dict[str, Any]], environment: dict[str, Any] | None, plots: list[str]) -> str:
    from sftpack.provenance import summary_line

    spec = sweep.pipeline.eval
    lines = [f"# Sweep `{sweep.name}`", "", sweep.description.strip(), "",
             f"Sweep file `{_rel(sweep.path)}`, base pipeline `{_rel(str(sweep.resolve(sweep.base)))}`; eval "
             f"{', '.join(spec.tasks)} (first task ranks), limit {spec.limit} questions, "
             f"gen_kwargs {spec.gen_kwargs or 'task default'}. Ranking metric: `{sweep.select}`.", ""]
    if environment:
        lines += [f"Environment: {summary_line(environment)}.", ""]
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m")]
    if loads:
        lines += [f"Machine load (1-min average after each training): {min(loads):.2f}–{max(loads):.2f}; times "
                  "include other work on the machine.", ""]
    lines += ["## Cells", "", table_markdown(sweep, rows)]
    lines += ["Intervals: 95 % over questions (Wilson for 0/1 scores, percentile bootstrap otherwise). *vs best of "
              "framework*: the paired difference to that framework's best cell on the same questions (exact McNemar "
              f"for 0/1 scores, else a paired permutation test); `{NOT_SIGNIFICANT}` = p >= 0.05, the two are not "
              "distinguishable on these questions. p-values are not corrected for multiple comparisons. *distinct "
              "outputs*: different generations over the questions (first seed); 1/N = the same text for every "
              "question, a collapsed model whose format rate is not a learned answer format. "
              "tokens/s (≈): ms-swift's figure is estimated (benchmarks/README.md).", ""]
    seeded = [r for r in rows if len(r["primary_by_seed"]) > 1]
    if seeded:
        lines += ["Seeds (ranking metric per seed; the row above averages them per question):", ""]
        lines += [f"- {r['cell']}: seeds {r['seeds']} -> " + ", ".join(_num(v, 3) for v in r["primary_by_seed"])
                  + f" (spread {max(r['primary_by_seed']) - min(r['primary_by_seed']):.3f})" for r in seeded]
        lines.append("")
    lines += ["## Best cell per framework", ""]
    for row in rows:
        if row["best_of_framework"]:
            band = [r["cell"] for r in rows if r["framework"] == row["framework"] and r["near_best"]
                    and r is not row]
            lines.append(f"- **{row['framework'] or 'base'}**: {row['cell']} -- {sweep.select} "
                         f"{_interval(row['primary'])}; not significantly different: {', '.join(band) or 'none'}")
    lines.append("")
    if pairs:
        lines += ["## Frameworks on the same cell (paired)", "", "| cell axes | A | B | A | B | B - A (95 % CI) | "
                  "test | p | |", "|---|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            axes = ", ".join(f"{k}={v}" for k, v in p["axes"].items())
            mark = NOT_SIGNIFICANT if not p["significant"] else "significant"
            lines.append(f"| {axes} | {p['a_framework']} | {p['b_framework']} | {p['mean_a']:.3f} | "
                         f"{p['mean_b']:.3f} | {p['difference']:+.3f} [{_num(p['low'], 3)}, {_num(p['high'], 3)}] | "
                         f"{p['test']} | {p['p_value']:.2g} | {mark} |")
        lines.append("")
    lines += transfer_markdown(transfers)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Cells not ok", ""] + [f"- {r['cell']}: {r['status']}: {r['status_detail']}" for r in failed]
        lines.append("")
    lines += [" ".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots), "",
              "Rebuilt from the cells' records by `sftpack sweep SWEEP --report-only`; do not edit.", ""]
    return "\n".join(lines)


def _rel(path: str | None) -> str:
    from sftpack import frameworks as fw

    try:
        return str(Path(path).resolve().relative_to(fw.REPO_ROOT.resolve()))
    except (TypeError, ValueError):
        return str(path)


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def write_report(sweep: Sweep, records: list[dict[str, Any]], out: Path,
                 base_record: dict[str, Any] | None = None) -> dict[str, Path]:
    from sftpack.sweep import plots

    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    rows = make_rows(sweep, records + ([base_record] if base_record else []), out)
    rank(rows)
    pairs = framework_pairs([r for r in rows if r["framework"]])
    transfers = transfer(sweep, rows)
    env_path = out / "environment.json"
    environment = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else None
    drawn = plots.draw(sweep, rows, folder)
    write_json(folder / "table.json", {"schema_version": SCHEMA_VERSION, "sweep": sweep.name, "select": sweep.select,
                                       "rows": [public(r) for r in rows], "framework_pairs": pairs,
                                       "transfer": transfers, "environment": environment})
    write_text(folder / "table.csv", table_csv(sweep, rows))
    write_text(folder / "table.md", table_markdown(sweep, rows))
    write_text(folder / "report.md", report_markdown(sweep, rows, pairs, transfers, environment, drawn))
    return {"report": folder / "report.md", "table": folder / "table.json"}
