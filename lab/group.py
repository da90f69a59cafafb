"""A group of runs trained together — one run, or vectorised seeds (one run
per seed under ``<out>/seed_<s>``) — opened in one directory, locked, saved
in one checkpoint and resumed together.

Opening decides, once, what a directory holds and what to do with it:
nothing yet (start), an unfinished run of the same config (resume: what a
requeued cluster job relaunching ``lab run`` needs), a run of another config
or a finished run (refuse in one line). The checkpoint carries the resolved
config, so a resume compares against what the run really started with
(lab/resume.py says what may differ), and it is one file for the whole group,
written atomically, so a group killed at any moment resumes as a group.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.vmapped import vmap_reason
from plasticity_lab.lab import checkpoint
from plasticity_lab.lab.build import say_once
from plasticity_lab.lab.banner import banner
from plasticity_lab.lab.provenance import data_fingerprint, now, segment
from plasticity_lab.lab.resume import check
from plasticity_lab.lab.rundir import CONFIG, RunDirLock, clear_failure, fingerprint, is_finished, unfinish, write_atomic, write_progress
from plasticity_lab.lab.runner import BuiltRun, RunContext, build_run, emit_record, open_run, run_state
from plasticity_lab.lab.seeds import SeedGenerators, check_seeds
from plasticity_lab.lab.sinks import close_all
from plasticity_lab.registry import ConfigError

FORMAT = 3
"""The checkpoint layout; a run resumes only from its own."""
PROVENANCE = "provenance.json"
"""Written at each start, checkpoint and finish: the data and the processes that trained the group (lab/provenance.py)."""


@dataclass
class RunGroup:
    """The runs trained together and the state they share: the next task, and
    where in it a stopped group left off (``position``; None at a boundary)."""

    cfg: DictConfig
    out: Path
    ctxs: list[RunContext]
    generators: SeedGenerators
    lock: RunDirLock
    next_task: int = 0
    position: dict[str, Any] | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    opened: float = field(default_factory=time.perf_counter)

    def provenance(self) -> dict[str, Any]:
        """The data read and every process that trained the group, the current
        one up to now (lab/provenance.py)."""
        self.segments[-1].update(wall_s=round(time.perf_counter() - self.opened, 3), ended_at=now())
        record = {"data": self.data, "segments": self.segments,
                  "wall_time_s": round(sum(s["wall_s"] for s in self.segments), 3)}
        write_atomic(self.out / PROVENANCE, json.dumps(record, indent=1))  # the file says as much as the checkpoint
        return record

    def save(self, next_task: int, position: dict[str, Any] | None = None) -> None:
        """One checkpoint of every run (atomic; ``lab resume`` starts at ``next_task``, or inside it at ``position``)."""
        if not self.cfg.train.checkpoint:
            return
        runs = []
        for i, ctx in enumerate(self.ctxs):
            runs.append({**run_state(ctx), "rng": self.generators.state(i)})
        config = OmegaConf.to_container(self.cfg, resolve=True)
        checkpoint.save(self.out / "checkpoints", {
            "format": FORMAT, "config": config, "fingerprint": fingerprint(config), "next_task": next_task,
            "position": position, "resumes": self.resumes, "runs": runs, "segments": self.provenance()["segments"],
        })
        write_progress(self.out, {"next_task": next_task, "num_tasks": self.ctxs[0].stream.num_tasks,
                                  "step": self.ctxs[0].step, "inside_task": position is not None})

    def close(self) -> None:
        for ctx in self.ctxs:
            close_all(ctx.sinks)
        self.lock.release()


def claim_dir(base: Path) -> Path:
    """Create and return ``base`` (or ``base-1``, ``base-2``, ...): ``mkdir`` is
    atomic, so two runs started in the same second never share a directory."""
    base.parent.mkdir(parents=True, exist_ok=True)
    out, i = base, 1
    while True:
        try:
            out.mkdir()
            return out
        except FileExistsError:
            out, i = base.with_name(f"{base.name}-{i}"), i + 1


def default_out_dir(cfg: DictConfig) -> Path:
    return claim_dir(Path("runs") / str(cfg.experiment) / datetime.now().strftime("%Y%m%d-%H%M%S"))


def open_group(cfg: DictConfig, out_dir: str | Path | None = None, resume: bool = False,
               requested: list[str] | tuple[str, ...] = ()) -> RunGroup:
    """The group of ``cfg`` in its directory, started or resumed (see the
    module docstring); ``requested``: the keys a ``lab resume`` changes on purpose."""
    seeds = check_seeds(cfg.seeds) if cfg.get("seeds") is not None else None
    built, states = _build(cfg, seeds)  # every input checked before anything is written
    if built[0].note:
        say_once(built[0].note)
    out = Path(out_dir or cfg.out_dir or default_out_dir(cfg))
    existed = out.exists()
    lock = RunDirLock(out).acquire()
    try:
        ckpt, changes = _decide(cfg, out, resume, list(requested))
        group = _open(cfg, out, lock, seeds, built, states, ckpt)
    except BaseException:
        lock.release()
        if not existed:  # nothing of a run was written: leave no directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    clear_failure(out)  # a new start or a resume: an earlier failure no longer describes the directory
    if changes:
        _record_changes(group, changes)
    b = built[0]
    group.data = {"source": b.stream.data, **data_fingerprint(cfg.data.root, b.stream.data_files)}
    group.segments.append(segment(b.device, b.threads.threads, b.threads.reason))
    group.provenance()  # provenance.json from the first moment
    if cfg.progress != "off":
        parameters = sum(p.numel() for p in b.agent.model.parameters())
        print(banner(cfg, out, b.stream, parameters, b.device, b.threads, isinstance(b.agent, FusedAgent),
                     len(built)), file=sys.stderr, flush=True)
    if ckpt is not None:
        where = "inside it" if group.position else "at its start"
        print(f"lab: resuming {out} at task {group.next_task + 1}/{group.ctxs[0].stream.num_tasks} ({where})",
              file=sys.stderr, flush=True)
    return group


def _decide(cfg: DictConfig, out: Path, resume: bool, requested: list[str]) -> tuple[dict | None, dict]:
    """The checkpoint to resume from (None: start) and the changes it applies."""
    ckpt = checkpoint.load(out / "checkpoints")
    if ckpt is not None and ckpt.get("format") != FORMAT:
        raise ConfigError("checkpoint", str(out / "checkpoints" / checkpoint.LAST),
                          f"a checkpoint of format {FORMAT} (it was written by another version of the lab): "
                          "start the run again in a new out_dir")
    new = OmegaConf.to_container(cfg, resolve=True)
    how = "lab resume" if resume else "lab run"
    if (out / CONFIG).is_file() and not resume:
        if is_finished(out):
            raise ConfigError("out_dir", str(out), "a directory without a finished run (this one has finished: "
                              "choose another out_dir, or lab resume it with a larger stream.num_tasks to extend it)")
        old = _saved(ckpt["config"] if ckpt is not None else OmegaConf.load(out / CONFIG))
        check(old, new, requested, ckpt["next_task"] if ckpt else 0, how)  # refuses another config
    if ckpt is None:
        return None, {}
    changes = check(_saved(ckpt["config"]), new, requested, ckpt["next_task"], how)
    if is_finished(out):
        unfinish(out)  # a resume that extends a finished run
    return ckpt, changes


def _saved(config: Any) -> dict[str, Any]:
    """A config a run was saved with, read with today's defaults for keys added since."""
    from plasticity_lab.lab.config import with_defaults

    return OmegaConf.to_container(with_defaults(config), resolve=True)


