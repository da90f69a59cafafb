"""A task: one stage of a continual-learning stream, held as tensors."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Task:
    """Train and test tensors of one task plus how it was made.

    ``x_*`` are float tensors (pixels in [0, 1] for image streams), ``y_*``
    int64 class labels. ``classes`` are the labels this task uses (the whole
    label set for permuted MNIST, a digit pair for split MNIST). ``origin``
    records how it was built (permutation seed, class pair, ...), so a task
    can be named and rebuilt exactly.
    """

    id: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[int, ...]
    origin: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> "Task":
        """The same task with its tensors on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])
