"""Plasticity probes: how well can the network still learn something new?

Both probes train a *copy* (``copy.deepcopy``) with a fresh optimizer of the
run's own kind and hyperparameters, and draw from their own seeded
generators, so the run they watch is never touched: not its weights, its
optimizer state nor its random stream.

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

from plasticity_lab.agents.optimizers import fresh_like
from plasticity_lab.metrics.catalog import metrics


@dataclass
class ProbeResult:
    """A probe's loss before and after its K steps, and its final accuracy."""

    loss_before: float
    loss_after: float
    accuracy: float

    @property
    def loss_drop(self) -> float:
        return self.loss_before - self.loss_after


def _fit(model: nn.Module, params, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
         batch_size: int, seed: int) -> ProbeResult:
    """``steps`` minibatch updates of ``params`` with a fresh optimizer of ``optimizer``'s
    kind, drawing batches and any optimizer noise (UPGD's) from generators seeded by ``seed``
    inside a fork of the global ones, which are left as they were."""
    g = torch.Generator().manual_seed(seed)
    opt = fresh_like(optimizer, params)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
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


def fresh_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` re-initialised by its own ``reset_parameters``
    (drawing from a generator seeded with ``seed``; the global one is restored)."""
    fresh = copy.deepcopy(model)
    devices = [p.device for p in fresh.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    return fresh


def linear_probe(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 steps: int = 100, batch_size: int = 32, seed: int = 0) -> ProbeResult:
    """Fit only a freshly initialised output layer of a copy (the rest frozen)."""
    probe = copy.deepcopy(model)
    head = probe.layers[-1]
    with torch.no_grad():
        b = (3.0 / head.in_features) ** 0.5
        g = torch.Generator().manual_seed(seed)
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-b, b, generator=g))
        if head.bias is not None:
            head.bias.zero_()
    for p in probe.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return _fit(probe, head.parameters(), optimizer, x, y, steps, batch_size, seed)


@dataclass
class PlasticityProbes:
    """The probes of one moment: ``now`` (a copy of the run's network fitting
    fixed inputs with random labels), ``fresh`` (a freshly initialised network
    on the same probe task, once per run) and ``linear`` (a fresh head on the
    frozen features of the current task)."""

    now: ProbeResult
    fresh: ProbeResult
    linear: ProbeResult


PROBE = dict(when="task_end", every="probe_every", inputs={"probes": "plasticity"})


@metrics.register("plasticity/probe_loss_drop", **PROBE, title="probe loss drop", unit="cross-entropy")
def probe_loss_drop(probes: PlasticityProbes | None) -> float | None:
    """Loss drop of a copy with a fresh optimizer trained `metrics.probe_steps` (100) steps on fixed inputs with random labels."""
    return None if probes is None else probes.now.loss_drop


@metrics.register("plasticity/probe_loss", **PROBE, title="probe loss", unit="cross-entropy")
def probe_loss(probes: PlasticityProbes | None) -> float | None:
    """That copy's final loss on the probe task."""
    return None if probes is None else probes.now.loss_after


@metrics.register("plasticity/probe_acc", **PROBE, title="probe accuracy", unit="accuracy", panel="Plasticity")
def probe_accuracy(probes: PlasticityProbes | None) -> float | None:
    """That copy's final accuracy on the probe task."""
    return None if probes is None else probes.now.accuracy


@metrics.register("plasticity/probe_remaining", **PROBE, title="plasticity remaining", unit="ratio to a fresh net",
                  plot=True, panel="Plasticity")
def plasticity_remaining(probes: PlasticityProbes | None) -> float | None:
    """That copy's probe accuracy / a freshly initialised network's (1 = as plastic as at init)."""
    if probes is None:
        return None
    return probes.now.accuracy / probes.fresh.accuracy if probes.fresh.accuracy else float("nan")


@metrics.register("plasticity/fresh_probe_acc", **PROBE, title="fresh network's probe accuracy", unit="accuracy")
def fresh_probe_accuracy(probes: PlasticityProbes | None) -> float | None:
    """A freshly initialised network's probe accuracy (the reference of probe_remaining)."""
    return None if probes is None else probes.fresh.accuracy


@metrics.register("plasticity/fresh_loss_drop", **PROBE, title="fresh network's probe loss drop", unit="cross-entropy")
def fresh_loss_drop(probes: PlasticityProbes | None) -> float | None:
    """A freshly initialised network's probe loss drop."""
    return None if probes is None else probes.fresh.loss_drop


@metrics.register("plasticity/linear_probe_acc", **PROBE, title="linear probe accuracy", unit="accuracy")
def linear_probe_accuracy(probes: PlasticityProbes | None) -> float | None:
    """Accuracy of a fresh head fitted on the frozen features of the current task."""
    return None if probes is None else probes.linear.accuracy
