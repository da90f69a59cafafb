"""Spectral regularisation (Lewandowski et al., "Learning Continually by
Spectral Regularization", ICLR 2025, arXiv:2406.06811).

Penalty weight * sum_l (sigma_max(W_l) - 1)^2 over every Linear weight, with
sigma_max from one step of persistent power iteration per training step
(Miyato et al.'s scheme): v <- W^T u / ||W^T u||, u <- W v / ||W v||,
sigma = u^T W v, u and v treated as constants (d sigma / dW = u v^T). The
exponent k = 1 of sigma^k is used (the paper's exact exponent is unverified).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from plasticity_lab.agents.agent import Agent
from plasticity_lab.agents.interventions import Intervention, interventions


@interventions.register("spectral")
@dataclass
class Spectral(Intervention):
    """Keep each layer's largest singular value near 1."""

    weight: float = 1e-3
    iterations: int = 1
    vectors: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weight < 0 or self.iterations < 1:
            raise ValueError("weight must be >= 0 and iterations >= 1")

    def on_run_start(self, agent: Agent) -> None:
        g = torch.Generator().manual_seed(0)
        self.vectors = [F.normalize(torch.randn(l.weight.shape[0], generator=g), dim=0).to(l.weight.device)
                        for l in agent.model.layers]

    def sigmas(self, model: nn.Module) -> list[torch.Tensor]:
        """sigma_max estimate of each Linear weight (differentiable in W)."""
        out = []
        for i, layer in enumerate(model.layers):
            w = layer.weight.flatten(1)
            with torch.no_grad():
                u = self.vectors[i]
                for _ in range(self.iterations):
                    v = F.normalize(w.t() @ u, dim=0)
                    u = F.normalize(w @ v, dim=0)
                self.vectors[i] = u
            out.append(u @ w @ v)
        return out

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.weight * sum((s - 1).square() for s in self.sigmas(model))

    def state_dict(self) -> dict:
        return {"vectors": self.vectors}

    def load_state_dict(self, state: dict) -> None:
        self.vectors = state["vectors"]
