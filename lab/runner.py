"""The training loop: task after task, hooks at fixed moments, records to sinks.

Order per task (DESIGN.md): ``on_task_start`` -> per batch ``before_step`` ->
forward/backward/optimizer step -> ``after_step`` -> ``on_task_end`` ->
evaluation -> records -> checkpoint. The hot path reads nothing back from the
device: online accuracy and loss accumulate in device tensors and are read
every ``train.log_every`` steps.
"""
from __future__ import annotations

import json
import math
import warnings
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents import Agent, StepInfo
from plasticity_lab.agents.interventions import HOOKS
from plasticity_lab.agents.interventions.resets import Reset
from plasticity_lab.lab import checkpoint
from plasticity_lab.lab.build import (as_dict, build_agent, build_interventions, build_stream, build_tracker, check_train, resolve_device,
                       seed_everything, use_fast_path)
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.results import DENSE_MAX_TASKS, Results
from plasticity_lab.lab.sinks import JsonlSink, Sink, close_all, emit
from plasticity_lab.streams import Stream, Task, task_rng

EVAL_CHUNK = 2048


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is kept."""


@dataclass
class Hooks:
    """Bound hook methods of the interventions, grouped by moment; an object
    without a hook is simply absent from that list (no per-step cost)."""

    on_run_start: list[Callable] = field(default_factory=list)
    on_task_start: list[Callable] = field(default_factory=list)
    before_step: list[Callable] = field(default_factory=list)
    penalty: list[Callable] = field(default_factory=list)
    after_step: list[Callable] = field(default_factory=list)
    on_task_end: list[Callable] = field(default_factory=list)

    @classmethod
    def of(cls, objects: list[Any]) -> "Hooks":
        hooks = cls()
        for obj in objects:
            for moment in ("on_run_start", *HOOKS):
                fn = getattr(obj, moment, None)
                if callable(fn):
                    getattr(hooks, moment).append(fn)
        return hooks


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
    """One run's live state: what it trains, what watches it, where it writes."""

    cfg: DictConfig
    out: Path
    stream: Stream
    agent: Agent
    interventions: list[Any]
    hooks: Hooks
    sinks: list[Sink]
    results: Results
    step: int = 0
    watchers: list[Any] = field(default_factory=list)
    tracker: Any = None
    jsonl: Any = None
    wandb: Any = None
    first_task: int = 0
    device: torch.device = torch.device("cpu")


