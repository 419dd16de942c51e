"""The one plotting setup of every report (bench, pipeline): a headless pyplot, framework colours, saving.

    from sftpack.plots import pyplot, save, COLORS
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot(steps, losses, color=COLORS["swift"])
    save(fig, out / "loss.png")

matplotlib is imported only when a plot is drawn (the CLI and the harness stay light).
"""

from __future__ import annotations

from pathlib import Path

COLORS = {"llamafactory": "#1f77b4", "swift": "#ff7f0e"}


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """PNG at 110 dpi without the matplotlib version in its metadata (same bytes for the same figure); closes it."""
    fig.savefig(path, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
