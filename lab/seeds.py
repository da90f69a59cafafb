"""Vectorised multi-seed runs: ``lab run seeds=[0,1,2,3,4,5,6,7]``.

The seeds train in one process, in lock-step, with their weights stacked
(agents/stacked.py): one batched fused step per batch for all of them. Each
seed is otherwise its own run — its own stream (permutations from its seed),
data order, initialisation, interventions, tracker, RNG, checkpoint, run
directory (``<out>/seed_<s>``) and W&B run — and ends with the same weights
and records as ``lab run seed=<s>`` alone (tested).

Each seed's random numbers come from its own generator state: the global
generators are swapped to a seed's state around everything that runs for that
seed (hooks, augmentation, its task boundary), so one seed's continual-backprop
draws never shift another's. Available where the fused path is
(agents/fused.py: an MLP, plain SGD, ...); otherwise run the seeds as a sweep
(``--multirun seed=0,1,2``).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from plasticity_lab.agents.cuda_graph import graphed
from plasticity_lab.agents.fused import FusedAgent
from plasticity_lab.agents.stacked import StackedStep
from plasticity_lab.lab import checkpoint
from plasticity_lab.lab.progress import Progress
from plasticity_lab.lab.runner import (RunContext, _emit, begin_task, check_finite, default_out_dir, end_task, epoch_order, finish_run,
                        open_run, progress_metric, save_checkpoint, task_examples)
from plasticity_lab.lab.sinks import close_all
from plasticity_lab.registry import ConfigError
from plasticity_lab.streams import Task


def check_seeds(seeds: Any) -> list[int]:
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", seeds, "a non-empty list of distinct integer seeds, e.g. seeds=[0,1,2,3]")
    return seeds


def run_seeds(cfg: DictConfig, out_dir: str | Path | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """Train every seed of ``cfg.seeds``; returns their summaries."""
    seeds = check_seeds(cfg.seeds)
    base = Path(out_dir or cfg.out_dir or default_out_dir(cfg))
    base.mkdir(parents=True, exist_ok=True)
    if not resume:
        OmegaConf.save(cfg, base / "config.yaml", resolve=True)
    ctxs: list[RunContext] = []
    states: list[dict[str, Any]] = []
    try:
        for s in seeds:
            one = OmegaConf.merge(cfg, {"seed": s, "seeds": None, "out_dir": None})
            ctxs.append(open_run(one, base / f"seed_{s}", resume))
            states.append(checkpoint.rng_state())  # the seed's generators after its build (or its checkpoint)
        _check_stackable(ctxs, seeds)
        return _train_all(ctxs, states)
    finally:
        for ctx in ctxs:
            close_all(ctx.sinks)


def _check_stackable(ctxs: list[RunContext], seeds: list[int]) -> None:
    agents = [c.agent for c in ctxs]
    if not all(isinstance(a, FusedAgent) for a in agents):
        from plasticity_lab.agents.fused import fused_reason

        a = ctxs[0].agent
        why = fused_reason(a, [iv for iv in ctxs[0].interventions if hasattr(iv, "penalty")]) or "train.fast=false"
        raise ConfigError("seeds", seeds, f"a run the fused path supports (this one has {why}); "
                          "run the seeds as a sweep instead: lab run --multirun seed=" + ",".join(map(str, seeds)))
    if len({c.first_task for c in ctxs}) > 1:
        raise ConfigError("seeds", seeds, "seed runs stopped at the same task; resume each seed_<s> directory on its own")


@contextmanager
def own_rng(states: list[dict[str, Any]], i: int, full: bool = True) -> Iterator[None]:
    """Run the block with seed i's generators: all of them at task boundaries,
    torch's (CPU and the current CUDA device's) per step (``full=False``)."""
    cuda = "cuda" in states[i] and torch.cuda.is_available()
    dev = torch.cuda.current_device() if cuda else 0
    if full:
        checkpoint.set_rng_state(states[i])
    else:
        torch.set_rng_state(states[i]["torch"])
        if cuda:
            torch.cuda.set_rng_state(states[i]["cuda"][dev])
    try:
        yield
    finally:
        if full:
            states[i] = checkpoint.rng_state()
        else:
            states[i]["torch"] = torch.get_rng_state()
            if cuda:
                states[i]["cuda"][dev] = torch.cuda.get_rng_state()


def _train_all(ctxs: list[RunContext], states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cfg, stream, first = ctxs[0].cfg, ctxs[0].stream, ctxs[0].first_task
    stack = graphed(StackedStep([c.agent for c in ctxs]), cfg.train.cuda_graphs)
    sizes = task_examples(ctxs[0])
    progress = Progress(stream.num_tasks, [n * len(ctxs) for n in sizes], first, cfg.progress, progress_metric(stream))
    quiet = Progress(stream.num_tasks, sizes, first, "off")
    t_start = time.perf_counter()
    try:
        for k in range(first, stream.num_tasks):
            tasks = []
            for i, ctx in enumerate(ctxs):
                with own_rng(states, i):
                    tasks.append(ctx.stream.task(k).to(ctx.device))
                    begin_task(ctx, tasks[-1])
            t0 = time.perf_counter()
            totals = _train_task(ctxs, tasks, stack, states, progress)
            seconds = time.perf_counter() - t0
            for i, (ctx, task, (correct, loss, seen)) in enumerate(zip(ctxs, tasks, totals)):
                with own_rng(states, i):
                    end_task(ctx, task, correct, loss, seen, seconds, progress if i == 0 else quiet)
                    save_checkpoint(ctx, k)
        progress.close()
        return [finish_run(ctx, time.perf_counter() - t_start) for ctx in ctxs]
    finally:
        progress.close()


def _train_task(ctxs: list[RunContext], tasks: list[Task], stack: StackedStep, states: list[dict[str, Any]],
                progress: Progress) -> list[tuple[float, float, int]]:
    """Every seed's epochs over its task, one stacked step per batch."""
    cfg, device = ctxs[0].cfg, ctxs[0].device
    bs, log_every, augment = cfg.train.batch_size, cfg.train.log_every, ctxs[0].stream.augment
    n = tasks[0].num_train
    if any(t.num_train != n for t in tasks):
        raise ConfigError("seeds", [c.cfg.seed for c in ctxs], "streams whose tasks have the same size for every seed")
    per_seed = augment is not None or any(c.hooks.before_step or c.hooks.after_step for c in ctxs)
    correct = torch.zeros(len(ctxs), dtype=torch.long, device=device)
    loss_sum = torch.zeros(len(ctxs), device=device)
    seen, read = 0, ([0] * len(ctxs), [0.0] * len(ctxs), 0)
    for epoch in range(cfg.train.epochs):
        orders = [epoch_order(c.cfg.seed, t.id, epoch, n).to(device) for c, t in zip(ctxs, tasks)]
        xs = torch.stack([t.x_train[o] for t, o in zip(tasks, orders)])
        ys = torch.stack([t.y_train[o] for t, o in zip(tasks, orders)])
        for i in range(0, n, bs):
            xb, yb = xs[:, i:i + bs], ys[:, i:i + bs]
            if per_seed:
                xb = _before(ctxs, states, xb, yb, augment)
            loss, corr, logits, feats, grads = stack.step(xb, yb)
            correct.add_(corr)
            loss_sum.add_(loss, alpha=yb.shape[1])
            if per_seed:
                for j, ctx in enumerate(ctxs):
                    if ctx.hooks.after_step:
                        info = stack.info(j, xb, yb, loss, corr, logits, feats, grads)
                        with own_rng(states, j, full=False):
                            for h in ctx.hooks.after_step:
                                _emit(ctx, tasks[j].id, h(ctx.agent, info))
            for ctx in ctxs:
                ctx.step += 1
            seen += yb.shape[1]
            if ctxs[0].step % log_every == 0:
                read = _log_windows(ctxs, tasks, correct, loss_sum, seen, read, progress)
    stack.flush()
    read = _log_windows(ctxs, tasks, correct, loss_sum, seen, read, progress, record=False)
    return [(c, l, seen) for c, l in zip(read[0], read[1])]


