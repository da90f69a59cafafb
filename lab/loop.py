"""The training loop, the same for one run and for a vectorised group of seeds.

A group of N runs (N = 1 for a plain ``lab run``) trains in lock-step: each
batch is an (N, B, ...) tensor, one step updates every run (the fused step
of stacked seeds, agents/stacked.py; seeds stacked under torch.func,
agents/vmapped.py; or one agent's ``observe`` when N = 1),
then each run's ``after_step`` hooks see their own :class:`StepInfo`. With
N > 1 every run's hooks, augmentation and task boundary run with that run's
own random generators (lab/seeds.py), so a seed draws the same numbers alone
or among others.

The hot path reads nothing back from the device: online accuracy and loss
accumulate in device tensors and are read every ``train.log_every`` steps
(the loop's only host sync, which also checks that the loss is finite).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from plasticity_lab.agents import Agent, StepInfo
from plasticity_lab.agents.agent import GroupStepInfo, WholeTaskAgent
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.idle import sitting_out
from plasticity_lab.agents.stacked import StackedStep
from plasticity_lab.agents.vmapped import VmapStep
from plasticity_lab.agents.cuda_graph import graphed
from plasticity_lab.lab.after_step import GroupAfterStep
from plasticity_lab.lab.allocator import keep_freed_blocks
from plasticity_lab.lab.group import RunGroup, open_group
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.rundir import mark_failed, mark_finished
from plasticity_lab.lab.runner import (NonFiniteLoss, RunContext, begin_task, check_finite, emit_record, end_task,
                                       enter_task, finish_run, progress_metric, task_examples)
from plasticity_lab.lab.seeds import SeedGenerators
from plasticity_lab.lab.stop import StopRequest, Stopped
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import Task, task_rng

EXIT_NONFINITE = 3
"""The exit status of a run whose loss became NaN or infinite (lab/cli.py)."""

StepResult = tuple[torch.Tensor, torch.Tensor, Callable[[int], StepInfo]]
"""One update of a group: loss (N,), correct predictions (N,), and run j's StepInfo on demand."""


class AgentStep:
    """One agent's ``observe`` as the step of a group of one."""

    def __init__(self, agent: Agent):
        self.agent = agent

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        info = self.agent.observe(x[0], y[0])
        return info.loss.view(1), info.correct.view(1), lambda j: info

    def flush(self) -> None:
        self.agent.flush_updates()


class StackStep:
    """The fused step of N stacked agents (agents/stacked.py, graphed on a GPU)."""

    def __init__(self, stack: Any):
        self.stack = stack
        self.stacked = isinstance(stack, StackedStep) and len(stack.agents) > 1
        """Whether ``group_info`` reports the stacked tensors (not for a graphed step)."""
        self._last: tuple = ()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        out = self.stack.step(x, y)
        self._last = (x, y, *out)
        return out[0], out[1], lambda j: self.stack.info(j, x, y, *out)

    def group_info(self) -> GroupStepInfo:
        """The last step as the stacked tensors of every seed."""
        return self.stack.group_info(*self._last)

    def flush(self) -> None:
        self.stack.flush()


def group_step(ctxs: list[RunContext]) -> AgentStep | StackStep | VmapStep:
    """The step of a group: the stacked fused step for fused agents (one or
    many; faster where it applies), seeds stacked under ``torch.func.vmap``
    for any other group of several, the agent's own ``observe`` for a single
    autograd run."""
    agents = [c.agent for c in ctxs]
    if all(isinstance(a, FusedAgent) for a in agents):
        if len(agents) == 1:
            return StackStep(agents[0].stepper())
        return StackStep(graphed(StackedStep(agents), agents[0].cuda_graphs))
    if ctxs[0].device.type == "cpu":
        keep_freed_blocks()  # a step frees and reallocates its large gradients and temporaries every step
    if len(agents) > 1:
        return VmapStep(agents)
    return AgentStep(agents[0])


