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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents import Agent
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.vmapped import SeedOptimizer, batches_seeds
from plasticity_lab.agents.hooks import HookPlan, Record, plan_hooks
from plasticity_lab.agents.interventions import Intervention
from plasticity_lab.agents.interventions.resets import Reset
from plasticity_lab.lab import checkpoint
from plasticity_lab.lab.build import (as_dict, build_agent, build_interventions, build_stream, build_tracker, check_train,
                                      resolve_device, seed_everything, use_fast_path)
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.results import DENSE_MAX_TASKS, Results
from plasticity_lab.lab.rundir import CONFIG, mark_finished, write_atomic
from plasticity_lab.lab.threads import ThreadChoice, apply as apply_threads, choose_threads, parallel_jobs, step_flops
from plasticity_lab.lab.sinks import JsonlSink, Sink, close_all, emit
from plasticity_lab.metrics.catalog import facts_of_records
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import Stream, Task

EVAL_CHUNK = 2048


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept."""


@dataclass
class RunContext:
    """One run's live state: what it trains, what watches it, where it writes.
    ``hooks`` is the plan of the tracker and the interventions (in that
    order: the tracker measures a task start before any intervention acts);
    ``home`` is the directory ``lab resume`` takes (the group's for a seed of
    vectorised seeds, which checkpoint together)."""

    cfg: DictConfig
    out: Path
    home: Path
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
    device: torch.device = torch.device("cpu")
    resumed: bool = False


@dataclass
class BuiltRun:
    """A run built in memory from its config (nothing written yet)."""

    cfg: DictConfig
    stream: Stream
    agent: Agent
    interventions: list[Intervention]
    tracker: Tracker | None
    hooks: HookPlan
    device: torch.device
    threads: ThreadChoice
    note: str | None = None


def task_examples(ctx: RunContext, first: int) -> list[int]:
    """Examples each task will train (its size x epochs), for progress and ETA."""
    stream, epochs = ctx.stream, ctx.cfg.train.epochs
    if stream.train_sizes is not None:
        return [stream.train_size(k) * epochs for k in range(stream.num_tasks)]
    size = stream.train_size(first) * epochs if first < stream.num_tasks else 0
    return [size] * stream.num_tasks


def progress_metric(stream: Stream) -> str:
    return "acc" if stream.target == "class" else "err"


def build_run(cfg: DictConfig) -> BuiltRun:
    """Everything a run needs, built and checked in memory: bad input fails
    here, before anything is written or trained."""
    check_train(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    stream = build_stream(cfg)
    if cfg.train.drop_last and stream.train_size(0) < cfg.train.batch_size:
        raise ConfigError("train.batch_size", cfg.train.batch_size, f"at most the {stream.train_size(0)} examples of a "
                          "task when train.drop_last=true (otherwise every batch is dropped)")
    agent = build_agent(cfg, stream, device)
    flops = step_flops(agent.model, torch.zeros(stream.input_shape, device=device), cfg.train.batch_size)
    threads = choose_threads(cfg.train.threads, flops * (len(cfg.seeds) if cfg.get("seeds") else 1),
                             cfg.train.batch_size, device, parallel_jobs())
    apply_threads(threads)
    ivs = build_interventions(cfg)
    tracker = build_tracker(cfg)
    hooks = plan_hooks(([tracker] if tracker else []) + ivs)
    agent, note = use_fast_path(cfg, agent, hooks)
    if not isinstance(agent, FusedAgent):  # the fused agent folds weight-decay penalties into its step instead
        agent.penalties = list(hooks.penalty)
    return BuiltRun(cfg, stream, agent, ivs, tracker, hooks, device, threads, note)


def open_run(built: BuiltRun, out: Path, home: Path, state: dict[str, Any] | None) -> RunContext:
    """The run's directory and sinks, from its checkpointed ``state`` or fresh
    (``on_run_start`` hooks; a metrics.jsonl left by a run killed before its
    first checkpoint is started over)."""
    cfg, agent = built.cfg, built.agent
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as err:
        raise ConfigError("out_dir", str(out), f"a folder the lab can create and write ({err.strerror})") from None
    results, step, wandb_id = Results(), 0, None
    if state is not None:
        agent.load_state_dict(state["agent"])
        apply_optimizer_config(agent, cfg)
        if built.tracker is not None:
            built.tracker.load_state_dict(state["tracker"])
        for iv, iv_state in zip(built.interventions, state["interventions"]):
            iv.load_state_dict(iv_state)
        results, step, wandb_id = Results(**state["results"]), state["step"], state["wandb_id"]
        jsonl = JsonlSink.resume(out / "metrics.jsonl", **state["jsonl"])
    else:
        for h in built.hooks.on_run_start:
            h(agent)
        jsonl = JsonlSink(out / "metrics.jsonl")
    sinks: list[Sink] = [jsonl]
    wandb_sink = _open_wandb(cfg, out, wandb_id, resume_step=step if state is not None else None)
    if wandb_sink is not None:
        sinks.append(wandb_sink)
    return RunContext(cfg, out, home, built.stream, agent, built.interventions, built.tracker, built.hooks, sinks,
                      results, jsonl, wandb_sink, step, built.device, resumed=state is not None)


def apply_optimizer_config(agent: Agent, cfg: DictConfig) -> None:
    """The config's optimizer hyperparameters in every parameter group (a
    loaded optimizer state carries the values it was saved with: a resume that
    changes the learning rate must reach the optimizer, not only the config)."""
    for key, value in as_dict(cfg.agent.optimizer).items():
        if key == "name" or value is None:
            continue
        for group in agent.optimizer.param_groups:
            if key in group:
                group[key] = type(group[key])(value) if isinstance(group[key], (int, float)) else value


def run_state(ctx: RunContext) -> dict[str, Any]:
    """What a checkpoint keeps of one run (tensors and plain values)."""
    return {
        "agent": checkpoint.compact(ctx.agent.checkpoint_state()),
        "tracker": ctx.tracker.state_dict() if ctx.tracker is not None else None,
        "interventions": [checkpoint.compact(iv.state_dict()) for iv in ctx.interventions],  # e.g. ReDo's probe: a view of its task
        "results": ctx.results.to_dict(), "step": ctx.step, "jsonl": ctx.jsonl.position(),
        "wandb_id": ctx.wandb.run_id if ctx.wandb else None,
    }


def step_path(agent: Agent) -> str:
    """How the run's updates were computed: ``fused`` (the hand-fused SGD step,
    agents/fused.py, one seed or stacked), ``vmap`` (seeds stacked, one
    torch.func.vmap forward, agents/vmapped.py), ``stacked`` (seeds stacked,
    each seed's forward in turn: conv nets on the CPU) or ``autograd`` (one
    agent's own step)."""
    if isinstance(agent, FusedAgent):
        return "fused"
    if isinstance(agent.optimizer, SeedOptimizer):
        return "vmap" if batches_seeds(agent.model) else "stacked"
    return "autograd"


def finish_run(ctx: RunContext, resumes: list[dict[str, Any]], provenance: dict[str, Any]) -> dict[str, Any]:
    """summary.json (atomically), the plots, the accuracy matrix to W&B and
    W&B's end; then the finished marker, last. ``resumes``: the changes each
    resume made; ``provenance``: the data and the processes that trained the
    run (lab/provenance.py); both kept in the summary."""
    summary = _summary(ctx.cfg, ctx.stream, ctx.results, provenance["wall_time_s"], ctx.wandb, ctx.agent)
    summary["threads"] = provenance["segments"][-1]["threads"]
    summary["resumes"] = resumes
    summary["provenance"] = provenance
    if ctx.tracker is not None:
        summary["final_metrics"] = ctx.tracker.final()
        summary["diagnostics"] = ctx.tracker.series
        summary["metric_facts"] = facts_of_records(ctx.tracker.series)  # so plots and tables need no plug-in code
    write_atomic(ctx.out / "summary.json", json.dumps(summary, indent=1))
    from plasticity_lab.lab.plots import plot_run

    summary["plots"] = [str(p) for p in plot_run(ctx.out, summary)]
    summary["out_dir"] = str(ctx.out)
    if ctx.wandb is not None:
        _log_final(ctx.wandb, ctx.results, ctx.out)
        ctx.sinks.remove(ctx.wandb)
        close_all([ctx.wandb])
        if ctx.resumed:  # the offline segments rebuilt into one run: the hint names it
            summary["wandb_sync"] = _consolidate(ctx) or summary["wandb_sync"]
            write_atomic(ctx.out / "summary.json", json.dumps({k: summary[k] for k in summary
                                                               if k not in ("plots", "out_dir")}, indent=1))
    mark_finished(ctx.out, {"tasks_trained": summary["tasks_trained"]})
    return summary


def _open_wandb(cfg: DictConfig, out: Path, run_id: str | None, resume_step: int | None):
    if not cfg.wandb.enabled:
        return None
    from plasticity_lab.lab.wandb_sink import WandbSink

    try:
        return WandbSink(out, as_dict(cfg), run_id, resume_step)
    except Exception as err:  # W&B never stops a run: metrics.jsonl keeps every record
        warnings.warn(f"W&B could not start ({type(err).__name__}: {err}); this run logs to metrics.jsonl only "
                      f"(lab sync {out} makes its W&B run later)")
        return None


def enter_task(ctx: RunContext, task: Task) -> None:
    """What holds for the whole of a task and has no side effect: its head (task-incremental logits)."""
    ctx.agent.use_head(task.classes if ctx.stream.scenario == "task" else None)


def begin_task(ctx: RunContext, task: Task) -> None:
    """The task's head, Dohare et al.'s new head if asked, then ``on_task_start`` hooks."""
    enter_task(ctx, task)
    if ctx.cfg.train.new_head:
        Reset(layers="head", mode="zero").reset(ctx.agent)
    for h in ctx.hooks.on_task_start:
        emit_record(ctx, task.id, h(ctx.agent, task))


def end_task(ctx: RunContext, task: Task, correct: float, loss: float, seen: int, seconds: float,
             progress: Progress | None) -> None:
    """``on_task_end`` hooks, evaluation and the task's record (and the
    progress display's line, when this run reports it)."""
    cfg, agent = ctx.cfg, ctx.agent
    ctx.results.train_seconds += seconds
    ctx.results.examples += seen
    for h in ctx.hooks.on_task_end:
        emit_record(ctx, task.id, h(agent, task))
    k = task.id
    last = k == ctx.stream.num_tasks - 1
    due = ctx.stream.target == "class" and (last or (k + 1) % cfg.train.eval_every == 0)
    counts = evaluate(agent, ctx.stream, task, cfg.train.eval_window) if due else {}
    evals = {j: c / max(n, 1) for j, (c, n) in counts.items()}
    online = correct / max(seen, 1)
    ctx.results.add_task(online, loss / max(seen, 1), evals, counts)
    rate = ctx.results.examples / max(ctx.results.train_seconds, 1e-9)
    record = {"train/task_online_acc": online, "train/task_loss": loss / max(seen, 1), "perf/examples_per_s": rate}
    record.update({f"eval/acc/task_{j}": a for j, a in evals.items()})
    if evals:
        record.update({f"eval/{name}": v for name, v in ctx.results.scores().items() if v is not None})
    emit_record(ctx, k, record)
    if progress is not None:
        progress.task_done(k, online if ctx.stream.target == "class" else loss / max(seen, 1), rate)


def check_finite(ctx: RunContext, loss: float, task_id: int) -> None:
    """NonFiniteLoss naming the step, the kept checkpoint and how to go on, if ``loss`` is NaN or infinite."""
    if math.isfinite(loss):
        return
    lr = ctx.cfg.agent.optimizer.lr
    kept = ("the last checkpoint, from before this task, is kept" if (ctx.home / "checkpoints" / checkpoint.LAST).exists()
            else "no task had finished, so it starts over")
    raise NonFiniteLoss(f"the training loss became {loss} at step {ctx.step} (task {task_id}); {kept}: go on with "
                        f"a smaller learning rate (now {lr}) with: lab resume {ctx.home} agent.optimizer.lr={lr / 10:g}")


def emit_record(ctx: RunContext, task_id: int, record: Record) -> None:
    """``record`` (if any) to every sink, stamped with the run's step and ``task_id``."""
    if record:
        emit(ctx.sinks, {"step": ctx.step, "task": task_id, **record})


@torch.no_grad()
def evaluate(agent: Agent, stream: Stream, current: Task, window: int | None) -> dict[int, tuple[int, int]]:
    """(correct, examples) on the test set of each task seen so far (the last ``window`` of them)."""
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
        out[j] = (int(correct.item()), len(y))
    return out


def _consolidate(ctx: RunContext) -> str | None:
    """The resumed run's offline W&B run rebuilt from metrics.jsonl (a failure is
    warned about, never raised: metrics.jsonl holds every record, lab sync retries)."""
    try:
        return ctx.wandb.consolidate(ctx.out / "metrics.jsonl")
    except Exception as err:
        warnings.warn(f"W&B: could not rebuild the offline run ({type(err).__name__}: {err}); lab sync {ctx.out} retries")
        return None


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
        "data": stream.data,
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
        "step_path": step_path(agent),
        "deferred_updates": agent.deferred_updates if isinstance(agent, FusedAgent) else 0,
        "compiled_step": isinstance(agent, FusedAgent) and agent.compiled,
    }


__all__ = ["RunContext", "BuiltRun", "build_run", "open_run", "run_state", "enter_task", "begin_task", "end_task",
           "finish_run", "evaluate", "NonFiniteLoss"]
