"""Plots of a run directory: online accuracy per task and the accuracy matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_run(out: Path, summary: dict[str, Any]) -> list[Path]:
    """Write ``plots/online_accuracy.png`` and ``plots/acc_matrix.png`` under ``out``."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    title = f"{summary['experiment']} · {summary['activation']} · seed {summary['seed']}"
    paths = [plots / "online_accuracy.png", plots / "acc_matrix.png"]

    fig, ax = plt.subplots(figsize=(6, 3.5))
    acc = summary["online_accuracy"]
    ax.plot(range(1, len(acc) + 1), acc, marker="." if len(acc) < 60 else None)
    ax.set(xlabel="task", ylabel="online accuracy (pre-update)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    R = np.array([[np.nan if v is None else v for v in row] for row in summary["acc_matrix"]], dtype=float)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="evaluated on task j", ylabel="after training task i", title="test accuracy R[i, j]")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
