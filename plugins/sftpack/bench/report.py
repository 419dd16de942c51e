"""Rebuild the benchmark report (Markdown + PNG plots) from stored results; never edited by hand.

    sftpack bench report                                   # every suite under benchmarks/results/
    sftpack bench report --suite cpu_tiny --readme benchmarks/README.md
    python -m sftpack.bench report ...                     # the same

Per suite, from its latest session (or --session): `report.md` (environment line, a table per run with the
median and min-max over repeats, a Swift / LLaMA-Factory ratio per comparison pair, failures and skips with
their reasons, the harness overhead) and `time.png`, `memory.png`, `loss.png`. With --readme, the section
between `<!-- bench:SUITE -->` and `<!-- /bench:SUITE -->` of that file is replaced by the same tables.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sftpack.bench.compare import not_comparable
from sftpack.bench.results import load_session, sessions
from sftpack.errors import SftpackError
from sftpack.frameworks import ADAPTERS
from sftpack.plots import COLORS, pyplot, save
from sftpack.provenance import summary_line

SHORT = {name: adapter.short for name, adapter in ADAPTERS.items()}
PLOTS = ("time.png", "memory.png", "loss.png")


@dataclass
class RunSummary:
    """One run name's repeats, aggregated."""

    run: str
    framework: str
    group: str | None
    results: list = field(default_factory=list)

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.results if r["status"] == "ok"]

    def values(self, path: str) -> list[float]:
        out = []
        for result in self.ok:
            if path == "cpu_s":  # user + system CPU of the run's processes
                parts = [result.get("cpu_user_s"), result.get("cpu_system_s")]
                if all(isinstance(p, (int, float)) for p in parts):
                    out.append(float(sum(parts)))
                continue
            if path == "utilisation.mfu_pct":   # stored as a share, shown in percent
                mfu = (result.get("utilisation") or {}).get("mfu")
                if isinstance(mfu, (int, float)):
                    out.append(100.0 * mfu)
                continue
            value: Any = result
            for key in path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(float(value))
        return out

    def median(self, path: str) -> float | None:
        values = self.values(path)
        return statistics.median(values) if values else None

    def estimated_tokens(self) -> bool:
        return any(str(r["throughput"].get("non_padding_tokens_source") or "").startswith("ESTIMATE")
                   for r in self.ok)


def summarise(results: Iterable[dict]) -> list[RunSummary]:
    summaries: dict[str, RunSummary] = {}
    for result in results:
        summary = summaries.setdefault(result["run"], RunSummary(result["run"], result["framework"], result["group"]))
        summary.results.append(result)
    return list(summaries.values())


# -- text -----------------------------------------------------------------------------------------------------
def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _cell(summary: RunSummary, path: str, digits: int) -> str:
    values = summary.values(path)
    if not values:
        return "–"
    text = _num(statistics.median(values), digits)
    if len(values) > 1:
        text += f" ({_num(min(values), digits)}–{_num(max(values), digits)})"
    return text


def _params(summary: RunSummary) -> str:
    if not summary.ok:
        return "–"
    first = summary.ok[0]
    trainable, total, percent = first.get("trainable_params"), first.get("total_params"), first.get("trainable_percent")
    if trainable is None or total is None:
        return "–"
    return f"{trainable:,} / {total:,} ({percent:.2f} %)"


def _gpu(results: list[dict]) -> bool:
    return any((r.get("gpus") or 0) > 0 for r in results)


