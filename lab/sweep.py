"""A sweep directory (Hydra multirun): its jobs, each one's overrides and
what became of it.

Every launcher (basic, joblib, submitit) leaves the same layout: the sweep's
``multirun.yaml`` and, per job, a folder named after the job's swept values
(Hydra's ``override_dirname``) holding ``.hydra/overrides.yaml`` and the run.
Reading the folders, not the launcher's return values, is what works when
the jobs ran in other processes or on other machines.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from plasticity_lab.lab.rundir import failure, is_finished, status

SWEEP_FILE = "multirun.yaml"
IGNORED_KEYS = ("plugins", "hydra", "out_dir")
"""Overrides never part of a job folder's name (plug-in paths, Hydra's own keys)."""


@dataclass(frozen=True)
class Job:
    """``label``: the job's folder within the sweep (its swept values)."""

    path: Path
    label: str
    overrides: list[str]
    status: str
    failed: bool
    exit_status: int


def is_sweep(directory: Path) -> bool:
    return (directory / SWEEP_FILE).is_file()


def job_subdir(overrides: list[str]) -> list[str]:
    """The Hydra overrides that name each job's folder after its swept values
    (``activation=tanh,seed=1``; keys the same in every job left out), or
    after the job number when nothing is swept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = sorted({o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()} | set(IGNORED_KEYS))
    if not any(o.is_sweep_override() for o in parsed):
        return ["hydra.sweep.subdir=${hydra.job.num}"]
    return ["hydra.sweep.subdir=${hydra.job.override_dirname}",
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"]


def jobs(sweep: Path) -> list[Job]:
    """Every job of ``sweep`` that Hydra created, in job order."""
    out = []
    for marker in sorted(sweep.rglob(".hydra/overrides.yaml"), key=_job_number):
        job = marker.parent.parent
        overrides = yaml.safe_load(marker.read_text()) or []
        failed = failure(job)
        out.append(Job(job, str(job.relative_to(sweep)), list(overrides), status(job), failed is not None and not is_finished(job),
                       failed["exit_status"] if failed and not is_finished(job) else 0))
    return out


def _job_number(marker: Path) -> tuple[int, str]:
    try:
        return int((yaml.safe_load((marker.parent / "hydra.yaml").read_text()) or {})["hydra"]["job"]["num"]), str(marker)
    except (OSError, KeyError, TypeError, ValueError):
        return 0, str(marker)


def report(sweep: Path, jobs_: list[Job]) -> str:
    """One line per job (its swept values and status), then the totals."""
    lines = [f"  {j.label}: {j.status}" for j in jobs_]
    counts = {"finished": sum(j.status == "finished" for j in jobs_), "failed": sum(j.failed for j in jobs_)}
    other = len(jobs_) - counts["finished"] - counts["failed"]
    lines.append(f"sweep: {len(jobs_)} job(s) under {sweep}: {counts['finished']} finished, {counts['failed']} failed"
                 + (f", {other} unfinished (lab resume {sweep})" if other else ""))
    return "\n".join(lines)
