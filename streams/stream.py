"""The Stream contract and the registry of stream builders.

A stream is a deterministic, lazily built sequence of tasks: ``stream.task(k)``
rebuilds task ``k`` from ``(seed, k)`` alone, so a 5,000-task stream holds one
task in memory at a time and a resumed run sees exactly the tasks it would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional

import torch

import numpy as np

from plasticity_lab.registry import ConfigError, Registry
from plasticity_lab.streams.sources import DataSource
from plasticity_lab.streams.task import Task



class EvalSet(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[int, ...]


@dataclass
class Stream:
    """An iterable of tasks built on demand.

    ``output_size`` is the width of the network's output layer the stream
    needs (10 for class-incremental MNIST, 2 for domain-incremental);
    ``scenario`` is ``task``, ``domain`` or ``class`` incremental
    (van de Ven & Tolias 2019). In the ``task`` scenario the learner masks its
    logits to ``task.classes`` (one head per task). ``target`` is ``class``
    (labels, cross-entropy, accuracy) or ``value`` (regression targets, mean
    squared error; no accuracy matrix). ``augment`` maps a training batch to
    an augmented one on its device (random crops and flips for CIFAR),
    drawing from torch's global generator, so it is seeded and resumable.
    ``train_sizes(k)``: task k's training-set size where tasks differ in size
    (for progress and ETA; otherwise every task is assumed as large as the first).
    ``data``: what the examples come from, in words (the start banner, the
    summary and plot titles say it: a Fashion-MNIST run is not "MNIST");
    ``data_files``: the files they are read from (the run's provenance
    fingerprints them; none for generated data).
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    output_size: int
    num_tasks: int
    scenario: str
    build_task: Callable[[int], Task]
    build_test: Optional[Callable[[int], EvalSet]] = None
    target: str = "class"
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    train_sizes: Optional[Callable[[int], int]] = None
    data: str = "synthetic"
    data_files: tuple[str, ...] = ()

    def train_size(self, k: int) -> int:
        """Training examples of task ``k`` (without building it where the stream knows)."""
        return self.train_sizes(k) if self.train_sizes is not None else self.task(k).num_train

    def task(self, k: int) -> Task:
        if not 0 <= k < self.num_tasks:
            raise IndexError(f"task {k} outside 0..{self.num_tasks - 1}")
        return self.build_task(k)

    def test_set(self, k: int) -> EvalSet:
        """Task ``k``'s test tensors and classes, without building its training set."""
        if self.build_test is not None:
            return self.build_test(k)
        t = self.task(k)
        return EvalSet(t.x_test, t.y_test, t.classes)

    def __iter__(self) -> Iterator[Task]:
        for k in range(self.num_tasks):
            yield self.build_task(k)

    def __len__(self) -> int:
        return self.num_tasks


def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    """A ConfigError on ``stream.<name>`` unless ``value`` is a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"stream.{name}", value, "a positive integer" + (" or null" if allow_none else ""))


def task_rng(seed: int, task_id: int, purpose: str = "") -> np.random.Generator:
    """An independent generator for one task, from (seed, task, purpose).

    numpy's SeedSequence mixes the three into a well-spread state, so task
    ``k`` is the same whether it is built first, last or after a resume.
    """
    words = [seed, task_id] + [ord(c) for c in purpose]
    return np.random.default_rng(np.random.SeedSequence(words))


class StreamBuilder:
    """The contract of a stream plug-in: a dataclass whose fields are the
    stream's parameters (``stream.*``) and whose ``build`` makes the run's
    :class:`Stream` from its seed and its data: a ``streams.sources.DataSource``
    (``data.root`` and the embedded subset's split; a bare root string or
    None stands for one with the default split). Check parameters in
    ``__post_init__``, missing data in ``build``: both before any training."""

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:
        raise NotImplementedError


stream_builders = Registry("stream", base=StreamBuilder)
"""Stream builders by name (``stream=<name>``)."""