def _before(ctxs: list[RunContext], states: list[dict[str, Any]], xb: torch.Tensor, yb: torch.Tensor,
            augment: Any) -> torch.Tensor:
    """Per-seed augmentation and ``before_step`` hooks, each with the seed's generator."""
    out = []
    for j, ctx in enumerate(ctxs):
        with own_rng(states, j, full=False):
            x = augment(xb[j]) if augment is not None else xb[j]
            for h in ctx.hooks.before_step:
                h(ctx.agent, x, yb[j])
        out.append(x)
    return torch.stack(out) if augment is not None else xb


def _log_windows(ctxs: list[RunContext], tasks: list[Task], correct: torch.Tensor, loss_sum: torch.Tensor, seen: int,
                 read: tuple[list[int], list[float], int], progress: Progress,
                 record: bool = True) -> tuple[list[int], list[float], int]:
    """Read every seed's accumulators with one device sync; check the losses; emit each seed's window."""
    c, l = correct.tolist(), loss_sum.tolist()
    for ctx, task, loss in zip(ctxs, tasks, l):
        check_finite(ctx, loss, task.id)
    dn = seen - read[2]
    if dn:
        progress.advance(dn * len(ctxs), tasks[0].id)
        if record:
            for ctx, task, ci, li, c0, l0 in zip(ctxs, tasks, c, l, read[0], read[1]):
                _emit(ctx, task.id, {"train/loss": (li - l0) / dn, "train/online_acc": (ci - c0) / dn})
    return c, l, seen
