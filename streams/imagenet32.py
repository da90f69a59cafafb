"""The downsampled ImageNet 32x32 files (Chrabaszcz, Loshchilov & Hutter 2017,
"A Downsampled Variant of ImageNet as an Alternative to the CIFAR datasets",
arXiv:1707.08819) and their conversion to per-class arrays.

Published format (``Imagenet32_train.zip`` / ``Imagenet32_val.zip`` from
image-net.org, "Download downsampled image data"): pickled dicts
``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data`` (or the
same names with ``.npz``), each holding ``data``: uint8 (N, 3072) rows laid
out as 1024 red, 1024 green, 1024 blue values of a row-major 32x32 image,
and ``labels``: N class numbers 1..1000 (train batches also carry ``mean``).

``convert`` writes ``<out>/train/<class>.npy`` and ``<out>/val/<class>.npy``
(uint8, (n, 3, 32, 32), class numbers from 0, images in file order) plus
``<out>/meta.json``; the continual-ImageNet stream memory-maps them. Memory
stays bounded: one pass counts each class, a second fills pre-sized
memory-mapped arrays, one batch file in memory at a time.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from plasticity_lab.registry import ConfigError, DataError
from plasticity_lab.streams.pickles import load_data_pickle

SIDE = 32
ROW = 3 * SIDE * SIDE
TRAIN_BATCHES = 10
FORMAT = "plasticity-lab imagenet32 v1"


def batch_files(src: Path, train_batches: int = TRAIN_BATCHES) -> dict[str, list[Path]]:
    """The train and val files of ``src`` (searched recursively), checked complete."""
    if not src.is_dir():
        raise DataError(f"{src} is not a directory; pass --src the folder where Imagenet32_train.zip and "
                        "Imagenet32_val.zip were extracted")
    found = {p.name.removesuffix(".npz"): p for p in sorted(src.rglob("*")) if p.is_file()}
    train_names = [f"train_data_batch_{i}" for i in range(1, train_batches + 1)]
    missing = [n for n in [*train_names, "val_data"] if n not in found]
    if missing:
        raise DataError(f"{src} lacks {', '.join(missing)} (expected train_data_batch_1..{train_batches} and "
                        "val_data, from Imagenet32_train.zip and Imagenet32_val.zip): partial input refused")
    return {"train": [found[n] for n in train_names], "val": [found["val_data"]]}


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 0-based) of one file, validated."""
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:  # allow_pickle=False: arrays only
                d = {"data": z["data"], "labels": z["labels"]}
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as err:
            raise DataError(f"{path} is not a readable ImageNet32 batch ({type(err).__name__}: {err}); "
                            "is it truncated? re-extract it") from None
    else:
        d = load_data_pickle(path, "latin1", "ImageNet32 batch")
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(d).__name__}"
                        + (f" with keys {sorted(d)}" if isinstance(d, dict) else ""))
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {ROW}) (32x32x3 images)")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {len(data)} images")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 1..{num_classes}")
    return data, labels.astype(np.int64) - 1


def convert(src: str | Path, out: str | Path, num_classes: int = 1000, train_batches: int = TRAIN_BATCHES,
            progress: Callable[[str], None] = print) -> dict:
    """Convert the published batch files under ``src`` into per-class arrays under ``out``.

    Refuses partial input (a missing batch file, a class with no images) and
    corrupt files with a DataError naming the file. Returns the metadata written."""
    src, out = Path(src), Path(out)
    for name, value in (("--num-classes", num_classes), ("--train-batches", train_batches)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(name, value, "a positive integer")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder (it is created if missing)")
    files = batch_files(src, train_batches)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {out} cannot be created ({err.strerror}); pass a writable folder") from None
    counts = {split: np.zeros(num_classes, dtype=np.int64) for split in files}
    for split, paths in files.items():
        for i, (path, (_, labels)) in enumerate(_batches(paths, num_classes)):
            counts[split] += np.bincount(labels, minlength=num_classes)
            progress(f"[1/2 count] {split} {i + 1}/{len(paths)} {path.name}: {len(labels):,} images")
    for split, c in counts.items():
        empty = np.flatnonzero(c == 0)
        if len(empty):
            raise DataError(f"{split}: no images of class(es) {', '.join(map(str, empty[:10] + 1))}"
                            f"{' ...' if len(empty) > 10 else ''} among {num_classes}: partial input refused")
    for split, paths in files.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        arrays = [np.lib.format.open_memmap(out / split / f"{c}.npy", mode="w+", dtype=np.uint8,
                                            shape=(int(n), 3, SIDE, SIDE)) for c, n in enumerate(counts[split])]
        filled = np.zeros(num_classes, dtype=np.int64)
        for i, (path, (data, labels)) in enumerate(_batches(paths, num_classes)):
            images = data.reshape(-1, 3, SIDE, SIDE)
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
            for c in np.flatnonzero(np.diff(bounds)):
                idx = order[bounds[c]:bounds[c + 1]]
                arrays[c][filled[c]:filled[c] + len(idx)] = images[idx]
                filled[c] += len(idx)
            progress(f"[2/2 write] {split} {i + 1}/{len(paths)} {path.name}")
        for a in arrays:
            a.flush()
        del arrays
    meta = {"format": FORMAT, "num_classes": num_classes, "shape": [3, SIDE, SIDE], "dtype": "uint8",
            "counts": {split: c.tolist() for split, c in counts.items()},
            "source": {split: [str(p) for p in paths] for split, paths in files.items()}}
    (out / "meta.json").write_text(json.dumps(meta))
    progress(f"wrote {sum(int(c.sum()) for c in counts.values()):,} images of {num_classes} classes to {out}")
    return meta


def _batches(paths: list[Path], num_classes: int) -> Iterator[tuple[Path, tuple[np.ndarray, np.ndarray]]]:
    for path in paths:
        yield path, read_batch(path, num_classes)


def load_meta(root: str | Path | None) -> dict:
    """The converted directory's metadata, or a DataError saying how to make it."""
    from plasticity_lab.streams.download import where_to_get

    hint = where_to_get("continual_imagenet")
    if root is None:
        raise DataError(f"continual_imagenet needs data.root (no ImageNet ships with the lab); {hint}")
    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is missing or unreadable ({err}); {hint}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} was not written by `lab data imagenet32` (format {meta.get('format')!r}); {hint}")
    return meta


def class_images(root: str | Path, split: str, c: int) -> np.ndarray:
    """Memory-mapped uint8 (n, 3, 32, 32) images of class ``c`` (0-based)."""
    path = Path(root) / split / f"{c}.npy"
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is missing or corrupt ({err}); re-run lab data imagenet32") from None
