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
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from plasticity_lab.registry import ConfigError

LOCK = ".lock"
FINISHED = "finished.json"
FAILED = "failed.json"
CONFIG = "config.yaml"


class LockHeld(ConfigError):
    """Another process holds the run directory's lock (it is running there)."""


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
        if not _lock(fd, attempts=20):  # `lab status` probes the lock for an instant: wait that out
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockHeld("out_dir", str(self.directory),
                           f"a run directory no other process is writing (lab process {holder} holds its lock)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _lock(fd: int, attempts: int) -> bool:
    """Take the exclusive lock on ``fd``, trying ``attempts`` times 50 ms apart."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def is_running(directory: Path) -> bool:
    """A process holds ``directory``'s lock: a run is writing there now (on a
    cluster's shared file system, from whichever node runs it)."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)  # a teammate who may not write the file may still look
    except OSError:
        return False
    try:
        if not _lock(fd, attempts=1):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:  # a file system without flock: nothing to tell
        return False
    finally:
        os.close(fd)


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
    """What a run directory holds, in words: finished, running, failed (exit
    status and error), stopped at task k/N, started, or nothing."""
    if is_finished(run_dir):
        return "finished"
    if is_running(run_dir) or (run_dir.name.startswith("seed_") and is_running(run_dir.parent)):
        return "running" + _position(run_dir, " (checkpoint: task {task}/{num_tasks})")
    failed = failure(run_dir) or (failure(run_dir.parent) if run_dir.name.startswith("seed_") else None)
    if failed is not None:
        return f"failed (exit {failed['exit_status']}): {failed['error']}"
    stopped = _position(run_dir, "stopped at task {task}/{num_tasks}{inside}")
    if stopped:
        return stopped
    return "started, no checkpoint yet" if (run_dir / CONFIG).is_file() else "no run"


def _position(run_dir: Path, form: str) -> str:
    """Where the run's last checkpoint is, in ``form`` (task, num_tasks, inside); "" without one."""
    for home in (run_dir, run_dir.parent):  # a seed's checkpoint is its group's
        try:
            p = json.loads((home / PROGRESS).read_text())
        except (OSError, ValueError):
            continue
        if p["next_task"] >= p["num_tasks"] and "stopped" in form:
            return f"stopped while finishing (all {p['num_tasks']} tasks trained)"
        return form.format(task=min(p["next_task"] + 1, p["num_tasks"]), num_tasks=p["num_tasks"],
                           inside=" (inside it)" if p["inside_task"] else "")
    return ""


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
