"""Progress display: task k/N, examples/s and ETA.

A live bar (rich) on a terminal; on a pipe or a log file, one plain line
every ~5 % of the tasks instead of an animation.

Two rates, each for what it answers:

- examples/s is training throughput: examples trained over the seconds spent
  in the training loop (evaluation, probes and checkpoints excluded), the
  same figure the summary's ``examples_per_s`` reports;
- the ETA is the tasks still to train over the *recent* wall-clock rate (the
  last :data:`ETA_WINDOW` tasks, everything included), so start-up, a first
  task's one-off costs or a machine that got busier an hour ago do not skew it.
  A task counts the examples this process trained in it: a run resumed inside
  a task trained only its rest, in a fraction of a task's time.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

ETA_WINDOW = 10
"""Tasks whose wall-clock time sets the ETA."""


LINE_EVERY_S = 60.0
"""Without a live bar, a line every 5% of the tasks, and at the first task end a minute after the last line."""


class Progress:
    def __init__(self, num_tasks: int, task_examples: int | Sequence[int], first_task: int = 0, mode: str = "auto",
                 metric: str = "acc", runs: int = 1):
        """``task_examples``: examples each run trains per task (one number, or one
        per task when tasks grow, as class-incremental CIFAR's do); ``metric``:
        what ``task_done`` reports ("acc": online accuracy; "err": online squared
        error); ``runs``: seeds trained together (examples/s is per run)."""
        sizes = [task_examples] * num_tasks if isinstance(task_examples, int) else list(task_examples)
        self.num_tasks, self.sizes, self.runs = num_tasks, sizes, runs
        self.metric = metric
        self.console = Console(stderr=True)
        live = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "off"
        self.first_task = first_task
        self.examples_per_s = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=ETA_WINDOW)
        self.trained = 0.0
        """Examples per run trained since the last task ended (or this process started)."""
        self.last_done = self.last_line = time.perf_counter()
        self.bar = None
        if live and not self.quiet:
            self.bar = RichProgress(
                TextColumn("[bold]task {task.fields[task]}/{task.fields[tasks]}"), BarColumn(),
                TextColumn("{task.fields[rate]} ex/s"), TextColumn(metric + " {task.fields[acc]}"),
                TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=self.console, transient=False,
            )
            self.bar.start()
            self.id = self.bar.add_task("train", total=sum(sizes), completed=sum(sizes[:first_task]),
                                        task=first_task + 1, tasks=num_tasks, rate="-", acc="-", eta="-")

    def eta(self, task: int) -> float | None:
        """Seconds left after task ``task``, at the recent wall-clock rate (None before a task has finished)."""
        examples, seconds = sum(e for e, _ in self.recent), sum(s for _, s in self.recent)
        if not examples or seconds <= 0:
            return None
        return sum(self.sizes[task + 1:]) * seconds / examples

    def advance(self, examples: int, task: int) -> None:
        """``examples`` more trained (all runs together) in task ``task``: moves the bar."""
        self.trained += examples / self.runs
        if self.bar is not None:
            self.bar.update(self.id, advance=examples / self.runs, task=task + 1)

    def task_done(self, task: int, value: float, examples_per_s: float) -> None:
        """Task ``task`` finished with this online accuracy (or error); the
        run's training throughput so far is ``examples_per_s`` (its summary's figure)."""
        now = time.perf_counter()
        if self.trained:
            self.recent.append((self.trained, now - self.last_done))
        self.trained, self.last_done = 0.0, now
        self.examples_per_s = examples_per_s
        eta = self.eta(task)
        eta_text = "-" if eta is None else _duration(eta)
        if self.bar is not None:
            self.bar.update(self.id, acc=f"{value:.3f}", rate=f"{self.examples_per_s:.0f}", eta=eta_text,
                            completed=sum(self.sizes[:task + 1]))
            return
        every = max(1, self.num_tasks // 20)
        due = (task + 1) % every == 0 or task + 1 == self.num_tasks or now - self.last_line >= LINE_EVERY_S
        if not self.quiet and due:
            self.last_line = now
            per = " per seed" if self.runs > 1 else ""
            print(f"task {task + 1}/{self.num_tasks}  online {self.metric} {value:.3f}  {self.examples_per_s:.0f} ex/s{per}  "
                  f"ETA {eta_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the live bar (safe to call twice)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.quiet = True


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``5 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
