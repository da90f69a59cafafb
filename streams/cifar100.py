"""Class-incremental CIFAR-100 (Dohare et al. 2024, Nature, Methods "Class-incremental
CIFAR-100"; code: shibhansh/loss-of-plasticity, lop/incremental_cifar/).

Data: the standard CIFAR-100 "python version" (``cifar-100-python.tar.gz``
from https://www.cs.toronto.edu/~kriz/cifar.html, extracted): pickled dicts
``train`` and ``test`` with ``data`` uint8 (N, 3072) (1024 red, 1024 green,
1024 blue values of a row-major 32x32 image) and ``fine_labels`` 0..99.

The 100 classes are put in an order drawn from the run's seed; task k adds
``classes_per_task`` (5) new classes. As in the paper, task k trains on every
class seen so far (``cumulative``; false: only its new classes) and its
logits are restricted to the classes seen so far (the ``task`` scenario's head
mask with the seen classes as the head). Pixels are scaled to [0, 1] and
normalised per channel with CIFAR-100's mean (0.5071, 0.4865, 0.4409) and std
(0.2673, 0.2564, 0.2762); training batches are augmented on the run's device
(``augment``): random 32x32 crop of the reflect-padded (4 px) image and a
horizontal flip with probability 1/2 — the paper's RandomCrop + flip.
Not reproduced: the paper's 450/50 validation split and its early stopping.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plasticity_lab.registry import ConfigError, DataError
from plasticity_lab.streams.download import where_to_get
from plasticity_lab.streams.pickles import load_data_pickle
from plasticity_lab.streams.sources import DataSource, as_source
from plasticity_lab.streams.stream import EvalSet, Stream, StreamBuilder, stream_builders, task_rng
from plasticity_lab.streams.task import Task

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / "cifar-100-python" / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"no CIFAR-100 '{name}' file under {root} (nor {root / 'cifar-100-python'}); "
                    + where_to_get("cifar100_incremental"))


def read_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images (N, 3, 32, 32) and fine labels of one pickle file, validated."""
    d = load_data_pickle(path, "bytes", "CIFAR-100")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()} if isinstance(d, dict) else d
    if not isinstance(d, dict) or "data" not in d or "fine_labels" not in d:
        raise DataError(f"{path}: expected a dict with 'data' and 'fine_labels' (the CIFAR-100 python version)")
    data, labels = np.asarray(d["data"]), np.asarray(d["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: 'data' {data.dtype} {data.shape} with {len(labels)} labels, expected uint8 (N, 3072) and N")
    if len(labels) and (labels.min() < 0 or labels.max() > 99):
        raise DataError(f"{path}: fine labels span {labels.min()}..{labels.max()}, expected 0..99")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float().div_(255.0)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.from_numpy(labels)


@lru_cache(maxsize=2)
def load_cifar100(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    base = Path(root).expanduser()
    return (*read_split(_find(base, "train")), *read_split(_find(base, "test")))


def random_crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Per image: a random HxW crop of the reflect-padded batch and a horizontal
    flip with probability 1/2, all on ``x``'s device with torch's generator.
    (torchvision's transforms work image by image; this is one gather per batch.)"""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    flip = torch.rand(n, 1, 1, device=x.device) < 0.5
    cols = torch.where(flip, dx + (w - 1) - torch.arange(w, device=x.device).view(1, 1, w), cols)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


@stream_builders.register("cifar100_incremental")
@dataclass
class IncrementalCIFAR100(StreamBuilder):
    """Class-incremental CIFAR-100: ``classes_per_task`` new classes per task.

    num_tasks: increments (null: 100 / classes_per_task, i.e. 20);
    cumulative: train on all seen classes (the paper) or only the new ones;
    augment: random crop + flip of training batches; train_per_class:
    training images per class (null: all 500; fewer for quick runs).
    """

    num_tasks: int | None = None
    classes_per_task: int = 5
    cumulative: bool = True
    augment: bool = True
    train_per_class: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.classes_per_task, int) or not 1 <= self.classes_per_task <= 100:
            raise ConfigError("stream.classes_per_task", self.classes_per_task, "an integer in 1..100")
        most = 100 // self.classes_per_task
        if self.num_tasks is not None and not (isinstance(self.num_tasks, int) and 1 <= self.num_tasks <= most):
            raise ConfigError("stream.num_tasks", self.num_tasks, f"an integer in 1..{most} (100 classes / {self.classes_per_task}) or null")
        if self.train_per_class is not None and not (isinstance(self.train_per_class, int) and self.train_per_class >= 1):
            raise ConfigError("stream.train_per_class", self.train_per_class, "a positive integer or null (all)")

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:
        data_root = as_source(data).root
        if data_root is None:
            raise DataError("cifar100_incremental needs data.root: a directory with CIFAR-100's python-version "
                            "'train' and 'test' files; " + where_to_get("cifar100_incremental"))
        x_tr, y_tr, x_te, y_te = load_cifar100(str(data_root))
        present = torch.unique(y_tr)
        order = [int(c) for c in task_rng(seed, 0, "cifar_class_order").permutation(100) if c in set(present.tolist())]
        num_tasks = self.num_tasks or len(order) // self.classes_per_task
        if num_tasks * self.classes_per_task > len(order):
            raise DataError(f"{data_root}: {len(order)} classes present, {num_tasks} tasks of {self.classes_per_task} need more")
        keep = self._subsample(y_tr)
        cpt = self.classes_per_task

        def seen(k: int) -> tuple[int, ...]:
            return tuple(sorted(order[: (k + 1) * cpt]))

        def select(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten()
            return x[idx], y[idx]

        def build_test(k: int) -> EvalSet:
            return EvalSet(*select(x_te, y_te, list(seen(k))), seen(k))

        def build_task(k: int) -> Task:
            new = order[k * cpt:(k + 1) * cpt]
            x, y = select(x_tr[keep], y_tr[keep], list(seen(k)) if self.cumulative else new)
            test = build_test(k)
            return Task(id=k, x_train=x, y_train=y, x_test=test.x, y_test=test.y, classes=seen(k),
                        origin={"stream": "cifar100_incremental", "seed": seed, "task": k, "new_classes": new})

        per_class = torch.bincount(y_tr[keep], minlength=100)

        def train_size(k: int) -> int:
            return int(per_class[list(seen(k)) if self.cumulative else order[k * cpt:(k + 1) * cpt]].sum())

        return Stream("cifar100_incremental", (3, 32, 32), 100, 100, num_tasks, "task", build_task, build_test,
                      augment=random_crop_flip if self.augment else None, train_sizes=train_size,
                      data=f"CIFAR-100 ({data_root})",
                      data_files=tuple(str(_find(Path(data_root).expanduser(), n)) for n in ("train", "test")))

    def _subsample(self, y: torch.Tensor) -> torch.Tensor:
        """Indices of the first ``train_per_class`` images of each class (all when null)."""
        if self.train_per_class is None:
            return torch.arange(len(y))
        keep = [torch.nonzero(y == c).flatten()[: self.train_per_class] for c in torch.unique(y)]
        return torch.sort(torch.cat(keep)).values
