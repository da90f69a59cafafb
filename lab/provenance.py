"""Provenance: what produced a run's numbers, recorded with them.

A run's summary.json (and provenance.json, written at start so an unfinished
run has it too) holds one *segment* per process that trained it (the first
start and every resume), each with the software (lab version and git commit,
whether the tree was dirty; torch, avalanche, wandb, numpy), the command line,
host, device, threads and when it ran, plus the data the run read (source,
data.root and a fingerprint of the files). ``wall_time_s`` sums the segments'
times up to their last checkpoint (work a kill threw away is not counted).
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch

PACKAGES = ("torch", "torchvision", "avalanche-lib", "wandb", "numpy", "hydra-core")
WHOLE_FILE_BYTES = 64 * 2**20
"""Files up to this size are hashed whole while the budget lasts; larger ones, and every
file once :data:`BUDGET_BYTES` have been read, by size, head and tail."""
EDGE_BYTES = 1 * 2**20
BUDGET_BYTES = 256 * 2**20
"""Bytes read whole per fingerprint (MNIST and Fashion-MNIST fit; a 4 GB ImageNet32
conversion is fingerprinted by its first files and the edges of the rest, in about a second)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def software() -> dict[str, Any]:
    """The lab's version and git state, the Python and package versions."""
    versions = {}
    for name in ("plasticity-lab", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "python": platform.python_version(), **git_state(Path(__file__).parent)}


def git_state(where: Path) -> dict[str, Any]:
    """The commit of the git tree holding ``where`` and whether it had
    uncommitted changes (None for both outside a git tree, and for an
    installed copy, which a user's own repository may happen to enclose)."""
    if "site-packages" in where.resolve().parts:
        return {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode:
            return {"git_commit": None, "git_dirty": None}
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}


def file_digest(path: Path, whole: bool = True) -> str:
    """sha256 of a file; of its size, head and tail when larger than
    :data:`WHOLE_FILE_BYTES` or when not ``whole``."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= 2 * EDGE_BYTES or (whole and size <= WHOLE_FILE_BYTES):
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def data_fingerprint(root: str | None, files: Sequence[str]) -> dict[str, Any]:
    """The data a run reads: ``data.root`` and the files the stream declares
    it read (``Stream.data_files``): one file's own digest (what ``sha256sum``
    prints), or a digest over the files' names and digests; none for a stream
    that generates its data."""
    h, read, digests = hashlib.sha256(), 0, []
    for p in map(Path, files):
        whole = read < BUDGET_BYTES
        read += p.stat().st_size if whole and p.stat().st_size <= WHOLE_FILE_BYTES else 2 * EDGE_BYTES
        digests.append(file_digest(p, whole))
        h.update(f"{p.parent.name}/{p.name}\0{digests[-1]}\n".encode())
    sha = digests[0] if len(digests) == 1 else h.hexdigest() if digests else None
    return {"root": str(Path(root).expanduser().resolve()) if root else None, "files": len(files), "sha256": sha}


def command_line() -> list[str]:
    """The process's command line as the shell gave it (/proc/self/cmdline: a
    sweep's jobs rewrite ``sys.argv`` for Hydra, the kernel's copy stays)."""
    try:
        return [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return list(sys.argv)


def segment(device: torch.device, threads: int, threads_reason: str) -> dict[str, Any]:
    """One process's part of a run: what ran it, where and when (``wall_s`` and ``ended_at`` are filled in later)."""
    return {"started_at": now(), "ended_at": None, "wall_s": 0.0, "host": platform.node(),
            "command": command_line(), "device": str(device), "threads": threads, "threads_reason": threads_reason,
            **software()}
