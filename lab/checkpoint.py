"""Checkpoints: written atomically, read back by ``lab resume`` without running code.

A checkpoint holds, for every run of a group (one for a plain run), the agent
(model + optimizer), the tracker's and the interventions' state, its random
generators, its results, its step and its sinks' positions, plus the group's
position in the stream (a task boundary, or the batch where a stopped run
left a task). It is written to a temporary file, flushed to disk and renamed
over ``checkpoints/last.pt``, so a run killed at any moment leaves either the
old or the new checkpoint, never half of one.

It holds tensors and plain Python values only and is read with
``torch.load(weights_only=True)``: a checkpoint from anywhere cannot run code.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plasticity_lab.registry import DataError

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (Python's,
    numpy's legacy one, torch's CPU one and each CUDA device's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def compact(obj: Any) -> Any:
    """``obj`` with every tensor that views a larger storage copied out:
    ``torch.save`` writes a view's whole storage, so one seed's slice of
    vectorised seeds' stacked weights would otherwise carry all of them."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.untyped_storage().nbytes() > obj.nbytes else obj
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(compact(v) for v in obj)
    return obj


def save(directory: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``directory/last.pt`` atomically (write, fsync, rename).

    A failure to write (a full disk, a read-only folder) keeps the previous
    checkpoint, removes the partial temporary file and raises DataError naming
    the path."""
    path, tmp = directory / LAST, directory / (LAST + ".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError, the OSError within
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not write the checkpoint {path} ({cause.strerror or cause}); the previous checkpoint "
                        "is kept: free space or make the folder writable, then lab resume") from None
    return path


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint under ``directory``, or ``None`` if there is none yet.

    Read with ``weights_only=True`` (tensors and plain values; nothing to run).
    A corrupt, truncated or foreign file raises DataError naming it."""
    path = directory / LAST
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(f"{path} holds more than tensors and plain values ({str(err).splitlines()[0]}); the lab "
                        "does not load code from a checkpoint: remove the file to start the run again") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"{path} is corrupt or truncated ({type(err).__name__}); remove it to start the run again "
                        "from the beginning, or restore it from a copy") from None
