"""What a run has measured so far: online accuracy per task and the accuracy matrix.

The matrix is kept as its evaluated entries ``[i, j, R[i][j]]`` (test accuracy
on task j after training task i): a 5,000-task run that evaluates the current
task only holds 5,000 entries, not 25 million cells, so memory and checkpoint
time stay flat in the number of tasks. ``dense()`` gives the full matrix for
runs short enough to look at (plots, small summaries).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional


DENSE_MAX_TASKS = 500
"""Summaries include the dense ``acc_matrix`` up to this many tasks (``acc_entries`` always)."""


@dataclass
class Results:
    """``online_accuracy[i]`` / ``online_loss[i]``: mean pre-update accuracy /
    loss over task i's training examples; ``acc_entries``: [i, j, accuracy]
    for every evaluation; ``best[j]``: the best accuracy on task j before the
    latest evaluated row (for forgetting); ``diagonal[j]`` = R[j][j]."""

    online_accuracy: list[float] = field(default_factory=list)
    online_loss: list[float] = field(default_factory=list)
    acc_entries: list[list] = field(default_factory=list)
    examples: int = 0
    train_seconds: float = 0.0
    best: dict[int, float] = field(default_factory=dict)
    diagonal: dict[int, float] = field(default_factory=dict)
    last_row: dict[int, float] = field(default_factory=dict)
    last_index: int = -1
    pooled: Optional[float] = None

    def add_task(self, online_acc: float, online_loss: float, evals: dict[int, float],
                 counts: dict[int, tuple[int, int]] | None = None) -> None:
        """Record task ``i = len(online_accuracy)``: its online figures and test
        accuracies (``counts``: each evaluated task's (correct, examples), for the pooled accuracy)."""
        i = len(self.online_accuracy)
        self.online_accuracy.append(online_acc)
        self.online_loss.append(online_loss)
        if not evals:
            return
        for j, acc in self.last_row.items():  # the previous evaluated row becomes "earlier" for forgetting
            self.best[j] = max(self.best.get(j, acc), acc)
        self.last_row, self.last_index = dict(evals), i
        if counts:
            self.pooled = sum(c for c, _ in counts.values()) / max(sum(n for _, n in counts.values()), 1)
        if i in evals:
            self.diagonal[i] = evals[i]
        self.acc_entries.extend([i, j, a] for j, a in sorted(evals.items()))

    def scores(self) -> dict[str, Optional[float]]:
        """ACC, BWT and forgetting of the last evaluated row (metrics/accuracy.py's
        definitions, computed from the kept entries in time linear in that row),
        and the pooled accuracy: correct over all test examples of the tasks in
        that row (each example weighs the same; Keskinen's Hard ASH code scores
        this way: it differs from ACC where test sets differ in size)."""
        row = self.last_row
        if not row:
            return {"avg_accuracy": None, "pooled_accuracy": None, "bwt": None, "forgetting": None}
        last = self.last_index
        return {
            "avg_accuracy": _mean(list(row.values())),
            "pooled_accuracy": self.pooled,
            "bwt": _mean([a - self.diagonal[j] for j, a in row.items() if j < last and j in self.diagonal]),
            "forgetting": _mean([self.best[j] - a for j, a in row.items() if j < last and j in self.best]),
        }

    def dense(self) -> list[list[Optional[float]]]:
        """R as rows of None-padded lists, one row per task trained."""
        n = len(self.online_accuracy)
        R: list[list[Optional[float]]] = [[None] * n for _ in range(n)]
        for i, j, a in self.acc_entries:
            R[i][j] = a
        return R

    def to_dict(self) -> dict:
        """Shallow field dict (``dataclasses.asdict`` deep-copies every list: slow at 1,000s of tasks)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None
