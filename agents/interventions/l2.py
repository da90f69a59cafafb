"""L2 regularisation as a loss penalty: L + (weight / 2) sum ||theta||^2 over
the weights and biases of the Linear layers. Distinct from an optimizer's
``weight_decay`` (which, for Adam, is rescaled by the adaptive step; with SGD
the two coincide: theta <- (1 - lr weight) theta - lr g)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plasticity_lab.agents.interventions import Intervention, interventions


@interventions.register("l2")
@dataclass
class L2(Intervention):
    """Penalty (weight / 2) ||theta||^2 added to the loss every step."""

    weight: float = 1e-4

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    def as_weight_decay(self) -> float:
        """The same term as SGD weight decay (its gradient is weight * theta): what the fused path applies."""
        return self.weight

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = [p for layer in model.layers for p in (layer.weight, layer.bias) if p is not None]
        return 0.5 * self.weight * sum(p.square().sum() for p in params)
