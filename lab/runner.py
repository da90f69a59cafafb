"""One run's life: opened from its config (everything built and checked
before any training), each task begun and ended (hooks, evaluation,
records), checkpointed at task boundaries and finished (summary, plots).

The training loop that drives one run, or a vectorised group of seeds, through
these is lab/loop.py. Order per task: ``on_task_start`` -> per batch
``before_step`` -> forward/backward/optimizer step -> ``after_step`` ->
``on_task_end`` -> evaluation -> records -> checkpoint.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents import Agent
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.hooks import HookPlan, Record, plan_hooks
from plasticity_lab.agents.interventions import Intervention
from plasticity_lab.agents.interventions.resets import Reset
from plasticity_lab.lab import checkpoint
from plasticity_lab.lab.build import (as_dict, build_agent, build_interventions, build_stream, build_tracker, check_train,
                                      resolve_device, seed_everything, use_fast_path)
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.results import DENSE_MAX_TASKS, Results
from plasticity_lab.lab.sinks import JsonlSink, Sink, emit
from plasticity_lab.metrics.catalog import facts_of_records
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import Stream, Task

EVAL_CHUNK = 2048


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept."""


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


@dataclass
class RunContext:
    """One run's live state: what it trains, what watches it, where it writes.
    ``hooks`` is the plan of the tracker and the interventions (in that
    order: the tracker measures a task start before any intervention acts)."""

    cfg: DictConfig
    out: Path
    stream: Stream
    agent: Agent
    interventions: list[Intervention]
    tracker: Tracker | None
    hooks: HookPlan
    sinks: list[Sink]
    results: Results
    jsonl: JsonlSink
    wandb: Any = None
    step: int = 0
    first_task: int = 0
    device: torch.device = torch.device("cpu")


def task_examples(ctx: RunContext) -> list[int]:
    """Examples each task will train (its size x epochs), for progress and ETA."""
    stream, first, epochs = ctx.stream, ctx.first_task, ctx.cfg.train.epochs
    if stream.train_sizes is not None:
        return [stream.train_size(k) * epochs for k in range(stream.num_tasks)]
    size = stream.train_size(first) * epochs if first < stream.num_tasks else 0
    return [size] * stream.num_tasks


def progress_metric(stream: Stream) -> str:
    return "acc" if stream.target == "class" else "err"


CHECKPOINT_FORMAT = 2
"""Bumped when a checkpoint's layout changes; a run resumes only from its own format."""