def runs_table(summaries: list[RunSummary], gpu: bool) -> str:
    head = ["run", "framework", "group", "ok / runs", "wall s", "train s", "CPU s"]
    if gpu:
        head += ["GPU NVML tree MiB", "GPU torch reserved MiB", "GPU torch allocated MiB", "MFU %"]
    head += ["peak RSS largest proc MiB", "peak PSS tree MiB", "non-pad tokens/s", "samples/s", "final loss",
             "trainable / total params"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        tokens = _cell(s, "throughput.non_padding_tokens_per_s", 0)
        if s.estimated_tokens() and tokens != "–":
            tokens = "≈ " + tokens
        skipped = all(r["status"] == "skipped" for r in s.results)
        row = [s.run, SHORT[s.framework], s.group or "–", "skipped" if skipped else f"{len(s.ok)} / {len(s.results)}",
               _cell(s, "wall_s", 1), _cell(s, "train_runtime_s", 2), _cell(s, "cpu_s", 1)]
        if gpu:
            row += [_cell(s, "memory.peak_gpu_tree_nvml_mib", 0), _cell(s, "memory.peak_gpu_torch_reserved_mib", 0),
                    _cell(s, "memory.peak_gpu_torch_allocated_mib", 0), _cell(s, "utilisation.mfu_pct", 1)]
        row += [_cell(s, "memory.peak_rss_largest_process_mib", 0), _cell(s, "memory.peak_pss_tree_mib", 0), tokens,
                _cell(s, "throughput.samples_per_s", 1), _cell(s, "final_loss", 3), _params(s)]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


RATIO_METRICS = [("wall time (s)", "wall_s", 1), ("training-only time (s)", "train_runtime_s", 2),
                 ("CPU time, user + system (s)", "cpu_s", 1),
                 ("peak RSS, largest process (MiB)", "memory.peak_rss_largest_process_mib", 0),
                 ("peak PSS, process tree (MiB)", "memory.peak_pss_tree_mib", 0),
                 ("GPU NVML, process tree (MiB)", "memory.peak_gpu_tree_nvml_mib", 0),
                 ("GPU torch max reserved (MiB)", "memory.peak_gpu_torch_reserved_mib", 0),
                 ("GPU torch max allocated (MiB)", "memory.peak_gpu_torch_allocated_mib", 0),
                 ("non-padding tokens/s", "throughput.non_padding_tokens_per_s", 0),
                 ("MFU (%)", "utilisation.mfu_pct", 1)]


def _worst_load(summary: RunSummary) -> dict:
    """The run's result with the highest load around it (the conditions its time figures carry)."""
    def load(result: dict) -> float:
        return max([result.get(k) or 0.0 for k in ("load_avg_1m_before", "load_avg_1m_after")])

    return max(summary.ok, key=load) if summary.ok else {}


def ratio_table(summaries: list[RunSummary], fairness: list[dict], cores: int | None = None) -> str:
    rows = ["| pair | metric | LF (median) | Swift (median) | Swift / LF |", "|---|---|---|---|---|"]
    for verdict in fairness:
        by_name = {s.run: s for s in summaries}
        lf, swift = by_name.get(verdict["llamafactory"]), by_name.get(verdict["swift"])
        if lf is None or swift is None:
            continue
        label = verdict["group"]
        if not verdict["comparable"]:
            keys = ", ".join(verdict["differences"])
            rows.append(f"| {label} | NOT COMPARABLE (differs in: {keys}) | | | |")
            continue
        conditions = [r for r in not_comparable(_worst_load(lf), _worst_load(swift), cores) if "load" in r]
        if conditions:
            rows.append(f"| {label} | **NOT COMPARABLE on time: {'; '.join(conditions)}** | | | |")
        for name, path, digits in RATIO_METRICS:
            a, b = lf.median(path), swift.median(path)
            if a is None and b is None:
                continue
            ratio = f"{b / a:.2f}x" if a and b is not None else "–"
            if path.endswith("tokens_per_s") and (lf.estimated_tokens() or swift.estimated_tokens()):
                ratio = "≈ " + ratio if ratio != "–" else ratio
            rows.append(f"| {label} | {name} | {_num(a, digits)} | {_num(b, digits)} | {ratio} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def problems(results: list[dict]) -> str:
    lines = []
    for r in results:
        if r["status"] == "ok":
            continue
        detail = r.get("status_detail") or ""
        tail = (r.get("log_tail") or "").strip().splitlines()
        last = f" — last log line: `{tail[-1].strip()[:160]}`" if tail else ""
        lines.append(f"- {r['run']} r{r['repeat']}: **{r['status']}** — {detail}{last}")
    return "\n".join(lines)


def overhead_text(overhead: dict | None) -> str:
    if not overhead:
        return ""
    if "error" in overhead:
        return f"Harness overhead: not measured ({overhead['error']})."
    pairs = ", ".join(f"{x:+.2f}" for x in overhead.get("pair_wall_overhead_pct", []))
    return (f"Harness overhead (`{overhead['run']}`, {overhead.get('pairs_ok', overhead['repeats'])} pairs of the same command bare and under "
            f"the harness, back to back): wall **{overhead['wall_overhead_pct']:+.2f} %** (median of the pairs: "
            f"{pairs} %; the bare runs themselves spread {overhead['bare_wall_spread_pct']:.1f} %), sampler thread "
            f"CPU **{overhead['sampler_cpu_pct_of_wall']:.2f} %** of one core, log parsing "
            f"{overhead['parse_s'] * 1000:.0f} ms; harness process peak RSS "
            f"**{overhead['harness_process_peak_rss_mib']:.0f} MiB** (the whole process), training process peak RSS "
            f"{overhead['child_peak_rss_delta_mib']:+.1f} MiB vs bare. Targets: < {overhead['targets']['wall_pct']:g} "
            f"% wall, < {overhead['targets']['memory_mib']:g} MiB.")


def load_note(results: list[dict], environment: dict) -> str | None:
    loads = [r.get(k) for r in results if r["status"] != "skipped"
             for k in ("load_avg_1m_before", "load_avg_1m_after") if r.get(k) is not None]
    if not loads:
        return None
    cores = (environment.get("cpu") or {}).get("usable_cores") or (environment.get("cpu") or {}).get("logical_cores")
    text = (f"Machine load (1-min average, the benchmark's own run included) around the runs: "
            f"{min(loads):.2f}–{max(loads):.2f} on {cores} cores.")
    if cores and max(loads) > cores:  # a run keeps at most ~`cores` threads busy itself
        text += (" **Other work ran beside the benchmark: wall, training and CPU times are inflated and noisier "
                 "than on an idle machine (torch's threads spin while they wait for a core); memory is not.**")
    return text


def notes(results: list[dict]) -> list[str]:
    out = [("Medians over repeats, (min–max) when more than one. *wall*: process start to exit as the harness saw "
            "it (imports, model and data loading, training, saving); *train*: the Trainer's own `train_runtime` "
            "(training loop only); *CPU s*: user + system CPU time of the run's processes."),
           ("*peak RSS largest proc*: kernel high-water mark of the largest single process (wait4 rusage); "
            "*peak PSS tree*: sampled sum of PSS over the process tree (Swift's CLI launches its trainer as a "
            "child process, so its tree holds two Python processes).")]
    if _gpu(results):
        out.append("*GPU NVML tree*: NVML per-process memory of the run's processes, sampled from outside (CUDA "
                   "context and allocator cache included); *GPU torch reserved / allocated*: the framework's own "
                   "torch max counters inside training (LLaMA-Factory RECORD_VRAM=1 logs both; Swift logs reserved "
                   "only), 0.01 GiB resolution.")
        formula = next(((r.get("utilisation") or {}).get("formula") for r in results
                        if (r.get("utilisation") or {}).get("formula")), None)
        peaks = sorted({(r.get("utilisation") or {}).get("peak_source") for r in results
                        if (r.get("utilisation") or {}).get("peak_source")})
        if formula:
            out.append(f"*MFU*: {formula}. Peak: {'; '.join(peaks) or 'unknown'}.")
    if any(str(r["throughput"].get("non_padding_tokens_source") or "").startswith("ESTIMATE") for r in results):
        out.append("*non-pad tokens/s*: LLaMA-Factory counts non-padding tokens exactly; ms-swift logs only padded "
                   "counts, so its figure (≈) is samples seen × its mean tokenised length of the training set.")
    return [f"- {line}" for line in out]


def _session_header(session: dict) -> list[str]:
    model = session.get("model") or {}
    lines = [f"Environment: {summary_line(session['environment'])}.",
             f"Session `{session['session']}` (suite file `{session['suite_file']}`); model: {model.get('source')}."]
    return lines


def render_section(session: dict, results: list[dict], image_prefix: str | None) -> str:
    """The tables (for report.md and the README section)."""
    summaries = summarise(results)
    parts = _session_header(session) + ["", runs_table(summaries, _gpu(results))]
    cpu = (session.get("environment") or {}).get("cpu") or {}
    ratios = ratio_table(summaries, session.get("fairness") or [], cpu.get("usable_cores") or cpu.get("logical_cores"))
    if ratios:
        parts += ["", ratios]
    trouble = problems(results)
    if trouble:
        parts += ["", "Runs that did not finish ok (kept in their result folders):", "", trouble]
    overhead = overhead_text(session.get("overhead"))
    if overhead:
        parts += ["", overhead]
    load = load_note(results, session.get("environment") or {})
    if load:
        parts += ["", load]
    parts += [""] + notes(results)
    if image_prefix is not None:
        parts += ["", " ".join(f"![{name[:-4]}]({image_prefix}{name})" for name in PLOTS)]
    return "\n".join(parts).replace("\n\n\n", "\n\n")


def render_markdown(session: dict, results: list[dict]) -> str:
    return (f"# Benchmark report: {session['suite']}\n\n"
            f"Rebuilt by `sftpack bench report` from `{session['session']}/` (result.json per run); do not edit.\n\n"
            + render_section(session, results, image_prefix="") + "\n")


def format_table_text(results: list) -> str:
    """A plain table for the terminal after a run (RunResult objects or result dicts)."""
    dicts = [r if isinstance(r, dict) else r.to_dict() for r in results]
    return runs_table(summarise(dicts), _gpu(dicts))


# -- plots ----------------------------------------------------------------------------------------------------
def _bars(ax, summaries: list[RunSummary], path: str, title: str, unit: str) -> bool:
    groups = list(dict.fromkeys(s.group or s.run for s in summaries))
    width = 0.38
    drawn = False
    for offset, framework in ((-width / 2, "llamafactory"), (width / 2, "swift")):
        xs, ys, lo, hi = [], [], [], []
        for i, group in enumerate(groups):
            match = [s for s in summaries if (s.group or s.run) == group and s.framework == framework]
            values = match[0].values(path) if match else []
            if values:
                med = statistics.median(values)
                xs.append(i + offset)
                ys.append(med)
                lo.append(med - min(values))
                hi.append(max(values) - med)
        if xs:
            drawn = True
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=COLORS[framework], label=SHORT[framework])
            for x, y, top in zip(xs, ys, hi):  # the median's value, above its min-max bar
                ax.annotate(f"{y:,.1f}" if y < 100 else f"{y:,.0f}", (x, y + top), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.margins(y=0.15)
    return drawn


def _figure(panels: list[tuple[str, str, str]], summaries: list[RunSummary], suptitle: str, path: Path) -> None:
    plt = pyplot()

    panels = [p for p in panels if any(s.values(p[0]) for s in summaries)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (metric, title, unit) in zip(axes[0], panels):
        _bars(ax, summaries, metric, title, unit)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles, labels, loc="upper left", ncol=2, fontsize=9, frameon=False,
               title="median, bars: min–max", title_fontsize=8)
    save(fig, path)


def plot_loss(summaries: list[RunSummary], suptitle: str, path: Path) -> None:
    plt = pyplot()

    groups = list(dict.fromkeys(s.group or s.run for s in summaries))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.6 * max(len(groups), 1), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for s in (s for s in summaries if (s.group or s.run) == group):
            for k, result in enumerate(s.ok):
                curve = result.get("loss_curve") or []
                if curve:
                    ax.plot([p[0] for p in curve], [p[1] for p in curve], color=COLORS[s.framework], alpha=0.8,
                            linewidth=1.2, label=f"{SHORT[s.framework]} ({s.run})" if k == 0 else None)
        ax.set_title(f"training loss: {group}", fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    save(fig, path)


def write_plots(session: dict, results: list[dict], out: Path) -> list[Path]:
    summaries = [s for s in summarise(results) if s.ok]
    title = f"{session['suite']} ({session['session']})"
    _figure([("wall_s", "wall time (process start to exit)", "s"),
             ("train_runtime_s", "training-only time (train_runtime)", "s"),
             ("throughput.non_padding_tokens_per_s", "non-padding tokens/s (Swift: estimate on CPU)", "tokens/s")],
            summaries, title + ": time", out / PLOTS[0])
    _figure([("memory.peak_rss_largest_process_mib", "peak RSS, largest process", "MiB"),
             ("memory.peak_pss_tree_mib", "peak PSS, process tree", "MiB"),
             ("memory.peak_gpu_tree_nvml_mib", "GPU, NVML process tree", "MiB"),
             ("memory.peak_gpu_torch_reserved_mib", "GPU, torch max reserved", "MiB")],
            summaries, title + ": peak memory", out / PLOTS[1])
    plot_loss(summaries, title + ": loss curves (each repeat)", out / PLOTS[2])
    return [out / name for name in PLOTS]


# -- entry point ----------------------------------------------------------------------------------------------
def pick_session(suite_dir: Path, session: str | None) -> Path:
    found = sessions(suite_dir)
    if not found:
        raise SftpackError(f"no results in {suite_dir.resolve()} (run `sftpack bench SUITE` first)")
    if session is None:
        return found[-1]
    match = [p for p in found if p.name == session]
    if not match:
        raise SftpackError(f"session {session!r} not in {suite_dir.resolve()}; have: {[p.name for p in found]}")
    return match[0]


def update_readme(readme: Path, suite: str, section: str) -> None:
    start, end = f"<!-- bench:{suite} -->", f"<!-- /bench:{suite} -->"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SftpackError(f"{readme.resolve()}: add the markers '{start}' and '{end}' where the table goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{section}\n{end}{tail}", encoding="utf-8")


def build_reports(results_root: Path, suites: list[str] | None = None, session: str | None = None,
                  out: Path | None = None, readme: Path | None = None, plots: bool = True) -> list[Path]:
    results_root = Path(results_root)
    if not results_root.is_dir():
        raise SftpackError(f"results folder not found: {results_root.resolve()}")
    names = suites or sorted(p.name for p in results_root.iterdir() if p.is_dir() and sessions(p))
    if not names:
        raise SftpackError(f"no suite results under {results_root.resolve()} (run `sftpack bench SUITE` first)")
    written = []
    for name in names:
        session_dir = pick_session(results_root / name, session)
        record, results = load_session(session_dir)
        target = Path(out) if out else results_root / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "report.md").write_text(render_markdown(record, results), encoding="utf-8")
        written.append(target / "report.md")
        if plots:
            written += write_plots(record, results, target)
        if readme:
            prefix = os.path.relpath(target.resolve(), Path(readme).resolve().parent) + "/"
            update_readme(Path(readme), name, render_section(record, results, image_prefix=prefix))
            written.append(Path(readme))
    return written
