"""ReDo, recycling dormant neurons (Sokar et al., ICML 2023, arXiv:2302.12902,
section 4; code: google/dopamine, dopamine/labs/redo/weight_recyclers.py).

Every ``period`` steps, on a fixed probe batch of the current task (its first
``probe_size`` training examples), each hidden layer's tau-dormant score is

    s_j = mean_x |h_j(x)| / ((1/H) sum_k mean_x |h_k(x)|)

(``metrics.units.dormant_scores``) and the units with s_j <= tau are reset by
the shared helper: new incoming weights from the init distribution (the lab's
uniform +-gain sqrt(3 / fan_in), as Dohare et al.'s torch ReDo; Sokar et al.
use Xavier-uniform), bias 0, outgoing weights 0, optimizer state of those
entries cleared (Adam's step count untouched, as in the reference code).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.interventions import Intervention, interventions
from plasticity_lab.agents.interventions.units import per_unit, reset_units

if TYPE_CHECKING:
    from plasticity_lab.streams import Task


def dormant_scores(h: torch.Tensor) -> torch.Tensor:
    """s_j = mean|h_j| / (mean over units of mean|h_k|) (+1e-9 as the reference code)."""
    magnitude = h.abs().flatten(2).mean(2) if h.dim() > 2 else h.abs()
    m = magnitude.mean(0)
    return m / (m.mean() + 1e-9)


@interventions.register("redo")
@dataclass
class ReDo(Intervention):
    """Reset tau-dormant units every ``period`` steps (tau=0: dead units only)."""

    tau: float = 0.1
    period: int = 1000
    probe_size: int = 256
    steps: int = field(default=0, init=False)
    probe: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.period < 1 or self.probe_size < 1:
            raise ValueError("period and probe_size must be positive integers")

    def on_run_start(self, agent: Agent) -> None:
        agent.model.unit_layers()  # a network without resettable units says so before training

    def on_task_start(self, agent: Agent, task: "Task") -> None:
        self.probe = task.x_train[: self.probe_size]

    @torch.no_grad()
    def after_step(self, agent: Agent, info: StepInfo) -> dict | None:
        self.steps += 1
        if self.steps % self.period:
            return None
        feats = agent.features(self.probe.to(agent.model.layers[0].weight.device))
        record = {}
        for layer in agent.model.unit_layers():
            h = per_unit(feats[layer.name], layer.incoming.weight.shape[0])
            dormant = torch.nonzero(dormant_scores(h) <= self.tau).flatten()
            reset_units(layer, dormant, agent.optimizer)
            record[f"redo/reset/{layer.name}"] = int(dormant.numel())
        return record

    def state_dict(self) -> dict:
        return {"steps": self.steps, "probe": self.probe}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.probe = state["steps"], state["probe"]
