"""Data downloads: the files each stream reads, where they come from, and
fetching them with torchvision's downloader (its checksums verified).

The addresses and MD5 checksums are torchvision's own tables
(``torchvision.datasets.MNIST.resources``/``.mirrors``, ``FashionMNIST``,
``CIFAR100.url``/``.tgz_md5``), so they stay as well kept as torchvision is.
Only the archive download is used (``download_and_extract_archive``), never
the dataset classes: CIFAR-100's class would unpickle the files with
``pickle.load``, and the lab reads them with its restricted unpickler
(streams/pickles.py). ImageNet has no free download: its source is a page.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.error import URLError

from plasticity_lab.registry import ConfigError, DataError


@dataclass(frozen=True)
class DataSource:
    """A data set as files: ``files`` (name, MD5) fetched from the first of
    ``mirrors`` that serves them; ``layout`` says what ``data.root`` then holds;
    ``page``: where a person gets the files by hand."""

    name: str
    mirrors: tuple[str, ...]
    files: tuple[tuple[str, str], ...]
    page: str
    layout: str


def sources() -> dict[str, DataSource]:
    """The data sets ``lab data`` downloads, from torchvision's tables."""
    from torchvision.datasets import CIFAR100, MNIST, FashionMNIST

    idx = "the four IDX files (train/t10k images and labels; gzipped or not)"
    return {
        "mnist": DataSource("mnist", tuple(MNIST.mirrors), tuple(map(tuple, MNIST.resources)),
                            "https://yann.lecun.com/exdb/mnist/", idx),
        "fashion_mnist": DataSource("fashion_mnist", tuple(FashionMNIST.mirrors), tuple(map(tuple, FashionMNIST.resources)),
                                    "https://github.com/zalandoresearch/fashion-mnist", idx),
        "cifar100": DataSource("cifar100", (CIFAR100.url.rpartition("/")[0] + "/",),
                               ((CIFAR100.filename, CIFAR100.tgz_md5),), "https://www.cs.toronto.edu/~kriz/cifar.html",
                               "the cifar-100-python/ folder (train, test, meta) extracted from cifar-100-python.tar.gz"),
    }


STREAM_DATA = {"permuted_mnist": "mnist", "split_mnist": "mnist", "cifar100_incremental": "cifar100"}
"""The data set each stream that reads files reads by default."""


def where_to_get(stream: str) -> str:
    """One sentence: how to get the data ``stream`` reads."""
    if stream == "continual_imagenet":
        return ("download Imagenet32_train.zip and Imagenet32_val.zip from https://image-net.org/download-images "
                "(a login is needed), then: lab data imagenet32 --src DIR --out OUT and data.root=OUT")
    name = STREAM_DATA.get(stream)
    if name is None:
        return f"stream {stream} reads no data files"
    source = sources()[name]
    return (f"get them with: lab data {name} --out DIR, then data.root=DIR "
            f"(or by hand: {source.layout} from {source.page}, into DIR)")


def fetch(source: DataSource, out: str | Path, mirror: str | None = None,
          progress: Callable[[str], None] = print) -> Path:
    """Download ``source``'s files (from ``mirror`` when given) into ``out``,
    verify each one's MD5 and extract it into ``out`` (what ``data.root=out``
    reads: IDX files for MNIST and Fashion-MNIST, ``cifar-100-python/`` for CIFAR-100). Returns ``out``.
    Raises DataError (one line) when no mirror served a file or a checksum differs."""
    from torchvision.datasets.utils import download_and_extract_archive

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "a directory (this is a file)")
    mirrors = (mirror.rstrip("/") + "/",) if mirror else source.mirrors
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=out))
    except OSError as err:
        raise ConfigError("--out", str(out), f"a folder the lab can create and write ({err.strerror})") from None
    try:
        for i, (filename, md5) in enumerate(source.files):
            progress(f"[{i + 1}/{len(source.files)}] {filename}")
            errors = []
            for base in mirrors:
                try:
                    download_and_extract_archive(base + filename, download_root=str(staging), filename=filename,
                                                 md5=md5, extract_root=str(out))
                    break
                except (URLError, OSError, RuntimeError) as err:
                    why = str(err).splitlines()[0][:160]
                    if "corrupted" in why:  # torchvision's words for an MD5 mismatch
                        why = "its MD5 checksum is not the one torchvision records (a different or damaged file)"
                    errors.append(f"{base}{filename}: {why}")
            else:
                raise DataError(f"could not download {filename} ({'; '.join(errors)}); without a network, put "
                                f"{source.layout} from {source.page} into {out} by hand, then data.root={out}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
