"""Layer resets (Nikishin et al. 2022, "The Primacy Bias in Deep RL",
arXiv:2205.07802; Dohare et al.'s continual-ImageNet "new heads").

``layers``: ``head`` (the output layer), ``all`` (the whole network), or an
integer k (the last k Linear layers). ``every``: ``task`` (at each task start
after the first) or a number of steps. ``mode``: ``init`` re-samples weights
from the init distribution with zero biases; ``zero`` sets weights and biases
to 0 (continual ImageNet's head reset). The optimizer state of a reset tensor
is dropped entirely (momentum, Adam moments and step); among vectorised seeds
it is cleared to its initial values with the shared step count kept, which is
the same where no step count enters the update (agents/vmapped.py refuses the rest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.interventions import Intervention, interventions

if TYPE_CHECKING:
    from plasticity_lab.streams import Task


@interventions.register("reset")
@dataclass
class Reset(Intervention):
    """Re-initialise the head, the last k layers or everything, per task or every N steps."""

    layers: str = "head"
    every: str = "task"
    mode: str = "init"
    steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.layers, self.every = str(self.layers), str(self.every)
        if self.layers not in ("head", "all") and not (self.layers.isdigit() and int(self.layers) > 0):
            raise ValueError(f"layers must be 'head', 'all' or a positive integer, got {self.layers!r}")
        if self.every != "task" and not (self.every.isdigit() and int(self.every) > 0):
            raise ValueError(f"every must be 'task' or a positive number of steps, got {self.every!r}")
        if self.mode not in ("init", "zero"):
            raise ValueError(f"mode must be 'init' or 'zero', got {self.mode!r}")

    def moments(self) -> frozenset[str]:
        """At task starts (``every=task``) or after steps (``every=N``)."""
        return frozenset({"on_task_start"} if self.every == "task" else {"after_step"})

    def drops_optimizer_state(self) -> bool:
        """A reset tensor's optimizer state is dropped (momentum, moments and step)."""
        return True

    def which(self, n_layers: int) -> range:
        k = {"head": 1, "all": n_layers}.get(self.layers) or min(int(self.layers), n_layers)
        return range(n_layers - k, n_layers)

    def on_task_start(self, agent: Agent, task: "Task") -> dict | None:
        if task.id > 0:
            return self.reset(agent)
        return None

    def after_step(self, agent: Agent, info: StepInfo) -> dict | None:
        self.steps += 1
        return self.reset(agent) if self.steps % int(self.every) == 0 else None

    @torch.no_grad()
    def reset(self, agent: Agent) -> dict:
        model = agent.model
        chosen = self.which(len(model.layers))
        for i in chosen:
            layer = model.layers[i]
            if self.mode == "zero":
                layer.weight.zero_()
            else:
                b = model.init_bound(i)
                layer.weight.uniform_(-b, b)
            for p in (layer.weight, layer.bias):
                if p is not None:
                    agent.optimizer.state.pop(p, None)
            if layer.bias is not None:
                layer.bias.zero_()
        if self.layers == "all":
            for module in [*model.norms, *model.acts]:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return {"reset/layers": len(chosen)}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