def run(cfg: DictConfig, out_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` to the end (or from the last checkpoint with ``resume``).

    Returns the summary also written to ``out_dir/summary.json``.
    """
    ctx = open_run(cfg, out_dir, resume)
    stream = ctx.stream
    progress = Progress(stream.num_tasks, task_examples(ctx), ctx.first_task, cfg.progress, progress_metric(stream))
    t_start = time.perf_counter()
    try:
        for k in range(ctx.first_task, stream.num_tasks):
            _run_task(ctx, stream.task(k).to(ctx.device), progress, ctx.device)
            save_checkpoint(ctx, k)
        progress.close()
        return finish_run(ctx, time.perf_counter() - t_start)
    finally:
        progress.close()
        close_all(ctx.sinks)


def task_examples(ctx: RunContext) -> list[int]:
    """Examples each task will train (its size x epochs), for progress and ETA."""
    stream, first, epochs = ctx.stream, ctx.first_task, ctx.cfg.train.epochs
    if stream.train_sizes is not None:
        return [stream.train_size(k) * epochs for k in range(stream.num_tasks)]
    size = stream.train_size(first) * epochs if first < stream.num_tasks else 0
    return [size] * stream.num_tasks


def progress_metric(stream: Stream) -> str:
    return "acc" if stream.target == "class" else "err"


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
    agent = use_fast_path(cfg, agent, ivs)
    tracker = build_tracker(cfg)
    watchers = ([tracker] if tracker else []) + ivs  # the tracker sees each task switch before any intervention
    out = Path(out_dir or cfg.out_dir or default_out_dir(cfg))
    ckpt = checkpoint.load(out / "checkpoints") if resume else None
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    hooks = Hooks.of(watchers)
    if not hasattr(agent, "extra_decay"):  # the fused agent folds l2 into its decay instead
        agent.penalties = list(hooks.penalty)
    results, first, step, wandb_id = Results(), 0, 0, None
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        for iv, state in zip(watchers, ckpt["interventions"]):
            if state is not None:
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
    return RunContext(cfg, out, stream, agent, ivs, hooks, sinks, results, step, watchers, tracker, jsonl, wandb_sink,
                      first, device)


def save_checkpoint(ctx: RunContext, k: int) -> None:
    """The state after task ``k`` (atomic; ``lab resume`` starts at task k + 1)."""
    if not ctx.cfg.train.checkpoint:
        return
    checkpoint.save(ctx.out / "checkpoints", {
        "agent": checkpoint.compact(ctx.agent.state_dict()),
        "interventions": [w.state_dict() if hasattr(w, "state_dict") else None for w in ctx.watchers],
        "rng": checkpoint.rng_state(), "next_task": k + 1, "step": ctx.step, "results": ctx.results.to_dict(),
        "jsonl_offset": ctx.jsonl.offset(), "wandb_id": ctx.wandb.run_id if ctx.wandb else None,
    })


def finish_run(ctx: RunContext, wall: float) -> dict[str, Any]:
    """Write summary.json and the plots; log the accuracy matrix to W&B."""
    summary = _summary(ctx.cfg, ctx.stream, ctx.results, wall, ctx.wandb, ctx.agent)
    if ctx.tracker is not None:
        summary["final_metrics"] = ctx.tracker.final()
        summary["diagnostics"] = ctx.tracker.series
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


def _run_task(ctx: RunContext, task: Task, progress: Progress, device: torch.device) -> None:
    """Train one task, evaluate, emit its records."""
    begin_task(ctx, task)
    t0 = time.perf_counter()
    if hasattr(ctx.agent, "train_task"):  # a learner with its own training loop (an Avalanche strategy)
        correct, loss, seen = _train_delegated(ctx, task, progress)
    else:
        correct, loss, seen = _train_epochs(ctx, task, progress, device)
    end_task(ctx, task, correct, loss, seen, time.perf_counter() - t0, progress)


def begin_task(ctx: RunContext, task: Task) -> None:
    """The task's head, Dohare et al.'s new head if asked, then ``on_task_start`` hooks."""
    agent = ctx.agent
    agent.use_head(task.classes if ctx.stream.scenario == "task" else None)
    if ctx.cfg.train.new_head:
        Reset(layers="head", mode="zero").reset(agent)
    for h in ctx.hooks.on_task_start:
        _emit(ctx, task.id, h(agent, task))


def end_task(ctx: RunContext, task: Task, correct: float, loss: float, seen: int, seconds: float,
             progress: Progress) -> None:
    """``on_task_end`` hooks, evaluation and the task's record."""
    cfg, agent = ctx.cfg, ctx.agent
    ctx.results.train_seconds += seconds
    ctx.results.examples += seen
    for h in ctx.hooks.on_task_end:
        _emit(ctx, task.id, h(agent, task))
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
    _emit(ctx, k, record)
    progress.task_done(k, online if ctx.stream.target == "class" else loss / max(seen, 1))


def _train_epochs(ctx: RunContext, task: Task, progress: Progress, device: torch.device) -> tuple[float, float, int]:
    """The hot loop. Returns (correct, summed loss, examples) read once at the end."""
    cfg, agent, hooks = ctx.cfg, ctx.agent, ctx.hooks
    bs, log_every = cfg.train.batch_size, cfg.train.log_every
    before, after = hooks.before_step, hooks.after_step
    augment = ctx.stream.augment
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    n, seen, read = task.num_train, 0, (0, 0.0, 0)
    for epoch in range(cfg.train.epochs):
        order = epoch_order(cfg.seed, task.id, epoch, n).to(device)
        xs, ys = task.x_train[order], task.y_train[order]
        for i in range(0, n, bs):
            xb, yb = xs[i:i + bs], ys[i:i + bs]
            if augment is not None:
                xb = augment(xb)
            for h in before:
                h(agent, xb, yb)
            info = agent.observe(xb, yb)
            correct.add_(info.correct)
            loss_sum.add_(info.loss, alpha=yb.shape[0])
            for h in after:
                _emit(ctx, task.id, h(agent, info))
            ctx.step += 1
            seen += yb.shape[0]
            if ctx.step % log_every == 0:
                read = _log_window(ctx, task.id, correct, loss_sum, seen, read, progress)
    agent.flush_updates()
    read = _log_window(ctx, task.id, correct, loss_sum, seen, read, progress, record=False)
    return read[0], read[1], seen


def _train_delegated(ctx: RunContext, task: Task, progress: Progress) -> tuple[float, float, int]:
    """Hand the task to the agent's own loop; per-step hooks run inside it."""
    hooks = [lambda agent, info, h=h: _emit(ctx, task.id, h(agent, info)) for h in ctx.hooks.after_step]
    label = task.id if ctx.stream.scenario == "task" else 0
    correct, loss, seen, updates = ctx.agent.train_task(task, label, hooks)
    ctx.step += updates
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"the training loss became {loss} in task {task.id}; try a smaller agent.optimizer.lr")
    progress.advance(seen, task.id)
    _emit(ctx, task.id, {"train/loss": loss / max(seen, 1), "train/online_acc": correct / max(seen, 1)})
    return correct, loss, seen


def epoch_order(seed: int, task_id: int, epoch: int, n: int) -> torch.Tensor:
    """The order of a task's n examples in one epoch, from (seed, task, epoch) alone."""
    g = torch.Generator().manual_seed(int(task_rng(seed, task_id, f"order{epoch}").integers(2**62)))
    return torch.randperm(n, generator=g)


def check_finite(ctx: RunContext, loss: float, task_id: int) -> None:
    """NonFiniteLoss naming the step, the kept checkpoint and the learning rate, if ``loss`` is NaN or infinite."""
    if math.isfinite(loss):
        return
    kept = (f"the last checkpoint (end of task {task_id - 1}) is kept in {ctx.out / 'checkpoints'}"
            if task_id > 0 else "no task had finished, so there is no checkpoint")
    raise NonFiniteLoss(f"the training loss became {loss} at step {ctx.step} (task {task_id}); {kept}; "
                        f"try a smaller agent.optimizer.lr (now {ctx.cfg.agent.optimizer.lr})")


def _log_window(ctx: RunContext, task_id: int, correct: torch.Tensor, loss_sum: torch.Tensor, seen: int,
                read: tuple[int, float, int], progress: Progress, record: bool = True) -> tuple[int, float, int]:
    """Read the accumulators (the loop's only host sync), check the loss is
    finite and emit the window's record. Returns the new read-out."""
    c, l = int(correct.item()), float(loss_sum.item())
    check_finite(ctx, l, task_id)
    dn = seen - read[2]
    if dn:
        progress.advance(dn, task_id)
        if record:
            _emit(ctx, task_id, {"train/loss": (l - read[1]) / dn, "train/online_acc": (c - read[0]) / dn})
    return c, l, seen


def _emit(ctx: RunContext, task_id: int, record: dict[str, Any] | None) -> None:
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
        "fused_path": hasattr(agent, "extra_decay"),
        "deferred_updates": getattr(agent, "deferred_updates", 0),
    }


__all__ = ["run", "evaluate", "NonFiniteLoss", "Hooks", "StepInfo"]
