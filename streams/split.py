"""Split MNIST: five tasks of digit pairs {0,1}, {2,3}, ..., {8,9}.

Scenarios (van de Ven & Tolias 2019, arXiv:1904.07734):
``task``: task identity known, one 2-way head per task (logits masked to the
task's pair: the "labels trick"); ``domain``: no task identity, one 2-way head,
target ``y mod 2``; ``class``: no task identity, one shared 10-way head (the
setting of the Elephant and Hard ASH papers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plasticity_lab.registry import ConfigError
from plasticity_lab.streams.sources import DataSource, load_images
from plasticity_lab.streams.stream import Stream, StreamBuilder, check_positive, stream_builders, task_rng
from plasticity_lab.streams.task import Task

SCENARIOS = ("task", "domain", "class")
TASK_ORDERS = ("fixed", "shuffled")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@stream_builders.register("split_mnist")
@dataclass
class SplitMNIST(StreamBuilder):
    """Digit pairs as tasks. num_tasks: first how many pairs (≤ 5);
    scenario: task | domain | class incremental; normalize: standardise
    pixels with MNIST's mean 0.1307 and std 0.3081 (as Keskinen's Hard ASH code);
    task_order: fixed ({0,1} first, {8,9} last) or shuffled (the five pairs in
    an order drawn from the run's seed, as Keskinen's code shuffles them every run).
    """

    num_tasks: int = 5
    scenario: str = "class"
    examples_per_task: int | None = None
    normalize: bool = False
    task_order: str = "fixed"

    def __post_init__(self) -> None:
        check_positive("num_tasks", self.num_tasks)
        if self.num_tasks > 5:
            raise ConfigError("stream.num_tasks", self.num_tasks, "1..5 (five digit pairs)")
        check_positive("examples_per_task", self.examples_per_task, allow_none=True)
        if self.scenario not in SCENARIOS:
            raise ConfigError("stream.scenario", self.scenario, SCENARIOS)
        if self.task_order not in TASK_ORDERS:
            raise ConfigError("stream.task_order", self.task_order, TASK_ORDERS)

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:
        images = load_images(data)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return (x - MNIST_MEAN) / MNIST_STD if self.normalize else x

        order = task_rng(seed, 0, "task_order").permutation(5) if self.task_order == "shuffled" else np.arange(5)

        def build_task(k: int) -> Task:
            p = int(order[k])
            pair = (2 * p, 2 * p + 1)
            tr = (images.y_train // 2) == p
            te = (images.y_test // 2) == p
            x_tr, y_tr = images.x_train[tr][: self.examples_per_task], images.y_train[tr][: self.examples_per_task]
            y_te = images.y_test[te]
            if self.scenario == "domain":
                y_tr, y_te, classes = y_tr % 2, y_te % 2, (0, 1)
            else:
                classes = pair
            return Task(k, prepare(x_tr), y_tr, prepare(images.x_test[te]), y_te, classes,
                        {"stream": "split_mnist", "pair": list(pair), "scenario": self.scenario})

        out = 2 if self.scenario == "domain" else 10
        def train_size(k: int) -> int:
            n = int(((images.y_train // 2) == int(order[k])).sum())
            return min(n, self.examples_per_task or n)

        return Stream("split_mnist", (images.x_train.shape[1],), 10, out, self.num_tasks, self.scenario, build_task,
                      data=images.description, data_files=images.files, train_sizes=train_size)
