"""Online permuted MNIST (Dohare et al. 2024, Nature, Methods "Online Permuted
MNIST"; code: shibhansh/loss-of-plasticity, lop/permuted_mnist/online_expr.py).

Task ``k`` applies one uniformly random pixel permutation, drawn from
``(seed, k)``, to every train and test image; the labels are unchanged. With
``permute_first`` (the paper's protocol) task 0 is permuted too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plasticity_lab.streams.sources import DataSource, load_images
from plasticity_lab.streams.stream import EvalSet, Stream, StreamBuilder, check_positive, stream_builders, task_rng
from plasticity_lab.streams.task import Task


@stream_builders.register("permuted_mnist")
@dataclass
class PermutedMNIST(StreamBuilder):
    """Each task: a new pixel permutation of the same images, 10 classes.

    num_tasks: tasks in the stream; examples_per_task: training examples per
    task (null = every training image once: one pass); permute_first: whether
    task 0 is permuted (True in Dohare et al.).
    """

    num_tasks: int = 50
    examples_per_task: int | None = None
    permute_first: bool = True

    def __post_init__(self) -> None:
        check_positive("num_tasks", self.num_tasks)
        check_positive("examples_per_task", self.examples_per_task, allow_none=True)

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:
        images = load_images(data)
        n = self.examples_per_task or len(images.y_train)

        pixels = images.x_train.shape[1]

        def permutation(k: int, rng: np.random.Generator) -> torch.Tensor:
            return torch.as_tensor(rng.permutation(pixels) if (k > 0 or self.permute_first) else np.arange(pixels))

        def build_test(k: int) -> EvalSet:
            return EvalSet(images.x_test[:, permutation(k, task_rng(seed, k, "permuted_mnist"))], images.y_test, tuple(range(10)))

        def build_task(k: int) -> Task:
            rng = task_rng(seed, k, "permuted_mnist")
            perm = permutation(k, rng)
            # Examples of this task: full passes over the training set in a
            # fresh order, as many as ``n`` needs (exactly one pass by default).
            passes = -(-n // len(images.y_train))
            idx = torch.as_tensor(np.concatenate([rng.permutation(len(images.y_train)) for _ in range(passes)])[:n])
            return Task(
                id=k,
                x_train=images.x_train[idx][:, perm],
                y_train=images.y_train[idx],
                x_test=images.x_test[:, perm],
                y_test=images.y_test,
                classes=tuple(range(10)),
                origin={"stream": "permuted_mnist", "seed": seed, "task": k, "permuted": bool(k > 0 or self.permute_first)},
            )

        return Stream("permuted_mnist", (pixels,), 10, 10, self.num_tasks, "domain", build_task, build_test,
                      data=images.description, data_files=images.files)
