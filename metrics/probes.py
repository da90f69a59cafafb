"""Plasticity probes: how well can the network still learn something new?

Both probes train a *copy* (``copy.deepcopy``) with a fresh optimizer of the
run's own kind and hyperparameters, so the run they watch is never touched.

- ``trainability``: K steps on a fixed probe task (fixed inputs, fresh random
  labels), reporting the loss before and after, the drop and the final
  accuracy (Lyle et al. 2023 style). Run on a freshly initialised copy too,
  "plasticity remaining" = acc_K(current) / acc_K(fresh): 1 = fits the probe
  as well as at initialisation, 0 = cannot fit it. (Accuracy, not the loss
  drop: a trained network starts the probe with confident wrong outputs, so
  its loss drops a lot just by unlearning that confidence.)
- ``linear_probe``: re-initialise only the output layer, freeze the rest and
  fit the head on labelled examples: the quality of the representation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProbeResult:
    loss_before: float
    loss_after: float
    accuracy: float

    @property
    def loss_drop(self) -> float:
        return self.loss_before - self.loss_after


def _fit(model: nn.Module, params, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
         batch_size: int, seed: int) -> ProbeResult:
    g = torch.Generator().manual_seed(seed)
    opt = type(optimizer)(params, **optimizer.defaults)
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=g).to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x)
        return ProbeResult(before, float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean()))


def trainability(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 steps: int = 100, batch_size: int = 32, seed: int = 0) -> ProbeResult:
    """Train a copy of ``model`` for ``steps`` on (x, y) with a fresh ``optimizer`` of the same kind."""
    probe = copy.deepcopy(model)
    probe.train()
    return _fit(probe, probe.parameters(), optimizer, x, y, steps, batch_size, seed)


def fresh_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` re-initialised by its own ``reset_parameters``."""
    fresh = copy.deepcopy(model)
    fresh.reset_parameters()
    return fresh


def linear_probe(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 steps: int = 100, batch_size: int = 32, seed: int = 0) -> ProbeResult:
    """Fit only a freshly initialised output layer of a copy (the rest frozen)."""
    probe = copy.deepcopy(model)
    head = probe.layers[-1]
    with torch.no_grad():
        b = (3.0 / head.in_features) ** 0.5
        head.weight.uniform_(-b, b)
        if head.bias is not None:
            head.bias.zero_()
    for p in probe.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return _fit(probe, head.parameters(), optimizer, x, y, steps, batch_size, seed)
