"""Continual ImageNet (Dohare et al. 2024, Nature, Methods "Continual ImageNet";
code: shibhansh/loss-of-plasticity, lop/imagenet/single_expr.py): a long sequence of binary tasks.

The classes are put in an order drawn from the run's seed (the paper keeps one
order per run), repeated when the tasks outnumber the pairs; task k is the
pair (order[2k], order[2k+1]) with labels 0 and 1. Each class gives its first
``train_per_class`` (600) images for training and the next ``test_per_class``
(100) for testing, as the paper's 700-image class files do; pixels are scaled
to [0, 1], NCHW. The paper's run: 5,000 tasks, 250 epochs of batch 100 per
task, the output layer zeroed at each task start (the ``reset`` intervention
with ``layers=head mode=zero``). Data: ``lab data imagenet32`` output,
memory-mapped (streams/imagenet32.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plasticity_lab.registry import DataError
from plasticity_lab.streams.imagenet32 import class_images, load_meta
from plasticity_lab.streams.sources import DataSource, as_source
from plasticity_lab.streams.stream import EvalSet, Stream, StreamBuilder, check_positive, stream_builders, task_rng
from plasticity_lab.streams.task import Task


@stream_builders.register("continual_imagenet")
@dataclass
class ContinualImageNet(StreamBuilder):
    """Binary tasks over pairs of ImageNet classes at 32x32.

    num_tasks: tasks (the paper: 5,000); train_per_class / test_per_class:
    images of each class for training / testing (600 / 100).
    """

    num_tasks: int = 5000
    train_per_class: int = 600
    test_per_class: int = 100

    def __post_init__(self) -> None:
        for key in ("num_tasks", "train_per_class", "test_per_class"):
            check_positive(key, getattr(self, key))

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:
        data_root = as_source(data).root
        meta = load_meta(data_root)
        classes = int(meta["num_classes"])
        need = self.train_per_class + self.test_per_class
        short = [c for c, n in enumerate(meta["counts"]["train"]) if n < need]
        if short:
            raise DataError(f"{data_root}: class(es) {short[:10]} have fewer than train_per_class + test_per_class = "
                            f"{need} images (fewest: {min(meta['counts']['train'])}); lower stream.train_per_class")
        if classes < 2:
            raise DataError(f"{data_root}: {classes} class(es); continual ImageNet pairs classes, so it needs at least 2")
        order = task_rng(seed, 0, "imagenet_class_order").permutation(classes)
        pairs = classes // 2

        def pair(k: int) -> tuple[int, int]:
            j = k % pairs  # the order repeats once every pair has been a task (the paper's concatenated order)
            return int(order[2 * j]), int(order[2 * j + 1])

        def images(c: int, start: int, stop: int) -> torch.Tensor:
            a = class_images(data_root, "train", c)
            return torch.from_numpy(np.array(a[start:stop])).float().div_(255.0)  # a copy: the map stays read-only

        def split(k: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            a, b = pair(k)
            x = torch.cat([images(a, start, stop), images(b, start, stop)])
            y = torch.cat([torch.zeros(stop - start, dtype=torch.int64), torch.ones(stop - start, dtype=torch.int64)])
            return x, y

        def build_test(k: int) -> EvalSet:
            return EvalSet(*split(k, self.train_per_class, need), (0, 1))

        def build_task(k: int) -> Task:
            x_train, y_train = split(k, 0, self.train_per_class)
            x_test, y_test = split(k, self.train_per_class, need)
            return Task(id=k, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=(0, 1),
                        origin={"stream": "continual_imagenet", "seed": seed, "task": k, "imagenet_classes": pair(k)})

        return Stream("continual_imagenet", tuple(meta["shape"]), 2, 2, self.num_tasks, "domain", build_task, build_test,
                      data=f"downsampled ImageNet 32x32 ({data_root})",
                      data_files=tuple(str(p) for p in sorted(Path(data_root).glob("*/*.npy"))))
