"""Sinks: where records go. A record is a flat dict
``{"step": s, "task": k, "name/with/slashes": value, ...}``.

A sink never raises into the training loop: the runner calls them through
:func:`emit`, which warns once and drops a sink that fails.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def plain(value: Any) -> Any:
    """A JSON-friendly number: tensors read back, non-finite floats as strings."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlSink:
    """``metrics.jsonl``: one JSON object per record, flushed as written.

    ``offset()`` is the file size, kept in checkpoints: a resumed run
    truncates the file back to it, so records of the killed, half-done task
    are not duplicated.
    """

    def __init__(self, path: Path, truncate_to: int | None = None):
        self.path = path
        if truncate_to is not None and path.exists():
            with open(path, "r+b") as f:
                f.truncate(truncate_to)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: plain(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def offset(self) -> int:
        self._f.flush()
        return os.path.getsize(self.path)

    def close(self) -> None:
        self._f.close()


def emit(sinks: list[Sink], record: dict[str, Any]) -> None:
    """Hand ``record`` to every sink; a failing sink is warned about and dropped."""
    for sink in list(sinks):
        try:
            sink.write(record)
        except Exception as err:  # a sink must never stop a run
            warnings.warn(f"{type(sink).__name__} failed ({err}); dropping it for the rest of the run")
            sinks.remove(sink)


def close_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        try:
            sink.close()
        except Exception as err:
            warnings.warn(f"{type(sink).__name__} failed to close ({err})")
