"""Plots: one run's figures, and comparisons of many runs.

One uncertainty convention everywhere: a line or bar is the mean over a
group's seeds, its band or error bar one standard error of that mean (sample
standard deviation / sqrt n); with a single run there is no band, and each
title says which. Tasks are numbered from 1 on every axis.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from plasticity_lab.lab.compare import Group, Run, declared_metrics, describe  # noqa: E402
from plasticity_lab.metrics.catalog import shown  # noqa: E402

MARKERS_UP_TO = 30
"""Series with at most this many points are drawn with a marker at each one."""
HEATMAP_UP_TO = 20
"""A fully evaluated accuracy matrix up to this many tasks is drawn as a heatmap."""
TASK_LINES = 6
"""Tasks whose test accuracy over time is drawn, spread over the run."""


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _regression(summaries: list[dict[str, Any]]) -> bool:
    return all(s.get("target") == "value" for s in summaries)


def _spread(groups: list[Group]) -> str:
    """What the bands are, for a title."""
    sizes = sorted({len(g.runs) for g in groups})
    if sizes == [1]:
        return "one run each, no band" if len(groups) > 1 else "one run"
    return f"mean ± s.e. over {'/'.join(map(str, sizes))} seeds"


def plot_run(out: Path, summary: dict[str, Any]) -> list[Path]:
    """A run's own figures under ``out/plots``: online accuracy (online squared
    error for a regression stream), test accuracy on each task over time,
    diagnostics (one line per layer)."""
    config = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    run = Run(out, summary, config or {})
    group = Group(f"{describe(run)} · seed {summary['seed']}", [run])
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if _regression([summary]):
        paths = [online_error([group], plots / "online_error.png")]
    else:
        paths = [online_accuracy([group], plots / "online_accuracy.png")]
        if summary.get("acc_entries"):
            paths.append(task_accuracy(group, plots / "acc_matrix.png"))
    if summary.get("diagnostics"):
        paths.append(_save(diagnostics_figure([group], per_layer=True), plots / "diagnostics.png"))
    return paths


def plot_groups(groups: list[Group], out: Path) -> list[Path]:
    """Comparison figures of ``groups`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if _regression([r.summary for g in groups for r in g.runs]):
        return [online_error(groups, out / "online_error.png"), diagnostics(groups, out / "diagnostics.png")]
    paths = [online_accuracy(groups, out / "online_accuracy.png"), diagnostics(groups, out / "diagnostics.png"),
             final_accuracy(groups, out / "final_accuracy.png")]
    for i, g in enumerate(groups):
        if all(r.summary.get("acc_entries") for r in g.runs):
            paths.append(task_accuracy(g, out / f"acc_matrix_{i}.png"))
    return paths


def _band(ax: Any, x: np.ndarray, values: np.ndarray, label: str) -> None:
    """The mean over runs (rows of ``values``), with a ± s.e. band when there are several."""
    mean = values.mean(0)
    marker = "o" if len(x) <= MARKERS_UP_TO else None
    (line,) = ax.plot(x, mean, marker=marker, markersize=3, label=f"{label} (n={len(values)})")
    if len(values) > 1:
        se = values.std(0, ddof=1) / np.sqrt(len(values))
        ax.fill_between(x, mean - se, mean + se, alpha=0.25, color=line.get_color())


def _task_axis(ax: Any, xlabel: str = "task") -> None:
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def online_accuracy(groups: list[Group], path: Path) -> Path:
    return _online_curve(groups, path, "online_accuracy", "online accuracy (pre-update)", "fraction correct")


def online_error(groups: list[Group], path: Path) -> Path:
    """Online squared error per task (Dohare et al.'s slowly-changing regression figure, binned by task)."""
    return _online_curve(groups, path, "online_loss", "online squared error (pre-update)", "mean squared error")


def _online_curve(groups: list[Group], path: Path, key: str, what: str, unit: str) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for g in groups:
        values = g.series(key)
        _band(ax, np.arange(1, values.shape[1] + 1), values, g.label)
    _task_axis(ax)
    ax.set_ylabel(f"{what.split(' (')[0]} ({unit})")
    ax.set_title(f"{what} per task; {_spread(groups)}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def diagnostics(groups: list[Group], path: Path) -> Path:
    return _save(diagnostics_figure(groups), path)


def diagnostics_figure(groups: list[Group], per_layer: bool = False) -> Any:
    """One panel per metric the catalog (or the runs' summaries) marks ``plot``:
    its series over tasks, averaged over layers (or, ``per_layer`` with a single
    run, one line per layer), mean ± s.e. over seeds; "not measured" in a panel
    without data."""
    panels = shown("plot", declared_metrics([r for g in groups for r in g.runs]))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.4 * rows), squeeze=False)
    layers = per_layer and len(groups) == 1 and len(groups[0].runs) == 1
    for ax, (name, facts) in zip(axes.flat, panels.items()):
        drawn = _layer_lines(ax, groups[0].runs[0], name) if layers else _group_lines(ax, groups, name)
        layered = facts.per in ("layer", "weight_layer")
        ax.set_title(facts.title + ((" (per layer)" if layers else " (mean over layers)") if layered else ""), fontsize=9)
        ax.set_ylabel(facts.unit)
        _task_axis(ax, "task (measured at its start)" if facts.when == "task_start" else "task")
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif len(ax.get_lines()) > 1 or not layers:
            ax.legend(fontsize=6)  # (a single run's one network-wide line needs no legend)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"diagnostics; {_spread(groups)}", fontsize=9)
    return fig


def _group_lines(ax: Any, groups: list[Group], name: str) -> bool:
    drawn = False
    for g in groups:
        tasks, values = g.diagnostic(name)
        if values.size:
            _band(ax, tasks + 1, values, g.label)
            drawn = True
    return drawn


def _layer_lines(ax: Any, run: Run, name: str) -> bool:
    series = {k: v for k, v in run.summary.get("diagnostics", {}).items() if k == name or k.startswith(name + "/")}
    for key, points in sorted(series.items()):
        tasks = np.array([t for t, _ in points]) + 1
        ax.plot(tasks, [v for _, v in points], marker="o" if len(tasks) <= MARKERS_UP_TO else None, markersize=3,
                label=key.removeprefix(name + "/") if key != name else "network")
    return bool(series)


def _entries(group: Group) -> dict[tuple[int, int], np.ndarray]:
    """(i, j) -> test accuracies on task j after training task i, one per run
    (only cells every run evaluated)."""
    per_run = [{(int(i), int(j)): a for i, j, a in r.summary["acc_entries"]} for r in group.runs]
    common = set.intersection(*(set(e) for e in per_run))
    return {k: np.array([e[k] for e in per_run]) for k in sorted(common)}


def task_accuracy(group: Group, path: Path) -> Path:
    return _save(task_accuracy_figure(group), path)


def task_accuracy_figure(group: Group) -> Any:
    """Test accuracy on each task over time. A short run evaluated on every seen
    task after every task: the accuracy matrix as a heatmap. Otherwise: the
    accuracy on a few tasks spread over the run at each evaluation, beside the
    mean accuracy by the number of tasks trained since (how fast a task is forgotten)."""
    cells = _entries(group)
    n = 1 + max(i for i, _ in cells)
    complete = len(cells) == n * (n + 1) // 2
    if complete and n <= HEATMAP_UP_TO:
        return _heatmap(group, cells, n)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    tasks = sorted({j for _, j in cells})
    shown_tasks = [tasks[round(k)] for k in np.linspace(0, len(tasks) - 1, min(TASK_LINES, len(tasks)))]
    for j in dict.fromkeys(shown_tasks):
        points = sorted((i, v.mean()) for (i, jj), v in cells.items() if jj == j)
        left.plot([i + 1 for i, _ in points], [v for _, v in points], marker="o", markersize=3, label=f"task {j + 1}")
    _task_axis(left, "tasks trained")
    left.set(ylabel="test accuracy (fraction correct)", ylim=(0, 1.02))
    left.set_title("test accuracy on a task, at each evaluation", fontsize=9)
    left.legend(fontsize=6)
    ages = sorted({i - j for i, j in cells})
    by_run = np.array([[np.mean([v[r] for (i, j), v in cells.items() if i - j == age]) for age in ages]
                       for r in range(len(group.runs))])
    _band(right, np.array(ages), by_run, "mean over tasks")
    _task_axis(right, "tasks trained since (0 = just trained)")
    right.set(ylabel="test accuracy (fraction correct)", ylim=(0, 1.02))
    right.set_title("accuracy by age of the task", fontsize=9)
    fig.suptitle(f"{group.label}; {_spread([group])}"[:150], fontsize=8)
    return fig


def _heatmap(group: Group, cells: dict[tuple[int, int], np.ndarray], n: int) -> Any:
    R = np.full((n, n), np.nan)
    for (i, j), v in cells.items():
        R[i, j] = v.mean()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 0.9 + 0.5 * n) if n > 6 else (5, 4.2))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ticks = range(n)
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    if n <= 10:
        for (i, j), v in cells.items():
            ax.text(j, i, f"{v.mean():.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v.mean() > 0.6 else "white")
    ax.set(xlabel="test accuracy on task j", ylabel="after training task i")
    ax.set_title(f"accuracy matrix R[i, j]; {_spread([group])}\n{group.label}"[:150], fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction correct")
    return fig


def final_accuracy(groups: list[Group], path: Path) -> Path:
    return _save(final_accuracy_figure(groups), path)


def final_accuracy_figure(groups: list[Group]) -> Any:
    """Average test accuracy after the last task, one bar per group (± s.e. over seeds)."""
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(groups)), 4))
    for i, g in enumerate(groups):
        vals = g.values("avg_accuracy")
        se = vals.std(ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else None
        ax.bar(i, vals.mean(), yerr=se, capsize=4)
        ax.text(i, 0.02, f"n={len(vals)}", ha="center", fontsize=7, color="white")
    ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="average test accuracy after the last task", ylim=(0, 1))
    ax.set_title(f"final accuracy; {_spread(groups)}", fontsize=9)
    return fig
