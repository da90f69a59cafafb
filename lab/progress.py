"""Progress display: task k/N, examples/s and ETA.

A live bar (rich) on a terminal; on a pipe or a log file, one plain line
every ~5 % of the tasks instead of an animation.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Progress:
    def __init__(self, num_tasks: int, task_examples: int | Sequence[int], first_task: int = 0, mode: str = "auto",
                 metric: str = "acc"):
        """``task_examples``: examples trained per task (one number, or one per task
        when tasks grow, as class-incremental CIFAR's do); ``metric``: what
        ``task_done`` reports ("acc": online accuracy; "err": online squared error)."""
        sizes = [task_examples] * num_tasks if isinstance(task_examples, int) else list(task_examples)
        self.num_tasks, self.sizes = num_tasks, sizes
        self.metric = metric
        self.console = Console(stderr=True)
        live = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "off"
        self.t0, self.examples = time.perf_counter(), 0
        self.first_task = first_task
        self.bar = None
        if live and not self.quiet:
            self.bar = RichProgress(
                TextColumn("[bold]task {task.fields[task]}/{task.fields[tasks]}"), BarColumn(),
                TextColumn("{task.fields[rate]:>8.0f} ex/s"), TextColumn(metric + " {task.fields[acc]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.bar.start()
            self.id = self.bar.add_task("train", total=sum(sizes), completed=sum(sizes[:first_task]),
                                        task=first_task + 1, tasks=num_tasks, rate=0.0, acc="-")

    def rate(self) -> float:
        return self.examples / max(time.perf_counter() - self.t0, 1e-9)

    def advance(self, examples: int, task: int) -> None:
        self.examples += examples
        if self.bar is not None:
            self.bar.update(self.id, advance=examples, task=task + 1, rate=self.rate())

    def task_done(self, task: int, value: float) -> None:
        """Task ``task`` finished with this online accuracy (or error)."""
        if self.bar is not None:
            self.bar.update(self.id, acc=f"{value:.3f}")
            return
        every = max(1, self.num_tasks // 20)
        if not self.quiet and ((task + 1) % every == 0 or task + 1 == self.num_tasks):
            remaining = sum(self.sizes[task + 1:]) / max(self.rate(), 1e-9)
            print(f"task {task + 1}/{self.num_tasks}  online {self.metric} {value:.3f}  {self.rate():.0f} ex/s  "
                  f"ETA {remaining:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the live bar (safe to call twice)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.quiet = True
