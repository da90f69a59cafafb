"""L2-init, regenerative regularisation (Kumar, Marklund & Van Roy 2023,
"Maintaining Plasticity in Continual Learning via
Regenerative Regularization", arXiv:2308.11958, section 4): L + weight * ||theta - theta_0||^2 over
every trainable parameter, theta_0 the parameters at the start of the run
(fixed for the whole run; units re-initialised by a reset method keep their
original theta_0 entry). The loss form is used literally, so its gradient is
2 weight (theta - theta_0); the paper's best weight is 1e-2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from plasticity_lab.agents.agent import Agent
from plasticity_lab.agents.interventions import Intervention, interventions


@interventions.register("l2_init")
@dataclass
class L2Init(Intervention):
    """Penalty weight * ||theta - theta_0||^2 toward the initial parameters."""

    weight: float = 1e-2
    initial: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    def on_run_start(self, agent: Agent) -> None:
        self.initial = [p.detach().clone() for p in agent.model.parameters() if p.requires_grad]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return self.weight * sum((p - p0).square().sum() for p, p0 in zip(params, self.initial))

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.initial = state["initial"]
