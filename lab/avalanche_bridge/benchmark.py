"""A lab stream as an Avalanche benchmark (train and test streams of
experiences built from the stream's own tensors).

Each experience's dataset is a ``TaskAwareClassificationDataset`` over a
``TensorDataset`` of the task's tensors (no copy) with the ``targets`` and
``targets_task_labels`` data attributes Avalanche's strategies read (LwF needs
the task labels). Task labels are the task id in the task-incremental
scenario and 0 otherwise. Long permuted streams: only the first ``num_tasks``
tasks are built (each task builds on demand, but Avalanche holds a list).
"""
from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience, benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
from torch.utils.data import TensorDataset

from plasticity_lab.streams import Stream, Task


def task_dataset(x: torch.Tensor, y: torch.Tensor, task_label: int) -> TaskAwareClassificationDataset:
    """(x, y, t) samples over the given tensors."""
    return TaskAwareClassificationDataset(
        [TensorDataset(x, y)],
        data_attributes=[
            DataAttribute(y.tolist(), "targets"),
            DataAttribute([task_label] * len(y), "targets_task_labels", use_in_getitem=True),
        ],
    )


def task_experience(task: Task, label: int) -> DatasetExperience:
    """One training experience for ``task``, numbered by the task's id (EWC,
    SI and LwF key their per-experience state on it)."""
    stream = EagerCLStream("train", [DatasetExperience(dataset=task_dataset(task.x_train, task.y_train, label))])
    experience = stream[0]
    experience.current_experience = task.id
    return experience


def task_label(stream: Stream, task: Task) -> int:
    return task.id if stream.scenario == "task" else 0


def to_avalanche(stream: Stream, num_tasks: int | None = None):
    """An Avalanche ``CLScenario`` with ``train_stream`` and ``test_stream``."""
    n = min(num_tasks or stream.num_tasks, stream.num_tasks)
    train, test = [], []
    for k in range(n):
        task = stream.task(k)
        t = task_label(stream, task)
        train.append(task_dataset(task.x_train, task.y_train, t))
        test.append(task_dataset(task.x_test, task.y_test, t))
    return benchmark_from_datasets(train=train, test=test)