def open_run(cfg: DictConfig, out_dir: str | Path | None = None, resume: bool = False) -> RunContext:
    """Build everything a run needs (failing on bad input before any training),
    restore the last checkpoint with ``resume``, and open the sinks."""
    check_train(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    stream = build_stream(cfg)
    agent = build_agent(cfg, stream, device)
    ivs = build_interventions(cfg)
    tracker = build_tracker(cfg)
    hooks = plan_hooks(([tracker] if tracker else []) + ivs)
    agent = use_fast_path(cfg, agent, hooks)
    out = Path(out_dir or cfg.out_dir or default_out_dir(cfg))
    ckpt = checkpoint.load(out / "checkpoints") if resume else None
    if ckpt is not None and ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("checkpoint", str(out / "checkpoints" / checkpoint.LAST),
                          f"a checkpoint of format {CHECKPOINT_FORMAT} (it was written by another version of the lab; "
                          "start the run again)")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    if not isinstance(agent, FusedAgent):  # the fused agent folds weight-decay penalties into its step instead
        agent.penalties = list(hooks.penalty)
    results, first, step, wandb_id = Results(), 0, 0, None
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        if tracker is not None:
            tracker.load_state_dict(ckpt["tracker"])
        for iv, state in zip(ivs, ckpt["interventions"]):
            iv.load_state_dict(state)
        checkpoint.set_rng_state(ckpt["rng"])
        results, first, step, wandb_id = Results(**ckpt["results"]), ckpt["next_task"], ckpt["step"], ckpt["wandb_id"]
    else:
        for h in hooks.on_run_start:
            h(agent)
    jsonl = JsonlSink(out / "metrics.jsonl", truncate_to=ckpt["jsonl_offset"] if ckpt else (0 if resume else None))
    sinks: list[Sink] = [jsonl]
    wandb_sink = _open_wandb(cfg, out, wandb_id)
    if wandb_sink is not None:
        sinks.append(wandb_sink)
    return RunContext(cfg, out, stream, agent, ivs, tracker, hooks, sinks, results, jsonl, wandb_sink, step, first, device)


def save_checkpoint(ctx: RunContext, k: int) -> None:
    """The state after task ``k`` (atomic; ``lab resume`` starts at task k + 1)."""
    if not ctx.cfg.train.checkpoint:
        return
    checkpoint.save(ctx.out / "checkpoints", {
        "format": CHECKPOINT_FORMAT,
        "agent": checkpoint.compact(ctx.agent.state_dict()),
        "tracker": ctx.tracker.state_dict() if ctx.tracker is not None else None,
        "interventions": [iv.state_dict() for iv in ctx.interventions],
        "rng": checkpoint.rng_state(), "next_task": k + 1, "step": ctx.step, "results": ctx.results.to_dict(),
        "jsonl_offset": ctx.jsonl.offset(), "wandb_id": ctx.wandb.run_id if ctx.wandb else None,
    })


def finish_run(ctx: RunContext, wall: float) -> dict[str, Any]:
    """Write summary.json and the plots; log the accuracy matrix to W&B."""
    summary = _summary(ctx.cfg, ctx.stream, ctx.results, wall, ctx.wandb, ctx.agent)
    if ctx.tracker is not None:
        summary["final_metrics"] = ctx.tracker.final()
        summary["diagnostics"] = ctx.tracker.series
        summary["metric_facts"] = facts_of_records(ctx.tracker.series)  # so plots and tables need no plug-in code
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1))
    from plasticity_lab.lab.plots import plot_run

    summary["plots"] = [str(p) for p in plot_run(ctx.out, summary)]
    summary["out_dir"] = str(ctx.out)
    if ctx.wandb is not None:
        _log_final(ctx.wandb, ctx.results, ctx.out)
    return summary


def _open_wandb(cfg: DictConfig, out: Path, run_id: str | None):
    if not cfg.wandb.enabled:
        return None
    from plasticity_lab.lab.wandb_sink import WandbSink

    w = cfg.wandb
    return WandbSink(out, as_dict(cfg), project=w.project, entity=w.entity, group=w.group or cfg.experiment,
                     name=w.name or f"{cfg.experiment}-s{cfg.seed}", tags=list(w.tags), job_type=w.job_type,
                     mode=w.mode, run_id=run_id)


def begin_task(ctx: RunContext, task: Task) -> None:
    """The task's head, Dohare et al.'s new head if asked, then ``on_task_start`` hooks."""
    agent = ctx.agent
    agent.use_head(task.classes if ctx.stream.scenario == "task" else None)
    if ctx.cfg.train.new_head:
        Reset(layers="head", mode="zero").reset(agent)
    for h in ctx.hooks.on_task_start:
        emit_record(ctx, task.id, h(agent, task))


def end_task(ctx: RunContext, task: Task, correct: float, loss: float, seen: int, seconds: float,
             progress: Progress) -> None:
    """``on_task_end`` hooks, evaluation and the task's record."""
    cfg, agent = ctx.cfg, ctx.agent
    ctx.results.train_seconds += seconds
    ctx.results.examples += seen
    for h in ctx.hooks.on_task_end:
        emit_record(ctx, task.id, h(agent, task))
    k = task.id
    last = k == ctx.stream.num_tasks - 1
    due = ctx.stream.target == "class" and (last or (k + 1) % cfg.train.eval_every == 0)
    evals = evaluate(agent, ctx.stream, task, cfg.train.eval_window) if due else {}
    online = correct / max(seen, 1)
    ctx.results.add_task(online, loss / max(seen, 1), evals)
    record = {"train/task_online_acc": online, "train/task_loss": loss / max(seen, 1),
              "perf/examples_per_s": ctx.results.examples / max(ctx.results.train_seconds, 1e-9)}
    record.update({f"eval/acc/task_{j}": a for j, a in evals.items()})
    if evals:
        record.update({f"eval/{name}": v for name, v in ctx.results.scores().items() if v is not None})
    emit_record(ctx, k, record)
    progress.task_done(k, online if ctx.stream.target == "class" else loss / max(seen, 1))


