"""Idle seeds: a seed of a lock-step group that has no batch at a step sits it out.

Seeds trained together each learn their own stream (lab/loop.py). Where their
tasks differ in size (split MNIST's five tasks shuffled per seed, as Keskinen's
code does, on a subset whose classes differ in size) a seed runs out of batches
before the others, or its last batch is smaller than theirs. One stacked step
(agents/stacked.py, agents/vmapped.py) still updates every seed's slice, so a
seed that sits a step out has its state copied before the step and put back
after it: its weights, buffers (BatchNorm's statistics) and per-entry optimizer
state (momentum, Adagrad's sums, ...). A seed's last, smaller batch is a step
of its own, which the others sit out.

What a copy cannot put back is a count the stacked optimizer keeps per tensor,
not per seed (``step``). Optimizers whose update reads it (Adam's bias
correction) are refused for such groups (agents/vmapped.py ``vmap_reason``);
for the others it enters no update, and each seed keeps its own count as an
offset from the stack's (``SeedOptimizer.sat_out``), so its checkpoint holds
what the seed alone would have. The cost is a copy of the idle seeds' state at
the few steps per task where seeds' batches differ.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from plasticity_lab.agents.agent import Agent
from plasticity_lab.agents.vmapped import PER_TENSOR_KEYS, SeedOptimizer


@dataclass
class _Kept:
    """One idle seed's state as it was before the step."""

    tensors: list[tuple[torch.Tensor, torch.Tensor]]
    """(live tensor, its copy): parameters, buffers and per-entry optimizer state."""
    stateless: list[torch.Tensor]
    """Parameters without optimizer state before the step (a lazily built state must not appear)."""


@contextmanager
def sitting_out(agents: list[Agent], flush: Callable[[], None]) -> Iterator[None]:
    """Run the group's step inside this block: ``agents`` leave it as they
    entered it. ``flush``: the step's deferred updates (agents/pending.py)
    into the weights, before the copy and after the step."""
    flush()
    kept = [_keep(a) for a in agents]
    yield
    flush()
    for agent, k in zip(agents, kept):
        _put_back(agent, k)


def _keep(agent: Agent) -> _Kept:
    tensors = [*agent.model.parameters(), *agent.model.buffers()]
    stateless = []
    for p in agent.model.parameters():
        entries = agent.optimizer.state.get(p)
        if not entries:
            stateless.append(p)
            continue
        tensors += [v for k, v in entries.items()
                    if isinstance(v, torch.Tensor) and v.shape == p.shape and k not in PER_TENSOR_KEYS]
    return _Kept([(t, t.detach().clone()) for t in tensors], stateless)


def _put_back(agent: Agent, kept: _Kept) -> None:
    with torch.no_grad():
        for live, copy in kept.tensors:
            live.copy_(copy)
    for p in kept.stateless:  # a seed alone would have no state yet: initial values (SeedState.pop) or none
        agent.optimizer.state.pop(p, None)
    if isinstance(agent.optimizer, SeedOptimizer):
        agent.optimizer.sat_out()


__all__ = ["sitting_out"]
