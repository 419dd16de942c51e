"""The sweep's plots (sftpack.plots: headless, framework colours, reproducible PNGs), drawn from the report's rows.

score.png: the ranking metric with its 95 % intervals -- lines over the one numeric axis (one line per framework
and method), a heatmap per framework/method for two numeric axes, else one bar per cell. cost.png: the ranking
metric against training time and against peak memory (GPU when measured, else the largest process's RSS).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sftpack.plots import COLORS, pyplot, save
from sftpack.sweep.report import HIDDEN

MARKERS = {"lora": "o", "full": "s"}


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_axes(rows: list[dict[str, Any]]) -> list[str]:
    names = dict.fromkeys(k for r in rows for k in r["axes"] if k not in HIDDEN)
    return [n for n in names if all(_numeric(r["axes"].get(n)) for r in rows if n in r["axes"])
            and len({r["axes"][n] for r in rows if n in r["axes"]}) > 1]


def _line_key(row: dict[str, Any], numeric: list[str]) -> str:
    rest = [f"{k}={v}" for k, v in row["axes"].items() if k not in numeric and k not in ("framework", "method")]
    return " ".join([row["framework"] or "base", row["method"] or ""] + rest).strip()


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["primary"] and r["primary"]["mean"] is not None]


def _err(row: dict[str, Any]) -> tuple[float, float]:
    p = row["primary"]
    low, high = (p["low"] if p["low"] is not None else p["mean"]), (p["high"] if p["high"] is not None else p["mean"])
    return p["mean"] - low, high - p["mean"]


def draw(sweep, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    scored = _scored(rows)
    if not scored:
        return []
    plt = pyplot()
    drawn = []
    numeric = numeric_axes([r for r in scored if r["framework"]])
    if len(numeric) == 2:
        drawn.append(_heatmaps(plt, sweep, scored, numeric, folder / "heatmap.png"))
    else:
        drawn.append(_lines(plt, sweep, scored, numeric[0] if len(numeric) == 1 else None, folder / "score.png"))
    drawn.append(_cost(plt, sweep, scored, folder / "cost.png"))
    return drawn


def _lines(plt, sweep, rows, axis: str | None, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if axis is None:   # no numeric axis: one bar per cell
        names = [r["cell"] for r in rows]
        errs = list(zip(*[_err(r) for r in rows]))
        ax.barh(names, [r["primary"]["mean"] for r in rows], xerr=errs, capsize=3,
                color=[COLORS.get(r["framework"], "#888888") for r in rows])
        ax.set_xlabel(f"{sweep.select} (95 % CI)")
    else:
        lines: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if axis in row["axes"]:
                lines.setdefault(_line_key(row, [axis]), []).append(row)
        for label, members in lines.items():
            members.sort(key=lambda r: r["axes"][axis])
            errs = list(zip(*[_err(r) for r in members]))
            first = members[0]
            ax.errorbar([r["axes"][axis] for r in members], [r["primary"]["mean"] for r in members], yerr=errs,
                        capsize=3, marker=MARKERS.get(first["method"], "^"),
                        linestyle="--" if first["method"] == "full" else "-",
                        color=COLORS.get(first["framework"], "#888888"), label=label)
        values = [r["axes"][axis] for r in rows if axis in r["axes"]]
        if min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel(f"{sweep.select} (95 % CI)")
        ax.legend(fontsize=8)
    ax.set_title(f"sweep {sweep.name}", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return str(path)


def _heatmaps(plt, sweep, rows, axes: list[str], path: Path) -> str:
    panels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if all(a in row["axes"] for a in axes):
            panels.setdefault(_line_key(row, axes), []).append(row)
    fig, grid = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (label, members) in zip(grid[0], panels.items()):
        xs = sorted({r["axes"][axes[0]] for r in members})
        ys = sorted({r["axes"][axes[1]] for r in members})
        values = [[math.nan] * len(xs) for _ in ys]
        for r in members:
            values[ys.index(r["axes"][axes[1]])][xs.index(r["axes"][axes[0]])] = r["primary"]["mean"]
        image = ax.imshow(values, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for r in members:
            p = r["primary"]
            ax.text(xs.index(r["axes"][axes[0]]), ys.index(r["axes"][axes[1]]),
                    f"{p['mean']:.2f}\n[{p['low'] or 0:.2f}, {p['high'] or 0:.2f}]", ha="center", va="center",
                    fontsize=7, color="white" if p["mean"] < 0.6 else "black")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.set_title(label, fontsize=9)
    fig.colorbar(image, ax=grid[0].tolist(), label=sweep.select)
    save(fig, path)
    return str(path)


def _cost(plt, sweep, rows, path: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    gpu = any(r["peak_gpu_mib"] for r in rows)
    for row in rows:
        if not row["framework"]:
            continue
        style = dict(color=COLORS.get(row["framework"], "#888888"), marker=MARKERS.get(row["method"], "^"))
        err = list(zip(_err(row)))
        memory = row["peak_gpu_mib"] if gpu else row["peak_rss_mib"]
        if row["train_wall_s"] is not None:
            left.errorbar([row["train_wall_s"]], [row["primary"]["mean"]], yerr=err, capsize=2, **style)
        if memory is not None:
            right.errorbar([memory], [row["primary"]["mean"]], yerr=err, capsize=2, **style)
    left.set_xlabel("training wall time (s)")
    right.set_xlabel("peak GPU memory (MiB)" if gpu else "peak RSS, largest process (MiB)")
    left.set_ylabel(f"{sweep.select} (95 % CI)")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=f) for f, c in COLORS.items()]
    handles += [plt.Line2D([], [], color="#555555", marker=m, linestyle="", label=k) for k, m in MARKERS.items()]
    right.legend(handles=handles, fontsize=8)
    fig.suptitle(f"sweep {sweep.name}: {sweep.select} vs cost", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return str(path)