def check_finite(ctx: RunContext, loss: float, task_id: int) -> None:
    """NonFiniteLoss naming the step, the kept checkpoint and the learning rate, if ``loss`` is NaN or infinite."""
    if math.isfinite(loss):
        return
    kept = (f"the last checkpoint (end of task {task_id - 1}) is kept in {ctx.out / 'checkpoints'}"
            if task_id > 0 else "no task had finished, so there is no checkpoint")
    raise NonFiniteLoss(f"the training loss became {loss} at step {ctx.step} (task {task_id}); {kept}; "
                        f"try a smaller agent.optimizer.lr (now {ctx.cfg.agent.optimizer.lr})")


def emit_record(ctx: RunContext, task_id: int, record: Record) -> None:
    """``record`` (if any) to every sink, stamped with the run's step and ``task_id``."""
    if record:
        emit(ctx.sinks, {"step": ctx.step, "task": task_id, **record})


@torch.no_grad()
def evaluate(agent: Agent, stream: Stream, current: Task, window: int | None) -> dict[int, float]:
    """Test accuracy on the tasks seen so far (the last ``window`` of them)."""
    k = current.id
    first = 0 if window is None else max(0, k - window + 1)
    device = current.x_test.device
    out = {}
    for j in range(first, k + 1):
        x, y, classes = (current.x_test, current.y_test, current.classes) if j == k else stream.test_set(j)
        x, y = x.to(device), y.to(device)
        heads = classes if stream.scenario == "task" else None
        correct = torch.zeros((), dtype=torch.long, device=device)
        for i in range(0, len(y), EVAL_CHUNK):
            correct += (agent.predict(x[i:i + EVAL_CHUNK], heads).argmax(1) == y[i:i + EVAL_CHUNK]).sum()
        out[j] = correct.item() / max(len(y), 1)
    return out


def _log_final(sink: Any, results: Results, out: Path) -> None:
    """The accuracy matrix to W&B as a table and as the heatmap image (a
    failure here is warned about, never raised: the run is already saved)."""
    rows = results.acc_entries
    try:
        sink.log_matrix(rows, out / "plots" / "acc_matrix.png")
    except Exception as err:
        warnings.warn(f"W&B: could not log the accuracy matrix ({err})")


def _summary(cfg: DictConfig, stream: Stream, results: Results, wall: float, wandb_sink: Any, agent: Agent) -> dict[str, Any]:
    return {
        "experiment": cfg.experiment,
        "seed": cfg.seed,
        "stream": cfg.stream.name,
        "target": stream.target,
        "activation": cfg.activation.name,
        "interventions": list(as_dict(cfg.interventions)),
        "tasks_trained": len(results.online_accuracy),
        "online_accuracy": results.online_accuracy,
        "online_loss": results.online_loss,
        "acc_matrix": results.dense() if len(results.online_accuracy) <= DENSE_MAX_TASKS else None,
        "acc_entries": results.acc_entries,
        **results.scores(),
        "wall_time_s": wall,
        "examples_per_s": results.examples / max(results.train_seconds, 1e-9),
        "examples": results.examples,
        "wandb_sync": wandb_sink.sync_hint() if wandb_sink else None,
        "fused_path": isinstance(agent, FusedAgent),
        "deferred_updates": agent.deferred_updates if isinstance(agent, FusedAgent) else 0,
    }


__all__ = ["RunContext", "open_run", "begin_task", "end_task", "save_checkpoint", "finish_run", "evaluate",
           "NonFiniteLoss"]
