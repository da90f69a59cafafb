"""The metric tracker: runs the catalog's metrics (metrics/catalog.py) at
their moments, so their cost is bounded by the schedule, not by the run's length.

- ``task_start`` metrics: at each task switch, before training on it
  (Dohare et al. 2024; every ``task_every``-th task where tasks are so short
  that this would cost more than a few per cent of training), on a fixed
  probe batch (the first ``probe_size`` training examples of the new task),
  per hidden layer or per weight layer. A conv layer's channel is a unit: its
  maps are read as an (inputs x positions, channels) matrix, so ranks are
  ranks over channels;
- ``step`` metrics: every ``every_steps`` steps, from the gradients the update
  just used (kept on the device, read with the run's other records);
- ``task_end`` metrics: at a task's end, every ``probe_every`` tasks for the
  plasticity probes, every ``hessian_every`` tasks for the curvature (a
  metric's ``every`` names its cadence parameter; 0 turns it off).

A metric function returning None records nothing (the probes on a regression
stream). ``layers`` restricts the per-layer metrics to those hidden layers
(null: all). A tracker never changes the run: it measures under ``no_grad``
or on copies, with its own generators.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
from torch import nn

from plasticity_lab.agents.activations import activation_facts
from plasticity_lab.agents.agent import Agent, GroupStepInfo, StepInfo
from plasticity_lab.agents.hooks import Record, RunHooks
from plasticity_lab.metrics.catalog import MetricFacts, compute, scheduled
from plasticity_lab.metrics.probes import PlasticityProbes, ProbeResult, fresh_copy, linear_probe, trainability
from plasticity_lab.metrics.rank import singular_values

PROBE_SEED = 12345
HESSIAN_EXAMPLES = 256


def channel_units(A: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) conv maps as an (N*H*W, C) matrix of channel outputs; dense outputs unchanged."""
    return A.movedim(1, -1).reshape(-1, A.shape[1]) if A.dim() == 4 else A


@dataclass
class LayerProbe:
    """What a ``task_start`` per-layer metric reads (metrics/catalog.py INPUTS)."""

    features: torch.Tensor
    preactivations: torch.Tensor
    activation: nn.Module
    sparsity_eps: float
    dormant_tau: float

    @cached_property
    def singular_values(self) -> torch.Tensor:
        return singular_values(self.features)


@dataclass
class WeightProbe:
    """What a ``task_start`` per-weight-layer metric reads."""

    weight: torch.Tensor


