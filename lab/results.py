"""What a run has measured so far: online accuracy per task and the accuracy matrix."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from metrics import avg_accuracy, bwt, forgetting


@dataclass
class Results:
    """``acc_matrix[i][j]``: test accuracy on task j after training task i
    (``None`` where not evaluated); one row per task trained, one column per
    task seen. ``online_accuracy[i]``: mean pre-update accuracy over task i's
    training examples. ``online_loss[i]`` likewise for the loss."""

    online_accuracy: list[float] = field(default_factory=list)
    online_loss: list[float] = field(default_factory=list)
    acc_matrix: list[list[Optional[float]]] = field(default_factory=list)
    examples: int = 0
    train_seconds: float = 0.0

    def add_task(self, online_acc: float, online_loss: float, evals: dict[int, float]) -> None:
        """Record task ``len(online_accuracy)``: its online figures and test accuracies."""
        self.online_accuracy.append(online_acc)
        self.online_loss.append(online_loss)
        width = len(self.online_accuracy)
        for row in self.acc_matrix:
            row.extend([None] * (width - len(row)))
        self.acc_matrix.append([evals.get(j) for j in range(width)])

    def last_evaluated(self) -> list[list[Optional[float]]]:
        """The matrix up to the last row that holds any evaluation."""
        rows = self.acc_matrix
        while rows and all(v is None for v in rows[-1]):
            rows = rows[:-1]
        return rows

    def scores(self) -> dict[str, Optional[float]]:
        R = self.last_evaluated()
        return {"avg_accuracy": avg_accuracy(R), "bwt": bwt(R), "forgetting": forgetting(R)}

    def to_dict(self) -> dict:
        """Shallow field dict (``dataclasses.asdict`` deep-copies every row: slow at 1,000s of tasks)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
