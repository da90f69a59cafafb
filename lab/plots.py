"""Plots: one run's figures, and comparisons of many runs (mean ± standard
error over seeds, bootstrap confidence intervals of final accuracy)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import bootstrap  # noqa: E402

from plasticity_lab.lab.compare import Group, declared_metrics  # noqa: E402
from plasticity_lab.metrics.catalog import shown  # noqa: E402



def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _regression(summaries: list[dict[str, Any]]) -> bool:
    return all(s.get("target") == "value" for s in summaries)


def plot_run(out: Path, summary: dict[str, Any]) -> list[Path]:
    """A run's own figures under ``out/plots``: online accuracy (online squared
    error for a regression stream), accuracy matrix, diagnostics."""
    from plasticity_lab.lab.compare import Run

    run = Run(out, summary, {})
    group = Group(f"{summary['experiment']} · {summary['activation']} · seed {summary['seed']}", [run])
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if _regression([summary]):
        paths = [online_error([group], plots / "online_error.png")]
    else:
        paths = [online_accuracy([group], plots / "online_accuracy.png")]
        if summary.get("acc_matrix"):
            paths.append(accuracy_matrix(group, plots / "acc_matrix.png"))
    if summary.get("diagnostics"):
        paths.append(diagnostics([group], plots / "diagnostics.png"))
    return paths


def plot_groups(groups: list[Group], out: Path) -> list[Path]:
    """Comparison figures of ``groups`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if _regression([r.summary for g in groups for r in g.runs]):
        return [online_error(groups, out / "online_error.png"), diagnostics(groups, out / "diagnostics.png")]
    paths = [online_accuracy(groups, out / "online_accuracy.png"), diagnostics(groups, out / "diagnostics.png"),
             final_accuracy(groups, out / "final_accuracy.png")]
    for i, g in enumerate(groups):
        if all(r.summary.get("acc_matrix") for r in g.runs):  # runs short enough for a dense matrix
            paths.append(accuracy_matrix(g, out / f"acc_matrix_{i}.png"))
    return paths


def _band(ax: Any, x: np.ndarray, values: np.ndarray, label: str) -> None:
    mean = values.mean(0)
    ax.plot(x, mean, label=f"{label} (n={len(values)})")
    if len(values) > 1:
        se = values.std(0, ddof=1) / np.sqrt(len(values))
        ax.fill_between(x, mean - se, mean + se, alpha=0.25)


def online_accuracy(groups: list[Group], path: Path) -> Path:
    return _online_curve(groups, path, "online_accuracy", "online accuracy (pre-update)")


def online_error(groups: list[Group], path: Path) -> Path:
    """Online squared error per task (Dohare et al.'s slowly-changing regression figure, binned by task)."""
    return _online_curve(groups, path, "online_loss", "online squared error (pre-update)")


def _online_curve(groups: list[Group], path: Path, key: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for g in groups:
        values = g.series(key)
        _band(ax, np.arange(1, values.shape[1] + 1), values, g.label)
    seeds = sorted({len(g.runs) for g in groups})
    ax.set(xlabel="task", ylabel=ylabel,
           title=f"{ylabel.split(' (')[0]} per task, mean ± s.e. over {'/'.join(map(str, seeds))} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def diagnostics(groups: list[Group], path: Path) -> Path:
    return _save(diagnostics_figure(groups), path)


def diagnostics_figure(groups: list[Group]) -> Any:
    """One panel per metric the catalog (or the runs' summaries) marks ``plot``:
    its series over tasks, averaged over layers, mean ± s.e. over seeds."""
    panels = shown("plot", declared_metrics([r for g in groups for r in g.runs]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, (name, facts) in zip(axes[0], panels.items()):
        for g in groups:
            tasks, values = g.diagnostic(name)
            if values.size:
                _band(ax, tasks + 1, values, g.label)
        layers = " (mean over layers)" if facts.per in ("layer", "weight_layer") else ""
        ax.set(xlabel="task", ylabel=facts.unit, title=facts.title + layers)
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=6)
    fig.suptitle("diagnostics (measured at task starts or ends); mean ± s.e. over seeds", fontsize=9)
    return fig


def accuracy_matrix(group: Group, path: Path) -> Path:
    mats = [np.array([[np.nan if v is None else v for v in row] for row in r.summary["acc_matrix"]], dtype=float)
            for r in group.runs]
    n = min(m.shape[0] for m in mats)
    with warnings.catch_warnings():  # never-evaluated cells stay NaN (blank)
        warnings.simplefilter("ignore", RuntimeWarning)
        R = np.nanmean(np.stack([m[:n, :n] for m in mats]), axis=0) if len(mats) > 1 else mats[0]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="evaluated on task j", ylabel="after training task i",
           title=f"test accuracy R[i, j] ({len(mats)} seed(s))\n{group.label}"[:120])
    ax.title.set_fontsize(8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def final_accuracy(groups: list[Group], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(groups)), 4))
    for i, g in enumerate(groups):
        vals = g.values("avg_accuracy")
        mean = vals.mean()
        lo = hi = mean
        if len(vals) > 1 and np.ptp(vals) > 0:
            ci = bootstrap((vals,), np.mean, confidence_level=0.95, n_resamples=2000, random_state=0).confidence_interval
            lo, hi = ci.low, ci.high
        ax.bar(i, mean, yerr=[[mean - lo], [hi - mean]], capsize=4)
        ax.text(i, 0.02, f"n={len(vals)}", ha="center", fontsize=7, color="white")
    ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="average test accuracy after the last task", ylim=(0, 1),
           title="final accuracy, 95% bootstrap CI over seeds")
    return _save(fig, path)