def run(cfg: DictConfig, out_dir: str | Path | None = None, resume: bool = False,
        requested: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Train ``cfg`` to the end: one run, or with ``seeds=[...]`` every seed
    vectorised in this process; started, or resumed from the directory's
    checkpoint (lab/group.py decides; ``requested``: keys a resume changes on
    purpose). SIGTERM, SIGINT and SIGUSR1 stop it resumably (lab/stop.py).
    Returns each run's summary (also written to its ``summary.json``)."""
    group = open_group(cfg, out_dir, resume, requested)
    stop = StopRequest().install()
    stopped: Stopped | None = None
    try:
        return train(group, stop)
    except Stopped as err:  # resumable: not a failure
        stopped = err
        raise
    except NonFiniteLoss as err:
        mark_failed(group.out, EXIT_NONFINITE, str(err))
        raise
    except ConfigError as err:  # e.g. the disk filled up: one line, exit 2
        mark_failed(group.out, 2, str(err))
        raise
    except Exception as err:  # a crash: recorded for lab status/compare, then raised as it is
        mark_failed(group.out, 1, f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    finally:
        stop.restore()
        group.close()
        handler = stop.launcher_handler() if stopped is not None else None
        if handler is not None:  # checkpointed and closed: the enclosing launcher acts (submitit requeues)
            print(f"lab: {stopped}; {stop.name} handed on to the launcher", file=sys.stderr, flush=True)
            try:
                handler(stop.signum, None)  # a requeue ends this process here (SystemExit)
            except Exception as err:  # the launcher declined (submitit: timed out too often): stopped, not crashed
                print(f"lab: the launcher did not requeue: {err}".splitlines()[0], file=sys.stderr, flush=True)


def train(group: RunGroup, stop: StopRequest) -> list[dict[str, Any]]:
    """Every remaining task of the group's runs, then their summaries."""
    ctxs, generators = group.ctxs, group.generators
    cfg, stream, first = ctxs[0].cfg, ctxs[0].stream, group.next_task
    whole_task = isinstance(ctxs[0].agent, WholeTaskAgent)
    step = None if whole_task else group_step(ctxs)
    after = None if whole_task else GroupAfterStep(ctxs, step.group_info if isinstance(step, StackStep) and step.stacked
                                                   else None)
    sizes = [round(sum(k) / len(ctxs)) for k in zip(*(task_examples(c, first) for c in ctxs))]  # per run, on average
    progress = Progress(stream.num_tasks, sizes, first, cfg.progress, progress_metric(stream), runs=len(ctxs))
    k = first
    try:
        for k in range(first, stream.num_tasks):
            position, group.position = group.position, None
            tasks = []
            for i, ctx in enumerate(ctxs):
                with generators.own(i):
                    tasks.append(ctx.stream.task(k).to(ctx.device))
                    (enter_task if position else begin_task)(ctx, tasks[-1])
            t0 = time.perf_counter()
            if whole_task:
                totals = [train_whole_task(ctxs[0], tasks[0], progress, stop)]
            else:
                totals = train_task(ctxs, tasks, step, after, generators, progress, stop, position)
            seconds = time.perf_counter() - t0 + (position or {}).get("seconds", 0.0)
            for i, (ctx, task, (correct, loss, seen)) in enumerate(zip(ctxs, tasks, totals)):
                with generators.own(i):
                    end_task(ctx, task, correct, loss, seen, seconds, progress if i == 0 else None)
            group.save(k + 1)
            if stop.signum is not None and k + 1 < stream.num_tasks:
                raise StopAt(k + 1, None)
        progress.close()
        summaries = [finish_run(ctx, group.resumes, group.provenance()) for ctx in ctxs]
        if group.cfg.get("seeds") is not None:  # the group's own marker, after every seed's
            mark_finished(group.out, {"seeds": list(group.cfg.seeds)})
        return summaries
    except StopAt as at:
        if at.position is not None:
            group.save(at.task, at.position)
        raise _stopped(group, at.task, stop) from None
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint, the last one stands
        raise Stopped(f"interrupted at once in task {k + 1}/{stream.num_tasks}; the last checkpoint is kept; "
                      f"resume with: lab resume {group.out}", status=130) from None
    finally:
        progress.close()


class StopAt(Exception):
    """Raised inside the loop where a requested stop can be checkpointed: task
    ``task`` at its start (``position`` None) or at ``position`` within it."""

    def __init__(self, task: int, position: dict[str, Any] | None):
        super().__init__(task)
        self.task, self.position = task, position


def _stopped(group: RunGroup, task: int, stop: StopRequest) -> Stopped:
    """The one line a stopped run says (W&B is told the run was preempted)."""
    for ctx in group.ctxs:
        if ctx.wandb is not None:
            ctx.wandb.stopping()
    num_tasks = group.ctxs[0].stream.num_tasks
    return Stopped(f"stopped ({stop.name}) at task {task + 1}/{num_tasks}, step {group.ctxs[0].step}; "
                   f"resume with: lab resume {group.out}")


def epoch_order(seed: int, task_id: int, epoch: int, n: int) -> torch.Tensor:
    """The order of a task's n examples in one epoch, from (seed, task, epoch) alone."""
    g = torch.Generator().manual_seed(int(task_rng(seed, task_id, f"order{epoch}").integers(2**62)))
    return torch.randperm(n, generator=g)


def train_task(ctxs: list[RunContext], tasks: list[Task], step: AgentStep | StackStep | VmapStep, after: GroupAfterStep,
               generators: SeedGenerators, progress: Progress, stop: StopRequest, position: dict[str, Any] | None = None
               ) -> list[tuple[float, float, int]]:
    """The hot loop: every run's epochs over its task, one group step per
    batch and the runs' ``after_step`` hooks (``after``), from ``position``
    (where a stopped group left the task) or the start. Where runs' tasks differ in size, a run without a batch (or with a
    smaller last one) sits the others' step out (agents/idle.py) and logs at
    its own steps. Returns each run's (correct, summed loss, examples), read
    once; raises StopAt after the step a stop was requested in."""
    cfg, device, n = ctxs[0].cfg, ctxs[0].device, len(ctxs)
    bs, log_every, augment, epochs = cfg.train.batch_size, cfg.train.log_every, ctxs[0].stream.augment, cfg.train.epochs
    # drop_last: no final batch smaller than the rest
    ends = [t.num_train - t.num_train % bs if cfg.train.drop_last else t.num_train for t in tasks]
    end, everyone = max(ends), list(range(n))
    together = [(bs, everyone)] if min(ends) == end else None  # every full batch of equal tasks: one step for all
    before = any(c.hooks.before_step for c in ctxs) or augment is not None
    at = _position(position, n)
    correct = torch.tensor(at["correct"], dtype=torch.long, device=device)
    loss_sum = torch.tensor(at["loss"], dtype=torch.float32, device=device)
    seen, read = list(at["seen"]), (list(at["read"][0]), list(at["read"][1]), list(at["read"][2]))
    t0 = time.perf_counter()
    for epoch in range(at["epoch"], epochs):
        xs, ys = _epoch_data(ctxs, tasks, epoch, device, end)
        for i in range(at["batch"] if epoch == at["epoch"] else 0, end, bs):
            for b, active in together if together and i + bs <= end else _shares(ends, i, bs, everyone):
                xb, yb = xs[:, i:i + b], ys[:, i:i + b]
                if before:
                    xb = _before_step(ctxs, generators, xb, yb, augment, active)
                if len(active) == n:
                    loss, corr, info = step(xb, yb)
                    correct.add_(corr)
                    loss_sum.add_(loss, alpha=b)
                else:
                    with sitting_out([ctxs[j].agent for j in everyone if j not in active], step.flush):
                        loss, corr, info = step(xb, yb)
                    on = torch.tensor([j in active for j in everyone], device=device)
                    correct.add_(torch.where(on, corr, 0))
                    loss_sum.add_(torch.where(on, loss * b, 0.0))
                if after.slots:
                    after(tasks, active, info, generators)
                due = []
                for j in active:
                    ctx = ctxs[j]
                    ctx.step += 1
                    seen[j] += b
                    if ctx.step % log_every == 0:
                        due.append(j)
                if due:
                    read = _log_windows(ctxs, tasks, correct, loss_sum, seen, read, progress, due)
            if stop.signum is not None:
                nxt = (epoch, i + bs) if i + bs < end else (epoch + 1, 0)
                if nxt[0] < epochs:
                    raise StopAt(tasks[0].id, {
                        "epoch": nxt[0], "batch": nxt[1], "seen": seen, "correct": correct.tolist(),
                        "loss": loss_sum.tolist(), "read": [read[0], read[1], read[2]],
                        "seconds": at["seconds"] + time.perf_counter() - t0})
    step.flush()
    read = _log_windows(ctxs, tasks, correct, loss_sum, seen, read, progress, everyone, record=False)
    return [(c, l, s) for c, l, s in zip(read[0], read[1], seen)]


def _position(position: dict[str, Any] | None, n: int) -> dict[str, Any]:
    """Where the loop starts in a task: ``position`` as a stopped group saved
    it (per-run example counts; one shared count in checkpoints written before
    runs could differ), or the task's start."""
    if position is None:
        return {"epoch": 0, "batch": 0, "seen": [0] * n, "correct": [0] * n, "loss": [0.0] * n,
                "read": [[0] * n, [0.0] * n, [0] * n], "seconds": 0.0}
    seen, (c, l, last) = position["seen"], position["read"]
    return {**position, "seen": seen if isinstance(seen, list) else [seen] * n,
            "read": [c, l, last if isinstance(last, list) else [last] * n]}


def _shares(ends: list[int], i: int, bs: int, everyone: list[int]) -> list[tuple[int, list[int]]]:
    """The steps of the batch starting at example ``i``: (batch size, runs
    taking it). One step for all runs, unless their tasks (ending at ``ends``)
    differ in size: then one step per distinct batch size, the others idle."""
    sizes = [min(bs, e - i) for e in ends]
    if min(sizes) == max(sizes):
        return [(sizes[0], everyone)]
    return [(b, [j for j, s in enumerate(sizes) if s == b]) for b in sorted({s for s in sizes if s > 0}, reverse=True)]


def _epoch_data(ctxs: list[RunContext], tasks: list[Task], epoch: int, device: torch.device, end: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every run's task tensors in its own epoch order, as (N, n, ...) tensors;
    a run whose task is smaller than the longest (``end`` examples) is padded
    with its own first examples, which it never trains on (it sits those steps out)."""
    orders = [epoch_order(c.cfg.seed, t.id, epoch, t.num_train).to(device) for c, t in zip(ctxs, tasks)]
    if len(tasks) == 1:
        return tasks[0].x_train[orders[0]][None], tasks[0].y_train[orders[0]][None]
    size = max(end, *(len(o) for o in orders))
    orders = [o if len(o) == size else o[torch.arange(size, device=device) % len(o)] for o in orders]
    return (torch.stack([t.x_train[o] for t, o in zip(tasks, orders)]),
            torch.stack([t.y_train[o] for t, o in zip(tasks, orders)]))


def _before_step(ctxs: list[RunContext], generators: SeedGenerators, xb: torch.Tensor, yb: torch.Tensor,
                 augment: Any, active: list[int]) -> torch.Tensor:
    """Each active run's augmentation and ``before_step`` hooks, with its own
    generators (an idle run draws nothing: its batch is not trained on)."""
    out = []
    for j, ctx in enumerate(ctxs):
        x = xb[j]
        if j in active:
            with generators.own(j, full=False):
                x = augment(x) if augment is not None else x
                for h in ctx.hooks.before_step:
                    h(ctx.agent, x, yb[j])
        out.append(x)
    return torch.stack(out) if augment is not None else xb


def _log_windows(ctxs: list[RunContext], tasks: list[Task], correct: torch.Tensor, loss_sum: torch.Tensor,
                 seen: list[int], read: tuple[list[int], list[float], list[int]], progress: Progress,
                 due: list[int], record: bool = True) -> tuple[list[int], list[float], list[int]]:
    """Read every run's accumulators with one device sync, check the losses
    are finite and emit the window record of each run in ``due``. Returns the new read-out."""
    c, l = correct.tolist(), loss_sum.tolist()
    for ctx, task, loss in zip(ctxs, tasks, l):
        check_finite(ctx, loss, task.id)
    cs, ls, last = list(read[0]), list(read[1]), list(read[2])
    trained = 0
    for j in due:
        dn = seen[j] - last[j]
        if dn and record:
            emit_record(ctxs[j], tasks[j].id, {"train/loss": (l[j] - ls[j]) / dn, "train/online_acc": (c[j] - cs[j]) / dn})
        trained += dn
        cs[j], ls[j], last[j] = c[j], l[j], seen[j]
    if trained:
        progress.advance(trained, tasks[0].id)
    return cs, ls, last


def train_whole_task(ctx: RunContext, task: Task, progress: Progress, stop: StopRequest) -> tuple[float, float, int]:
    """Hand the task to an agent with its own loop (an Avalanche strategy);
    the run's per-step hooks run inside it. Its loop cannot be checkpointed
    mid-task: a stop ends it at once and the run resumes at the task's start."""

    def stop_here(agent: Agent, info: StepInfo) -> None:
        if stop.signum is not None:
            raise StopAt(task.id, None)

    hooks = [lambda agent, info, h=h: emit_record(ctx, task.id, h(agent, info)) for h in ctx.hooks.after_step]
    hooks.append(stop_here)
    label = task.id if ctx.stream.scenario == "task" else 0
    correct, loss, seen, updates = ctx.agent.train_task(task, label, hooks)
    ctx.step += updates
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"the training loss became {loss} in task {task.id}; try a smaller agent.optimizer.lr")
    progress.advance(seen, task.id)
    emit_record(ctx, task.id, {"train/loss": loss / max(seen, 1), "train/online_acc": correct / max(seen, 1)})
    return correct, loss, seen


__all__ = ["run", "train", "train_task", "epoch_order", "group_step", "StopAt"]
