"""A sweep directory (Hydra multirun): its jobs, each one's overrides and
what became of it.

Every launcher (basic, joblib, submitit) leaves the same layout: the sweep's
``multirun.yaml`` and, per job, a folder named after the job's swept values
(Hydra's ``override_dirname``) holding ``.hydra/overrides.yaml`` and the run.
Reading the folders, not the launcher's return values, is what works when
the jobs ran in other processes or on other machines.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.lab.rundir import failure, is_finished, status

SWEEP_FILE = "multirun.yaml"
BEST_FILE = "optimization_results.yaml"
"""Written by Hydra's Optuna sweeper into the sweep directory: the best trial's parameters and value."""
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
    after the job number when nothing is swept or a tuner samples the values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = sorted({o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()} | set(IGNORED_KEYS))
    if not any(o.is_sweep_override() for o in parsed) or any(o.is_interval_sweep() for o in parsed):
        return ["hydra.sweep.subdir=${hydra.job.num}"]  # nothing swept, or a tuner's samples: by job number
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
    """One line per job (its swept values and status), then the totals by
    state, with the jobs the sweep has not started yet."""
    lines = [f"  {j.label}: {'not started' if j.status == 'no run' else j.status}" for j in jobs_]
    counts = {s: sum(j.status.startswith(s) for j in jobs_) for s in ("finished", "failed", "running", "stopped")}
    empty = sum(j.status == "no run" for j in jobs_)  # a folder Hydra made for a job a stop kept from starting
    other = len(jobs_) - sum(counts.values()) - empty
    expected = expected_jobs(sweep)
    waiting = max(expected - len(jobs_), 0) + empty if expected is not None else empty
    told = [f"{n} {s}" for s, n in counts.items() if n or s in ("finished", "failed")]
    told += [f"{other} started (no checkpoint yet)"] * bool(other) + [f"{waiting} not started"] * bool(waiting)
    line = f"sweep: {len(jobs_) + waiting} job(s) under {sweep}: " + ", ".join(told)
    if counts["stopped"] or other or waiting:
        line += f" (lab resume {sweep} goes on with the unfinished)"
    return "\n".join([*lines, line])


def _launch(sweep: Path) -> Any:
    """The ``hydra`` node of the sweep's multirun.yaml."""
    return OmegaConf.load(sweep / SWEEP_FILE).hydra


def record_launch(sweep: Path, hydra: DictConfig, launch: list[str]) -> None:
    """The sweep's ``multirun.yaml`` as Hydra's basic sweeper writes it (its
    Hydra config, the ``launch`` overrides split into Hydra's and the task's),
    for a sweeper that writes none (Hydra's Optuna sweeper): status and resume read it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(launch)
    hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    hydra.overrides.task = [o.input_line for o in parsed if not o.is_hydra_override()]
    sweep.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), sweep / SWEEP_FILE)


def grid_size(overrides: list[str]) -> int:
    """How many jobs Hydra's basic sweeper makes of ``overrides`` (the product of the swept values' counts)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def expected_jobs(sweep: Path) -> int | None:
    """How many jobs the sweep launches: the product of its swept values'
    counts (Hydra's basic sweeper), or the number of trials a tuning sweeper
    was asked for; None if the file does not say."""
    try:
        hydra = _launch(sweep)
        if "n_trials" in hydra.sweeper:
            return int(hydra.sweeper.n_trials)
        return grid_size(list(hydra.overrides.task))
    except Exception:  # an older or hand-edited multirun.yaml: the folders alone tell
        return None


def swept_keys(sweep: Path) -> list[str]:
    """The keys the sweep varies: its sweep overrides (``a=1,2``) and a tuning
    sweeper's search space (``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = _launch(sweep)
    parsed = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = hydra.sweeper.get("params") or {}
    return [*keys, *(k for k in params if k not in keys)]


@dataclass(frozen=True)
class Membership:
    """A run's place in a sweep: the sweep's folder name and the run's swept values."""

    sweep: str
    values: dict[str, str]


def membership(run_dir: Path) -> Membership | None:
    """The sweep ``run_dir`` is a job of (or a seed of a job of), read from the
    files Hydra left; None for a run outside a sweep."""
    run_dir = run_dir.resolve()
    for job in (run_dir, run_dir.parent):
        marker = job / ".hydra" / "overrides.yaml"
        sweep = next((p for p in job.parents if is_sweep(p)), None) if marker.is_file() else None
        if sweep is not None:
            try:
                swept = set(swept_keys(sweep))
            except Exception:  # a hand-edited or older multirun.yaml: the group without tags
                swept = set()
            values = dict(o.lstrip("+").split("=", 1) for o in (yaml.safe_load(marker.read_text()) or []) if "=" in o)
            return Membership(sweep.name, {k: v for k, v in values.items() if k in swept})
    return None


FINAL_FRACTION = 10
"""The objective averages the last tenth of the tasks (at least one)."""


def objective(job_dir: Path) -> float | None:
    """What a job returns to Hydra's sweeper (Optuna maximises or minimises
    it): the online accuracy over the final tenth of its tasks (at least
    one), or for a regression stream the online squared error there; the mean
    over the job's seeds; None for a job without a summary (failed, stopped)."""
    summaries = [p for p in [job_dir / "summary.json", *sorted(job_dir.glob("seed_*/summary.json"))] if p.is_file()]
    scores = []
    for path in summaries:
        s = json.loads(path.read_text())
        curve = s["online_loss" if s.get("target") == "value" else "online_accuracy"]
        tail = curve[-max(1, len(curve) // FINAL_FRACTION):]
        scores.append(sum(tail) / len(tail))
    return sum(scores) / len(scores) if scores else None

