"""Weights & Biases sink: online with a login and network, else offline.

Offline runs are written under ``out_dir/wandb/`` and uploaded later with
``wandb sync <dir>``. Nothing here may block or crash a run: a login check
that cannot reach the server falls back to offline mode, and any wandb error
while logging drops the sink with a warning (see ``sinks.emit``).
"""
from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from plasticity_lab.lab.sinks import plain

MODES = ("auto", "online", "offline")


def _has_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(timeout: float = 2.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def choose_mode(mode: str) -> str:
    """``auto`` -> ``online`` when a login exists and the server answers, else ``offline``."""
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    return "online" if _has_login() and _reachable() else "offline"


class WandbSink:
    """Logs records to one W&B run; ``step`` is W&B's step, ``task`` a field."""

    def __init__(self, out_dir: Path, config: dict[str, Any], *, project: str, entity: str | None, group: str | None,
                 name: str | None, tags: list[str], job_type: str, mode: str, run_id: str | None = None):
        import wandb

        self.mode = choose_mode(mode)
        self._wandb = wandb
        kwargs = dict(project=project, entity=entity, group=group, name=name, tags=list(tags) or None, job_type=job_type,
                      config=config, dir=str(out_dir), id=run_id, resume="allow" if run_id else None,
                      settings=wandb.Settings(init_timeout=30, silent=True, console="off"))
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception:  # unreachable server, expired key, ...: keep the run, go offline
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        self.run_id = self.run.id
        self.dir = Path(self.run.dir).parent

    def write(self, record: dict[str, Any]) -> None:
        data = {k: plain(v) for k, v in record.items() if k != "step"}
        self.run.log(data, step=int(record["step"]))

    def log_matrix(self, rows: list[list[Any]], heatmap: Path) -> None:
        """The accuracy matrix as a W&B table (after_task, task, accuracy) and its heatmap image."""
        data = {"eval/acc_matrix": self._wandb.Table(columns=["after_task", "task", "accuracy"], data=rows)}
        if heatmap.exists():
            data["eval/acc_matrix_heatmap"] = self._wandb.Image(str(heatmap))
        self.run.log(data)

    def close(self) -> None:
        self.run.finish()

    def sync_hint(self) -> str | None:
        return f"wandb sync {self.dir}" if self.mode == "offline" else None
