"""Read the history rows of an offline W&B run file (``run-<id>.wandb``).

wandb >= 0.19 no longer ships a Python reader for its transaction log, so the
tests read it here: a 7-byte header (``:W&B``, magic, version) followed by
LevelDB-log records in 32 KiB blocks (7-byte record header: CRC32C, length,
type FULL=1/FIRST=2/MIDDLE=3/LAST=4), each payload one protobuf ``Record``.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    out, pos, chunks = [], HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks.append(data[pos + HEADER:pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(chunks))
            out.append(rec)
            chunks = []
    return out


def wait_for_exit(run_dir: Path, timeout: float = 120.0) -> Path:
    """The offline run file under ``run_dir``, once W&B has written its exit
    record (its writer finishes the file after ``run.finish()`` returns).
    ``timeout`` only bounds a failure; nothing here bets on how long W&B takes."""
    deadline = time.monotonic() + timeout
    while True:
        paths = sorted(run_dir.glob("**/run-*.wandb"))
        if len(paths) == 1 and paths[0].stat().st_size > HEADER:
            try:
                if any(r.WhichOneof("record_type") == "exit" for r in records(paths[0])):
                    return paths[0]
            except Exception:  # a record half-written at this instant: read again
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no complete W&B run file under {run_dir} after {timeout} s: {paths}")
        time.sleep(0.1)


def history(run_dir: Path) -> list[dict]:
    """Every logged row of the offline run under ``run_dir`` (a ``wandb/`` folder), once complete."""
    path = wait_for_exit(run_dir)
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def config(run_dir: Path) -> dict:
    """The run config of the offline run under ``run_dir``, once complete."""
    path = wait_for_exit(run_dir)
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") in ("run", "config"):
            items = rec.run.config.update if rec.WhichOneof("record_type") == "run" else rec.config.update
            for item in items:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def run_record(run_dir: Path):
    """The run record (group, tags, name, ...) of the offline run under ``run_dir``, once complete."""
    path = wait_for_exit(run_dir)
    return next(rec.run for rec in records(path) if rec.WhichOneof("record_type") == "run")
