"""A run directory: one writer at a time, a config that says what it holds,
and a marker that says it finished.

- ``.lock``: an exclusive ``fcntl`` lock for the writing process's lifetime;
  a second process gets one line naming the holder (the kernel drops the lock
  when a process dies, even by SIGKILL, so a killed run never blocks its resume);
- ``config.yaml``: the resolved config (a resume's changes rewrite it);
- ``finished.json``: written last, after the summary, the plots and W&B: a
  directory without it holds a run that has not finished;
- ``failed.json``: the exit status and error line of a run that failed
  (diverged, bad input in a sweep job, a crash); a new start or resume removes it;
- every file the lab's readers depend on is written to a temporary file and
  renamed (:func:`write_atomic`), so a kill leaves the old or the new version.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from plasticity_lab.registry import ConfigError

LOCK = ".lock"
FINISHED = "finished.json"
FAILED = "failed.json"
CONFIG = "config.yaml"


class RunDirLock:
    """An exclusive lock on ``directory/.lock``, held until :meth:`release` (or the process ends)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd: int | None = None

    def acquire(self) -> "RunDirLock":
        path = self.directory / LOCK
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError("out_dir", str(self.directory), f"a folder the lab can create and write ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError("out_dir", str(self.directory),
                              f"a run directory no other process is writing (lab process {holder} holds its lock)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


PROGRESS = "checkpoints/progress.json"


def write_progress(directory: Path, progress: dict[str, Any]) -> None:
    """Where the last checkpoint is (next task, tasks, step), readable without loading it."""
    write_atomic(directory / PROGRESS, json.dumps(progress))


def mark_failed(directory: Path, exit_status: int, error: str) -> None:
    """Record that the run in ``directory`` failed, with its exit status and error line."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / FAILED, json.dumps({"exit_status": exit_status, "error": error,
                                                     "at": datetime.now(timezone.utc).isoformat()}))
    except OSError:  # an unwritable directory: the error line on stderr is all there is
        pass


def failure(directory: Path) -> dict[str, Any] | None:
    """The failure recorded in ``directory`` (exit_status, error), None if it did not fail."""
    try:
        return json.loads((directory / FAILED).read_text())
    except (OSError, ValueError):
        return None


def clear_failure(directory: Path) -> None:
    (directory / FAILED).unlink(missing_ok=True)


def status(run_dir: Path) -> str:
    """What a run directory holds, in words: finished, failed (exit status and
    error), stopped at task k/N, started, or nothing."""
    if is_finished(run_dir):
        return "finished"
    failed = failure(run_dir) or (failure(run_dir.parent) if run_dir.name.startswith("seed_") else None)
    if failed is not None:
        return f"failed (exit {failed['exit_status']}): {failed['error']}"
    for home in (run_dir, run_dir.parent):  # a seed's checkpoint is its group's
        try:
            p = json.loads((home / PROGRESS).read_text())
        except (OSError, ValueError):
            continue
        if p["next_task"] >= p["num_tasks"]:
            return f"stopped while finishing (all {p['num_tasks']} tasks trained)"
        return f"stopped at task {p['next_task'] + 1}/{p['num_tasks']}{' (inside it)' if p['inside_task'] else ''}"
    return "started, no checkpoint yet" if (run_dir / CONFIG).is_file() else "no run"


def is_finished(directory: Path) -> bool:
    return (directory / FINISHED).is_file()


def mark_finished(directory: Path, info: dict[str, Any]) -> None:
    """The last file a run writes: it has finished."""
    write_atomic(directory / FINISHED, json.dumps({"finished_at": datetime.now(timezone.utc).isoformat(), **info}))


def unfinish(directory: Path) -> None:
    """A finished run that a resume extends is unfinished again until it finishes anew."""
    (directory / FINISHED).unlink(missing_ok=True)


def fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the resolved config (keys sorted): what a checkpoint carries to recognise its run."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": value}`` (an empty mapping is a value of its own)."""
    if not isinstance(config, dict) or (not config and prefix):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs, in key order: ``{key: (old, new)}``."""
    a, b = flat(old), flat(new)
    missing = object()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}
