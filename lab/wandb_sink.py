"""Weights & Biases sink: online with a login and network, else offline.

Offline runs are written under ``out_dir/wandb/`` and uploaded later with
``wandb sync <dir>``. Nothing here may block or crash a run: a login check
that cannot reach the server falls back to offline mode, and any wandb error
while logging drops the sink with a warning (see ``sinks.emit``).
"""
from __future__ import annotations

import json
import netrc
import os
import shutil
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
    """Logs records to one W&B run; ``step`` is W&B's step, ``task`` a field.

    A resumed run logs to the same run id. Online it first rewinds the run's
    history to the checkpoint's step (W&B's ``resume_from``), so what the
    killed process logged after its checkpoint is replaced, not doubled; where
    the server does not rewind, it resumes with ``resume="allow"``. Offline,
    each process would write a segment and a killed one may lose what it had
    not flushed, so a resumed offline run logs nothing live: when it finishes
    its offline run is written whole from metrics.jsonl (:meth:`consolidate`),
    one complete history for ``wandb sync``."""

    essential = False

    def __init__(self, out_dir: Path, config: dict[str, Any], run_id: str | None = None, resume_step: int | None = None):
        """The W&B run of the run in ``out_dir`` with resolved ``config`` (its
        ``wandb`` section says where and how); ``run_id``/``resume_step``: a resumed run's."""
        import wandb

        self.mode = choose_mode(config["wandb"]["mode"])
        self._wandb = wandb
        self.out_dir = out_dir
        self.settings = init_settings(out_dir, config)
        self.deferred = resume_step is not None and self.mode == "offline"
        self.run = None if self.deferred else self._init(run_id, resume_step)
        self.run_id = run_id if self.run is None else self.run.id
        self.dir = None if self.run is None else Path(self.run.dir).parent

    def _init(self, run_id: str | None, resume_step: int | None) -> Any:
        wandb = self._wandb
        if run_id and resume_step is not None and self.mode == "online":
            try:
                return wandb.init(mode="online", resume_from=f"{run_id}?_step={resume_step}", **self.settings)
            except Exception:  # a server without rewinding: resume as it is
                pass
        kwargs = dict(id=run_id, resume="allow" if run_id else None, **self.settings)
        try:
            return wandb.init(mode=self.mode, **kwargs)
        except Exception:  # unreachable server, expired key, ...: keep the run, go offline
            self.mode = "offline"
            return wandb.init(mode="offline", **kwargs)

    def write(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            data = {k: plain(v) for k, v in record.items() if k != "step"}
            self.run.log(data, step=int(record["step"]))

    def log_matrix(self, rows: list[list[Any]], heatmap: Path) -> None:
        """The accuracy matrix as a W&B table (after_task, task, accuracy) and its heatmap image."""
        if self.run is not None:
            log_matrix(self._wandb, self.run, rows, heatmap)

    def stopping(self) -> None:
        """The run stops to be resumed (a signal): W&B marks it preempted, not finished."""
        if self.run is not None:
            self.run.mark_preempting()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()

    def consolidate(self, records: Path) -> str | None:
        """Offline: this run's W&B history written whole from ``records``
        (metrics.jsonl) in place of its segments; returns the sync hint (None online)."""
        if self.mode != "offline":
            return None
        return rebuild_offline(self.out_dir, self.run_id, self.settings, records)

    def sync_hint(self) -> str | None:
        return f"wandb sync {self.dir}" if self.mode == "offline" and self.dir is not None else None


def init_settings(out_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``wandb.init``'s arguments for the run in ``out_dir`` (its config's
    ``wandb`` section). A job of a sweep lands in a group named after the
    sweep's folder (unless ``wandb.group`` names one), tagged ``key=value``
    with its swept values."""
    import wandb

    from plasticity_lab.lab.sweep import membership

    w = config["wandb"]
    sweep = membership(out_dir)  # a sweep's jobs share its group, tagged with their swept values
    group = w["group"] or (sweep.sweep if sweep else config["experiment"])
    # W&B refuses tags over 64 characters
    tags = [*w["tags"], *(f"{k}={v}"[:64] for k, v in (sweep.values if sweep else {}).items())]
    return dict(project=w["project"], entity=w["entity"], group=group,
                name=w["name"] or f"{config['experiment']}-s{config['seed']}", tags=tags or None,
                job_type=w["job_type"], config=config, dir=str(out_dir),
                # create_new: vectorised seeds hold one W&B run each in one process (the default hands
                # a second init the first run back)
                settings=wandb.Settings(init_timeout=30, silent=True, console="off", reinit="create_new"))


def log_matrix(wandb: Any, run: Any, rows: list[list[Any]], heatmap: Path) -> None:
    """The accuracy matrix as a W&B table (after_task, task, accuracy) and its heatmap image."""
    data = {"eval/acc_matrix": wandb.Table(columns=["after_task", "task", "accuracy"], data=rows)}
    if heatmap.exists():
        data["eval/acc_matrix_heatmap"] = wandb.Image(str(heatmap))
    run.log(data)


def rebuild_offline(out_dir: Path, run_id: str | None, settings: dict[str, Any], records: Path) -> str:
    """One offline W&B run under ``out_dir/wandb`` holding every record of
    ``records`` exactly once (and the accuracy matrix, if the run finished),
    in place of the offline segments there. Idempotent. Returns the sync hint."""
    import wandb

    for segment in (out_dir / "wandb").glob("offline-run-*"):
        shutil.rmtree(segment, ignore_errors=True)
    run = wandb.init(mode="offline", id=run_id, **settings)
    with open(records, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):  # a line cut by a kill is not a record
                record = json.loads(line)
                run.log({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))
    summary = out_dir / "summary.json"
    if summary.exists():
        log_matrix(wandb, run, json.loads(summary.read_text())["acc_entries"], out_dir / "plots" / "acc_matrix.png")
    run.finish()
    return f"wandb sync {Path(run.dir).parent}"


def rebuild_run(out_dir: Path) -> str:
    """``lab sync``: the offline W&B run of the run in ``out_dir`` rebuilt from
    its metrics.jsonl under the run id its offline segments carry (a new one
    if there are none). Returns the sync hint."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(out_dir / "config.yaml"), resolve=True)
    segments = sorted((out_dir / "wandb").glob("offline-run-*-*"))
    run_id = segments[-1].name.rsplit("-", 1)[1] if segments else None
    return rebuild_offline(out_dir, run_id, init_settings(out_dir, config), out_dir / "metrics.jsonl")
