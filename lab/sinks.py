"""Sinks: where records go. A record is a flat dict
``{"step": s, "task": k, "name/with/slashes": value, ...}``.

A sink never raises into the training loop: the runner calls them through
:func:`emit`, which warns once and drops a sink that fails.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch

from plasticity_lab.registry import DataError


class Sink(Protocol):
    """Where records go. ``essential``: a failure to write stops the run (metrics.jsonl) instead of dropping the sink."""

    essential: bool

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
    """``metrics.jsonl``: one JSON object per record, flushed as written; the
    run's source of truth, so a failure to write it stops the run (the other
    sinks are dropped with a warning instead).

    ``position()`` (its size and the sha256 of its content) goes into each
    checkpoint; a resumed run checks the file still begins with exactly that
    content and truncates it there, so records of the killed, half-done task
    are not duplicated and an edited, truncated or deleted file is not
    silently half-rebuilt."""

    essential = True

    def __init__(self, path: Path):
        self.path = path
        self._hash = hashlib.sha256()
        self._f = open(path, "w", encoding="utf-8")

    @classmethod
    def resume(cls, path: Path, offset: int, sha256: str) -> "JsonlSink":
        """The sink of a resumed run: ``path`` cut back to the checkpoint's ``offset`` bytes,
        which must hash to ``sha256`` (DataError naming the file otherwise)."""
        sink = cls.__new__(cls)
        sink.path, sink._hash = path, hashlib.sha256()
        try:
            with open(path, "rb") as f:
                prefix = f.read(offset)
        except FileNotFoundError:
            prefix = None
        if prefix is None or len(prefix) != offset or hashlib.sha256(prefix).hexdigest() != sha256:
            what = "is missing" if prefix is None else (f"holds {len(prefix)} of the checkpoint's {offset} bytes"
                                                        if len(prefix) != offset else "differs from what was written")
            raise DataError(f"{path} {what}: it is the run's record, so the run does not resume over it; restore "
                            "it from a copy, or start the run again in a new out_dir")
        sink._hash.update(prefix)
        with open(path, "r+b") as f:
            f.truncate(offset)
        sink._f = open(path, "a", encoding="utf-8")
        return sink

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: plain(v) for k, v in record.items()}) + "\n"
        self._f.write(line)
        self._f.flush()
        self._hash.update(line.encode("utf-8"))

    def position(self) -> dict[str, Any]:
        """Where the file is: its size in bytes and the sha256 of those bytes."""
        self._f.flush()
        return {"offset": os.path.getsize(self.path), "sha256": self._hash.hexdigest()}

    def close(self) -> None:
        self._f.close()


def emit(sinks: list[Sink], record: dict[str, Any]) -> None:
    """Hand ``record`` to every sink; a failing sink is warned about and
    dropped, except the essential one (metrics.jsonl): its failure stops the
    run with DataError naming the file (the last checkpoint is kept)."""
    for sink in list(sinks):
        try:
            sink.write(record)
        except Exception as err:  # only the source of truth may stop a run
            if sink.essential:
                raise DataError(f"could not write {sink.path} ({err}); the last checkpoint is kept: free space, "
                                "then lab resume") from None
            warnings.warn(f"{type(sink).__name__} failed ({err}); dropping it for the rest of the run")
            sinks.remove(sink)


def close_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        try:
            sink.close()
        except Exception as err:
            warnings.warn(f"{type(sink).__name__} failed to close ({err})")
