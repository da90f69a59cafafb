"""Pickled data files read without running code from them.

CIFAR-100's "python version" and the downsampled-ImageNet batches are
pickles by format, and ``pickle.load`` runs whatever a file asks for. These
files hold dicts, lists, strings, bytes, numbers and numpy arrays only, so
the unpickler here admits exactly the globals that rebuild those (numpy's
array reconstructors and dtype, and ``_codecs.encode``, which protocol-2
pickles use for bytes) and refuses anything else, naming the file.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from plasticity_lab.registry import DataError

ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class Refused(pickle.UnpicklingError):
    """The file asked for a global outside ALLOWED."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain data and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise Refused(f"{module}.{name}")


def load_data_pickle(path: Path, encoding: str, what: str) -> Any:
    """The plain data pickled in ``path`` (``what``: the format, for messages).
    DataError naming the file for anything but data, or a file that is not a pickle."""
    try:
        with open(path, "rb") as f:
            return DataUnpickler(f, encoding=encoding).load()
    except Refused as err:
        raise DataError(f"{path} asks to load {err}, which is not data: refused (a {what} file holds only "
                        "dicts, lists, numbers, strings and numpy arrays); use the published file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, OSError) as err:
        raise DataError(f"{path} is not a readable {what} pickle ({type(err).__name__}: {err}); re-extract it") from None
