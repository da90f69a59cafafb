"""Reader for the IDX file format of MNIST and Fashion-MNIST.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a
type byte (0x08 = unsigned byte), a byte giving the number of dimensions,
then each dimension as a big-endian int32, then the data in C order. Files
may be gzip-compressed (``.gz``). Hand-written rather than taken from
torchvision because torchvision's reader is private API
(``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor``) and gives no
message saying which file is wrong and how.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from plasticity_lab.registry import ConfigError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one IDX file, validated against its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ConfigError("data file", str(path), f"a readable IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ConfigError("data file", str(path), "an IDX file (header 00 00 <type> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(
            "data file", str(path), f"{expected} bytes for an IDX array of shape {dims}, found {len(raw)} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_idx(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``; a ConfigError naming both if absent."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    from plasticity_lab.streams.download import where_to_get

    raise ConfigError("data.root", str(root), f"a directory holding {stem} or {stem}.gz (standard MNIST IDX files); "
                      + where_to_get("permuted_mnist"))