@dataclass
class StepProbe:
    """What a ``step`` metric reads: the step's gradients, from the parameters
    (autograd) or built from the fused step's deltas."""

    model: nn.Module
    info: StepInfo

    @cached_property
    def gradients(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return grads if grads or self.info.grads is None else self.info.grads()


@dataclass
class TaskEndProbe:
    """What a ``task_end`` metric reads; the plasticity probes run once, when first read."""

    model: nn.Module
    loss_fn: Callable
    x: torch.Tensor
    y: torch.Tensor
    measure_plasticity: Callable[[], PlasticityProbes | None]

    @cached_property
    def plasticity(self) -> PlasticityProbes | None:
        return self.measure_plasticity()


@dataclass
class Tracker(RunHooks):
    """Runs the catalog's metrics on their schedule (see the module docstring)."""

    probe_size: int = 1000
    at_task_start: bool = True
    task_every: int = 1
    every_steps: int = 250
    probe_every: int = 10
    probe_steps: int = 100
    probe_examples: int = 512
    hessian_every: int = 25
    dormant_tau: float = 0.1
    sparsity_eps: float = 1e-3
    layers: list | None = None
    series: dict[str, list] = field(default_factory=dict, init=False)
    steps: int = field(default=0, init=False)
    _probe_task: Any = field(default=None, init=False, repr=False)
    _fresh: ProbeResult | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("probe_size", "probe_steps", "probe_examples", "task_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer")
        for key in ("every_steps", "probe_every", "hessian_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 turns it off)")

    # -- moments -----------------------------------------------------------
    def reads_weights_between_steps(self) -> bool:
        """Its ``after_step`` reads the step's gradients only (the fused step builds them from its deltas)."""
        return False

    def on_task_start(self, agent: Agent, task: Any) -> dict | None:
        if self._probe_task is None:
            self._make_probe_task(task)
        if not self.at_task_start or task.id % self.task_every:
            return None
        return self._remember(task.id, self.representation(agent, task.x_train[: self.probe_size]))

    def after_step(self, agent: Agent, info: StepInfo) -> dict | None:
        self.steps += 1
        if not self.every_steps or self.steps % self.every_steps:
            return None
        probe = StepProbe(agent.model, info)
        if not probe.gradients:
            return None
        return self._run(scheduled("step"), probe)

    def stacked(self, seeds: list["Tracker"], agents: list[Agent]) -> "StackedTracker":
        """Every seed's step count advanced at once (see :class:`StackedTracker`)."""
        return StackedTracker(seeds, agents)

    def on_task_end(self, agent: Agent, task: Any) -> dict | None:
        due = [(n, fn, f) for n, fn, f in scheduled("task_end")
               if f.every and getattr(self, f.every) and (task.id + 1) % getattr(self, f.every) == 0]
        if not due:
            return None
        n = min(HESSIAN_EXAMPLES, task.num_train)
        probe = TaskEndProbe(agent.model, agent.loss_fn, task.x_train[:n], task.y_train[:n],
                             lambda: self.plasticity(agent, task))
        record = self._run(due, probe)
        return self._remember(task.id, record) if record else None

    # -- measurements ------------------------------------------------------
    @torch.no_grad()
    def representation(self, agent: Agent, x: torch.Tensor) -> dict[str, float]:
        """Every ``task_start`` metric of the catalog on probe inputs ``x``."""
        model = agent.model
        was_training = model.training
        model.eval()
        _, feats = model.forward_features(x)
        pre = model.forward_preactivations(x)
        model.train(was_training)
        eps = 0.0 if activation_facts(model.activation).exact_zeros else self.sparsity_eps
        metrics = scheduled("task_start")
        out: dict[str, float] = {}
        for name, A, Z, act in zip(model.hidden_names, feats, pre, model.acts):
            if not self.layers or name in self.layers:
                probe = LayerProbe(channel_units(A), channel_units(Z), act, eps, self.dormant_tau)
                out.update(self._run([m for m in metrics if m[2].per == "layer"], probe, name))
        for name, layer in zip(model.layer_names, model.layers):
            out.update(self._run([m for m in metrics if m[2].per == "weight_layer"], WeightProbe(layer.weight), name))
        return out

    def plasticity(self, agent: Agent, task: Any) -> PlasticityProbes | None:
        """The probes on copies, from their own generators (None on a regression stream)."""
        if not task.classes:
            return None
        x, y = (t.to(task.x_train.device) for t in self._probe_task)
        now = trainability(agent.model, agent.optimizer, x, y, self.probe_steps, seed=PROBE_SEED)
        if self._fresh is None:
            fresh = fresh_copy(agent.model, seed=PROBE_SEED)
            self._fresh = trainability(fresh, agent.optimizer, x, y, self.probe_steps, seed=PROBE_SEED)
        n = min(self.probe_examples, task.num_train)
        lin = linear_probe(agent.model, agent.optimizer, task.x_train[:n], task.y_train[:n], self.probe_steps,
                           seed=PROBE_SEED)
        return PlasticityProbes(now, self._fresh, lin)

    @staticmethod
    def _run(metrics: list[tuple[str, Callable, MetricFacts]], probe: Any, layer: str | None = None) -> dict[str, Any]:
        """Each metric on ``probe``, named ``name`` or ``name/<layer>``; None values dropped."""
        out = {}
        for name, fn, facts in metrics:
            value = compute(fn, facts, probe)
            if value is not None:
                out[name if layer is None else f"{name}/{layer}"] = value
        return out

    def _make_probe_task(self, task: Any) -> None:
        """Fixed probe inputs (from the first task) with fresh random labels, the same all run."""
        g = torch.Generator().manual_seed(PROBE_SEED)
        n = min(self.probe_examples, task.num_train)
        classes = max(int(task.y_train.max()) + 1, 2)
        self._probe_task = (task.x_train[:n].detach().cpu().clone(), torch.randint(0, classes, (n,), generator=g))

    def _remember(self, task_id: int, record: dict[str, float]) -> dict[str, float]:
        for key, value in record.items():
            self.series.setdefault(key, []).append([task_id, float(value)])
        return record

    # -- outputs and checkpoints -------------------------------------------
    def final(self) -> dict[str, float]:
        return {key: values[-1][1] for key, values in self.series.items()}

    def state_dict(self) -> dict:
        fresh = None if self._fresh is None else [self._fresh.loss_before, self._fresh.loss_after, self._fresh.accuracy]
        return {"series": self.series, "steps": self.steps, "probe_task": self._probe_task, "fresh": fresh}

    def load_state_dict(self, state: dict) -> None:
        self.series, self.steps = state["series"], state["steps"]
        self._probe_task = state["probe_task"]
        self._fresh = None if state["fresh"] is None else ProbeResult(*state["fresh"])


@dataclass
class StackedTracker:
    """The trackers of vectorised seeds at each step: each seed's step count
    goes on, and a seed's own ``after_step`` (with its :class:`StepInfo`) runs
    only at the steps its step metrics are due, so the steps between cost no
    per-seed view of the step (most steps: the metrics' cadence is every
    ``every_steps`` steps)."""

    seeds: list[Tracker]
    agents: list[Agent]

    def __call__(self, info: GroupStepInfo, own: Callable[[int], AbstractContextManager]) -> list[Record]:
        records: list[Record] = []
        for n, (tracker, agent) in enumerate(zip(self.seeds, self.agents)):
            if tracker.every_steps and (tracker.steps + 1) % tracker.every_steps == 0:
                with own(n):
                    records.append(tracker.after_step(agent, info.seed(n)))
            else:
                tracker.steps += 1
                records.append(None)
        return records
