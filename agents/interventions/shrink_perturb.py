"""Shrink & perturb (Ash & Adams 2020, "On Warm-Starting Neural Network Training",
NeurIPS 2020, arXiv:1910.08475, section 4).

Per step (``at=step``), after the optimizer step, on every weight and bias of
the network's Linear layers:  theta <- (1 - shrink) theta + noise_std * eps,
eps ~ N(0, 1): with the SGD step before it this is Ash & Adams' per-step form
p (theta - lr g) + sigma eps with p = 1 - shrink. Dohare et al.'s permuted-MNIST
variant shrinks through SGD's weight decay instead (lr 0.003, weight_decay 1e-4)
and adds N(0, noise_std^2) after every step: ``shrink=0`` plus
``agent.optimizer.weight_decay=1e-4``.
At task boundaries (``at=task``, the warm-start form): theta <- (1 - shrink)
theta + noise_std * eps with eps drawn from the layer's init distribution
(U(-b, b)), when each task after the first starts.

Defaults: shrink 1e-3 and noise_std 1e-2 per step, the best per-step setting
Kumar et al. (2023, "Maintaining Plasticity in Continual Learning via
Regenerative Regularization", arXiv:2308.11958, appendix A.3) found on
permuted MNIST, so ``interventions=[shrink_perturb]`` alone both shrinks and
perturbs. Dohare et al.'s exact form (permuted MNIST):
``interventions.shrink_perturb.shrink=0 interventions.shrink_perturb.noise_std=1e-5
agent.optimizer.weight_decay=1e-4``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.interventions import Intervention, interventions

if TYPE_CHECKING:
    from plasticity_lab.streams import Task


@interventions.register("shrink_perturb")
@dataclass
class ShrinkPerturb(Intervention):
    """Shrink weights toward 0 and add noise, every step or at each task start."""

    shrink: float = 1e-3
    noise_std: float = 1e-2
    at: str = "step"

    def __post_init__(self) -> None:
        if not 0 <= self.shrink < 1:
            raise ValueError(f"shrink must be in [0, 1), got {self.shrink}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.at not in ("step", "task"):
            raise ValueError(f"at must be 'step' or 'task', got {self.at!r}")

    def moments(self) -> frozenset[str]:
        """Per step (``after_step``) or at task starts (``on_task_start``), as ``at`` says."""
        return frozenset({"after_step"} if self.at == "step" else {"on_task_start"})

    @torch.no_grad()
    def after_step(self, agent: Agent, info: StepInfo) -> None:
        for layer in agent.model.layers:
            for p in (layer.weight, layer.bias):
                if p is not None:
                    if self.shrink:
                        p.mul_(1 - self.shrink)
                    p.add_(torch.randn_like(p), alpha=self.noise_std)

    @torch.no_grad()
    def on_task_start(self, agent: Agent, task: "Task") -> None:
        if task.id == 0:
            return
        for i, layer in enumerate(agent.model.layers):
            bound = agent.model.init_bound(i)
            for p in (layer.weight, layer.bias):
                if p is not None:
                    p.mul_(1 - self.shrink).add_(torch.empty_like(p).uniform_(-bound, bound), alpha=self.noise_std)