def _build(cfg: DictConfig, seeds: list[int] | None) -> tuple[list[BuiltRun], list[dict[str, Any]]]:
    """Every run built in memory, with each one's generators as its build left
    them; a group the fused path cannot stack is refused before anything is written."""
    if seeds is None:
        return [build_run(cfg)], []
    built, states = [], []
    for s in seeds:
        built.append(build_run(OmegaConf.merge(cfg, {"seed": s, "seeds": None, "out_dir": None})))
        states.append(checkpoint.rng_state())
    tasks = range(built[0].stream.num_tasks) if built[0].stream.train_sizes is not None else [0]
    # seeds whose task k differ in size (shuffled task orders) sit out steps in turn (agents/idle.py)
    ragged = any(len({b.stream.train_size(k) for b in built}) > 1 for k in tasks)
    if not all(isinstance(b.agent, FusedAgent) for b in built):
        why = vmap_reason(built[0].agent, built[0].hooks.drops_optimizer_state or bool(cfg.train.new_head), ragged)
        if why is not None:
            raise ConfigError("seeds", seeds, f"a run vectorised seeds support (this one has {why}); run the seeds "
                              "as a sweep instead: lab run --multirun seed=" + ",".join(map(str, seeds)))
    return built, states


def _open(cfg: DictConfig, out: Path, lock: RunDirLock, seeds: list[int] | None, built: list[BuiltRun],
          states: list[dict[str, Any]], ckpt: dict | None) -> RunGroup:
    runs = ckpt["runs"] if ckpt is not None else [None] * len(built)
    if len(runs) != len(built):
        raise ConfigError("seeds", seeds, f"the {len(runs)} run(s) its checkpoint holds")
    generators = SeedGenerators(states) if seeds is not None else SeedGenerators.single()
    if seeds is not None:
        write_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    ctxs = []
    for i, (b, state) in enumerate(zip(built, runs)):
        run_dir = out if seeds is None else out / f"seed_{seeds[i]}"
        with generators.own(i):
            ctxs.append(open_run(b, run_dir, out, state))
    if ckpt is not None:
        for i, state in enumerate(runs):
            generators.restore(i, state["rng"])
    group = RunGroup(cfg, out, ctxs, generators, lock)
    if ckpt is not None:
        group.next_task, group.position, group.resumes = ckpt["next_task"], ckpt["position"], list(ckpt["resumes"])
        group.segments = list(ckpt.get("segments", []))
    return group


def _record_changes(group: RunGroup, changes: dict[str, tuple[Any, Any]]) -> None:
    """A resume's changes: in the summary's ``resumes`` and, as ``resume/<key>`` records, in each run's metrics."""
    group.resumes.append({"at_task": group.next_task, "step": group.ctxs[0].step,
                          "changes": {k: [a, b] for k, (a, b) in changes.items()}})
    record = {f"resume/{k}": b for k, (a, b) in changes.items() if isinstance(b, (int, float)) and not isinstance(b, bool)}
    for ctx in group.ctxs:
        emit_record(ctx, group.next_task, record)
