"""Checkpoints at task boundaries: written atomically, read back by ``lab resume``.

A checkpoint holds the agent (model + optimizer), the interventions' state,
every RNG state, the stream position, the results so far and the sinks'
positions. It is written to a temporary file and renamed over
``checkpoints/last.pt``, so a run killed at any moment leaves either the old or
the new checkpoint, never half of one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    """Write ``payload`` to ``directory/last.pt`` atomically (write, fsync, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path, tmp = directory / LAST, directory / (LAST + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint under ``directory``, or ``None`` if there is none yet."""
    path = directory / LAST
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
