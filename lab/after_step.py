"""The ``after_step`` moment of a group of runs: each run's hooks in its plan's
order, with that run's random generators; a hook whose every run's instance
stacks (``RunHooks.stacked``: continual backprop) is called once for the group
on steps every run takes, from the fused step's stacked tensors, instead of
once per run (at batch 1 the per-run Python of such a hook costs more than
the stacked step itself).
"""
from __future__ import annotations

from typing import Callable

from plasticity_lab.agents import StepInfo
from plasticity_lab.agents.agent import GroupStepInfo
from plasticity_lab.agents.hooks import StackedAfterStep
from plasticity_lab.lab.runner import RunContext, emit_record
from plasticity_lab.lab.seeds import SeedGenerators
from plasticity_lab.streams import Task

Slot = tuple[StackedAfterStep | None, list[int]]
"""A stacked hook (None: each run's own), and the positions in the plan it stands for."""


class GroupAfterStep:
    """Every run's ``after_step`` hooks, stacked where they can be."""

    def __init__(self, ctxs: list[RunContext], group: Callable[[], GroupStepInfo] | None):
        """``group``: the group step's last step as stacked tensors (the fused
        step of several runs reports them; None: no hook stacks)."""
        self.ctxs, self.group = ctxs, group
        owners = [c.hooks.after_step_hooks for c in ctxs]
        agents = [c.agent for c in ctxs]
        self.slots: list[Slot] = []
        for p, hook in enumerate(owners[0]):
            joined = hook.stacked([o[p] for o in owners], agents) if group is not None else None
            if joined is None and self.slots and self.slots[-1][0] is None:
                self.slots[-1][1].append(p)
            else:
                self.slots.append((joined, [p]))
        self.stacks = any(joined is not None for joined, _ in self.slots)

    def __call__(self, tasks: list[Task], active: list[int], info: Callable[[int], StepInfo],
                 generators: SeedGenerators) -> None:
        """The hooks of the ``active`` runs after one step (``info(j)``: run j's view of it)."""
        if not self.stacks or len(active) < len(self.ctxs):
            self._alone(tasks, active, info, generators, [p for _, ps in self.slots for p in ps])
            return
        for joined, positions in self.slots:
            if joined is None:
                self._alone(tasks, active, info, generators, positions)
                continue
            records = joined(self.group(), lambda j: generators.own(j, full=False))
            for ctx, task, record in zip(self.ctxs, tasks, records):
                emit_record(ctx, task.id, record)

    def _alone(self, tasks: list[Task], active: list[int], info: Callable[[int], StepInfo],
               generators: SeedGenerators, positions: list[int]) -> None:
        for j in active:
            ctx = self.ctxs[j]
            with generators.own(j, full=False):
                for p in positions:
                    emit_record(ctx, tasks[j].id, ctx.hooks.after_step[p](ctx.agent, info(j)))
