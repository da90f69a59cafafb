"""Plots, checked through matplotlib's objects: what is drawn, on which axes,
with which labels, ticks and uncertainty."""
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from plasticity_lab.lab.cli import main
from plasticity_lab.lab.compare import Group, Run, group_runs, load_runs
from plasticity_lab.lab.plots import diagnostics_figure, final_accuracy_figure, task_accuracy, task_accuracy_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUIET = ["wandb.enabled=false", "progress=off"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A windowed permuted-MNIST run (12 tasks, eval every 3rd, window 4), two
    seeds of a split-MNIST run (5 tasks, every cell evaluated) and a run whose
    hidden layers are three."""
    root = tmp_path_factory.mktemp("plots")
    small = ["agent.hidden=[16,16]", "stream.examples_per_task=128"]
    assert main(["run", *QUIET, *small, "stream.num_tasks=12", "train.eval_every=3", "train.eval_window=4",
                 "metrics.task_every=1", f"out_dir={root / 'windowed'}"]) == 0
    for seed in (0, 1):
        assert main(["run", *QUIET, "experiment=split_mnist", "agent.hidden=[16]", "stream.examples_per_task=128",
                     f"seed={seed}", f"out_dir={root / 'split' / f's{seed}'}"]) == 0
    return root


def _load(path: Path) -> Run:
    (run,) = load_runs([path])
    return run


def test_a_windowed_run_draws_each_task_over_time_and_accuracy_by_age(runs, tmp_path):
    run = _load(runs / "windowed")
    assert task_accuracy(Group("w", [run]), tmp_path / "acc.png").stat().st_size > 10_000
    fig = task_accuracy_figure(Group("w", [run]))
    left, right = fig.axes
    evaluated = {(i, j) for i, j, _ in run.summary["acc_entries"]}
    # left: only evaluated points, tasks numbered from 1 (x = tasks trained)
    for line in left.get_lines():
        j = int(line.get_label().split()[1]) - 1
        assert {(int(x) - 1, j) for x in line.get_xdata()} <= evaluated
    assert left.get_xlabel() == "tasks trained" and "accuracy" in left.get_ylabel()
    # right: mean accuracy by the number of tasks trained since (0..window-1), one run: no band
    (curve,) = right.get_lines()
    assert list(curve.get_xdata()) == [0, 1, 2, 3] and not right.collections
    ages = {}
    for i, j, a in run.summary["acc_entries"]:
        ages.setdefault(i - j, []).append(a)
    assert list(curve.get_ydata()) == pytest.approx([np.mean(ages[k]) for k in range(4)])


def test_a_fully_evaluated_short_run_is_a_heatmap_numbered_from_one(runs):
    run = _load(runs / "split" / "s0")
    ax = task_accuracy_figure(Group("split", [run])).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4", "5"]
    image = ax.get_images()[0].get_array()
    R = run.summary["acc_matrix"]
    assert image[4, 0] == pytest.approx(R[4][0]) and np.ma.is_masked(image[0, 4]) or np.isnan(image[0, 4])
    assert "one run" in ax.get_title()


def test_diagnostics_label_units_draw_layers_and_say_not_measured(runs):
    run = _load(runs / "windowed")
    fig = diagnostics_figure([Group("w", [run])], per_layer=True)
    titles = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    dead = titles["dead units (per layer)"]
    assert dead.get_ylabel() == "fraction of units"
    assert sorted(line.get_label() for line in dead.get_lines()) == ["h1", "h2"]
    xs = dead.get_lines()[0].get_xdata()
    assert xs[0] == 1 and dead.get_lines()[0].get_marker() == "o"  # 12 points: markers, tasks from 1
    assert all(float(t).is_integer() for t in dead.xaxis.get_major_locator()())
    empty = [ax for ax in titles.values() if not ax.get_lines()]
    assert empty and all(any(t.get_text() == "not measured" for t in ax.texts) for ax in empty)
    drawn = [ax for ax in titles.values() if ax.get_lines()]
    assert not any(t.get_text() == "not measured" for ax in drawn for t in ax.texts)
    assert "one run" in fig._suptitle.get_text()
    plt.close(fig)


def test_two_seeds_get_a_standard_error_band_and_one_convention_in_titles(runs):
    groups = group_runs(load_runs([runs / "split"]))
    assert len(groups) == 1 and len(groups[0].runs) == 2
    fig = diagnostics_figure(groups)
    dead = [ax for ax in fig.axes if ax.get_title().startswith("dead units")][0]
    assert dead.collections  # the ± s.e. band
    assert "mean ± s.e. over 2 seeds" in fig._suptitle.get_text()
    plt.close(fig)
    ax = final_accuracy_figure(groups).axes[0]
    values = groups[0].values("avg_accuracy")
    (bar,) = ax.patches
    assert bar.get_height() == pytest.approx(values.mean())
    assert "mean ± s.e." in ax.get_title() and "CI" not in ax.get_title()


def test_titles_say_what_the_run_is(runs):
    summary = json.loads((runs / "windowed" / "summary.json").read_text())
    assert main(["plot", str(runs / "windowed")]) == 0
    run = _load(runs / "windowed")
    from plasticity_lab.lab.compare import describe

    label = describe(run)
    assert "permuted_mnist" in label and "MNIST" in label and "relu" in label and "sgd lr 0.1" in label
    assert "no intervention" in label and summary["seed"] == 0
