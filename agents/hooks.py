"""The moments of a run, and the one place that decides who acts at each.

The runner owns the loop and calls, in order (as Avalanche's plugins are
called at named moments of a strategy):

- ``on_run_start(agent)`` — once, before the first task (not on resume)
- ``on_task_start(agent, task) -> record | None``
- ``before_step(agent, x, y) -> None``
- ``penalty(model) -> Tensor`` — added to the loss before backward
- ``after_step(agent, info: StepInfo) -> record | None`` — after the optimizer step
- ``on_task_end(agent, task) -> record | None``

Everything called at those moments (interventions, the metric tracker)
derives from :class:`RunHooks`. A hook is on when the class defines it (its
method differs from the base's no-op) or, for a plug-in whose moments depend
on its parameters (a reset per task or every N steps), when ``moments()``
says so. :func:`plan_hooks` reads that once per run into a :class:`HookPlan`,
the only thing the runner, the fused path, vectorised seeds and the Avalanche
bridge consult: unused moments cost nothing per step, and no reader guesses
a capability from an attribute's name. One declaration more is read where
it applies: a hook whose seeds' instances can act as one on a group of
vectorised seeds says how in ``stacked``, which the training loop asks once
when it builds a group's step (lab/after_step.py).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from plasticity_lab.agents.agent import Agent, GroupStepInfo, StepInfo

Record = Optional[dict[str, Any]]
"""What a hook returns: ``{"name/with/slashes": value}`` for the sinks, or None."""

MOMENTS = ("on_run_start", "on_task_start", "before_step", "penalty", "after_step", "on_task_end")


class RunHooks:
    """Base of everything the runner calls at the moments above; override the
    moments you need. State worth checkpointing goes in ``state_dict`` /
    ``load_state_dict`` (tensors and plain Python values)."""

    def on_run_start(self, agent: "Agent") -> None:
        """Once, before the first task of a fresh run (a resumed run restores ``state_dict`` instead)."""

    def on_task_start(self, agent: "Agent", task: Any) -> Record:
        """When ``task`` starts, before its first step."""

    def before_step(self, agent: "Agent", x: torch.Tensor, y: torch.Tensor) -> None:
        """Before each update, with its batch."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """A term added to the loss before backward."""
        raise NotImplementedError

    def after_step(self, agent: "Agent", info: "StepInfo") -> Record:
        """After each optimizer step, with what the step saw."""

    def on_task_end(self, agent: "Agent", task: Any) -> Record:
        """When ``task``'s training is over, before its evaluation."""

    def moments(self) -> frozenset[str]:
        """The moments this object acts at: by default every one its class overrides."""
        return frozenset(m for m in MOMENTS if getattr(type(self), m) is not getattr(RunHooks, m))

    def reads_weights_between_steps(self) -> bool:
        """Whether a per-step hook reads or writes the weights (the fused path
        then applies each update at once instead of deferring it): by default
        whenever ``before_step`` or ``after_step`` is on."""
        return bool(self.moments() & {"before_step", "after_step"})

    def as_weight_decay(self) -> float | None:
        """The penalty as SGD weight decay c (its gradient is c theta), which
        the fused path applies instead; None when it is another penalty (the
        fused path then cannot run)."""
        return None

    def drops_optimizer_state(self) -> bool:
        """Whether a hook drops a whole tensor's optimizer state (a layer reset):
        vectorised seeds then clear that seed's slice of a stacked state, which
        equals dropping it only for some optimizers (agents/vmapped.py)."""
        return False

    def needs_weight_abs_sums(self) -> bool:
        """Whether ``after_step`` reads each step's |W| row and column sums
        (``StepInfo.weight_abs_sums``: the fused step computes them in its update pass)."""
        return False

    def stacked(self, seeds: list["RunHooks"], agents: list["Agent"]) -> Optional["StackedAfterStep"]:
        """One ``after_step`` for a group of vectorised seeds that each hold an
        instance of this hook (``seeds``, in seed order, self first; ``agents``
        theirs), acting on the group step's stacked tensors at once (the
        runner calls it on steps every seed takes; on others each seed's
        instance runs alone, so their state must stay theirs). None (the
        default): each seed's instance always runs alone."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class StackedAfterStep(Protocol):
    """The ``after_step`` of every seed of a group at once (:meth:`RunHooks.stacked`)."""

    def __call__(self, info: "GroupStepInfo", own: Callable[[int], AbstractContextManager]) -> list[Record]:
        """Act on the group's step (``own(n)``: a block with seed n's random
        generators, for any draw); return each seed's record, in seed order."""


@dataclass(frozen=True)
class HookPlan:
    """Who acts at each moment, and what that asks of the fused SGD path;
    made once per run by :func:`plan_hooks`."""

    on_run_start: tuple[Callable, ...] = ()
    on_task_start: tuple[Callable, ...] = ()
    before_step: tuple[Callable, ...] = ()
    penalty: tuple[Callable, ...] = ()
    after_step: tuple[Callable, ...] = ()
    on_task_end: tuple[Callable, ...] = ()
    after_step_hooks: tuple[RunHooks, ...] = ()
    """The objects whose ``after_step`` is on, in the order of ``after_step`` (what a group stacks)."""
    weight_decay: float = 0.0
    """Sum of the penalties that are SGD weight decay (the fused path's extra decay)."""
    other_penalties: tuple[str, ...] = ()
    """Names of penalty owners that are not weight decay (the fused path cannot take them)."""
    needs_weight_abs_sums: bool = False
    reads_weights_between_steps: bool = False
    drops_optimizer_state: bool = False

    @property
    def per_step(self) -> bool:
        """Whether anything runs between two updates."""
        return bool(self.before_step or self.after_step)


def plan_hooks(objects: Iterable[RunHooks]) -> HookPlan:
    """The HookPlan of ``objects`` (in order: earlier objects act first at every moment)."""
    objects = list(objects)
    for obj in objects:
        if not isinstance(obj, RunHooks):
            raise TypeError(f"{obj!r} is not a RunHooks (interventions derive from "
                            "plasticity_lab.agents.interventions.Intervention)")
    moments = [(obj, obj.moments()) for obj in objects]
    bound = {m: tuple(getattr(obj, m) for obj, on in moments if m in on) for m in MOMENTS}
    penalised = [obj for obj, on in moments if "penalty" in on]
    decays = [obj.as_weight_decay() for obj in penalised]
    return HookPlan(
        **bound,
        after_step_hooks=tuple(obj for obj, on in moments if "after_step" in on),
        weight_decay=float(sum(d for d in decays if d is not None)),
        other_penalties=tuple(type(obj).__name__ for obj, d in zip(penalised, decays) if d is None),
        needs_weight_abs_sums=any(obj.needs_weight_abs_sums() for obj in objects),
        reads_weights_between_steps=any(obj.reads_weights_between_steps() for obj in objects),
        drops_optimizer_state=any(obj.drops_optimizer_state() for obj in objects),
    )
