"""The metric tracker: which metrics run, on what, and when.

Cost is bounded by the schedule, not by the run's length:

- at each task start (Dohare et al.: at every task switch, before training on
  it; every ``task_every``-th task where tasks are so short that this would
  cost more than a few per cent of training), on a fixed probe batch (the first ``probe_size`` training examples of
  the new task), per hidden layer: ``units/dead_frac``, ``units/dormant_frac``
  (tau = ``dormant_tau``), ``sparsity/act``, ``sparsity/grad`` (activation-
  derivative sparsity), ``rank/effective``, ``rank/srank``, ``rank/stable``,
  ``features/norm``, and ``weights/mean_abs`` per weight layer. A conv
  layer's channel is a unit: its maps are read as a (inputs x positions,
  channels) matrix, so ranks are ranks over channels;
- every ``every_steps`` steps, from the gradients the update just used:
  ``grad/norm`` and ``sparsity/param_grad`` (kept on the device, read with the
  run's other records);
- every ``probe_every`` tasks, at the task's end: the plasticity probe
  (``plasticity/probe_loss_drop``, ``plasticity/probe_acc``,
  ``plasticity/probe_remaining``, ``plasticity/linear_probe_acc``);
- every ``hessian_every`` tasks, at the task's end: ``curvature/hessian_top``.

Sparsity thresholds: exact zeros (eps = 0) for activations that reach 0
(ReLU family, hard_ash, crelu), eps = ``sparsity_eps`` (1e-3) for the rest.
``layers`` restricts the per-layer metrics to those hidden layers (null: all).
A tracker never changes the run: it works under ``no_grad`` or on copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from plasticity_lab.agents.activations import activation_facts
from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.hooks import RunHooks
from plasticity_lab.metrics.curvature import hessian_top_eigenvalue
from plasticity_lab.metrics.probes import fresh_copy, linear_probe, trainability
from plasticity_lab.metrics.rank import effective_rank, singular_values, srank, stable_rank
from plasticity_lab.metrics.sparsity import activation_sparsity, derivative_sparsity
from plasticity_lab.metrics.units import dead_fraction, dormant_fraction
from plasticity_lab.metrics.weights import feature_norm, mean_abs

PROBE_SEED = 12345


def channel_units(A: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) conv maps as an (N*H*W, C) matrix of channel outputs; dense outputs unchanged."""
    return A.movedim(1, -1).reshape(-1, A.shape[1]) if A.dim() == 4 else A


@dataclass
class Tracker(RunHooks):
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
    _fresh: tuple[float, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("probe_size", "probe_steps", "probe_examples", "task_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer")
        for key in ("every_steps", "probe_every", "hessian_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 turns it off)")

    # -- hooks -----------------------------------------------------------
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
        grads = [p.grad for p in agent.model.parameters() if p.grad is not None]
        if not grads and info.grads is not None:  # the fused path builds them on demand
            grads = info.grads()
        if not grads:
            return None
        flat = torch.cat([g.detach().flatten() for g in grads])
        return {"grad/norm": flat.norm(), "sparsity/param_grad": (flat == 0).float().mean()}

    def on_task_end(self, agent: Agent, task: Any) -> dict | None:
        record: dict[str, float] = {}
        if self.probe_every and (task.id + 1) % self.probe_every == 0 and task.classes:  # a classification probe
            record.update(self.plasticity(agent, task))
        if self.hessian_every and (task.id + 1) % self.hessian_every == 0:
            n = min(256, task.num_train)
            record["curvature/hessian_top"] = hessian_top_eigenvalue(
                agent.model, agent.loss_fn, task.x_train[:n], task.y_train[:n], iterations=10)
        return self._remember(task.id, record) if record else None

    # -- measurements ----------------------------------------------------
    @torch.no_grad()
    def representation(self, agent: Agent, x: torch.Tensor) -> dict[str, float]:
        model = agent.model
        was_training = model.training
        model.eval()
        _, feats = model.forward_features(x)
        pre = model.forward_preactivations(x)
        model.train(was_training)
        eps = 0.0 if activation_facts(model.activation).exact_zeros else self.sparsity_eps
        out: dict[str, float] = {}
        for name, A, Z, act in zip(model.hidden_names, feats, pre, model.acts):
            if self.layers and name not in self.layers:
                continue
            A, Z = channel_units(A), channel_units(Z)
            out[f"units/dead_frac/{name}"] = dead_fraction(A)
            out[f"units/dormant_frac/{name}"] = dormant_fraction(A, self.dormant_tau)
            out[f"sparsity/act/{name}"] = activation_sparsity(A, eps)
            with torch.enable_grad():
                out[f"sparsity/grad/{name}"] = derivative_sparsity(Z, act, eps)
            s = singular_values(A)
            out[f"rank/effective/{name}"] = effective_rank(s=s)
            out[f"rank/srank/{name}"] = srank(s=s)
            out[f"rank/stable/{name}"] = stable_rank(s=s)
            out[f"features/norm/{name}"] = feature_norm(A)
        for name, layer in zip(model.layer_names, model.layers):
            out[f"weights/mean_abs/{name}"] = mean_abs(layer.weight)
        return out

    def plasticity(self, agent: Agent, task: Any) -> dict[str, float]:
        """Probe on copies, with the RNG forked so the run's random stream is untouched."""
        device = task.x_train.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return self._plasticity(agent, task)

    def _plasticity(self, agent: Agent, task: Any) -> dict[str, float]:
        x, y = self._probe_task
        x = x.to(task.x_train.device)
        y = y.to(task.x_train.device)
        now = trainability(agent.model, agent.optimizer, x, y, self.probe_steps, seed=PROBE_SEED)
        if self._fresh is None:
            fresh = trainability(fresh_copy(agent.model), agent.optimizer, x, y, self.probe_steps, seed=PROBE_SEED)
            self._fresh = (fresh.loss_drop, fresh.accuracy)
        n = min(self.probe_examples, task.num_train)
        lin = linear_probe(agent.model, agent.optimizer, task.x_train[:n], task.y_train[:n], self.probe_steps,
                           seed=PROBE_SEED)
        return {
            "plasticity/probe_loss_drop": now.loss_drop,
            "plasticity/probe_acc": now.accuracy,
            "plasticity/probe_loss": now.loss_after,
            "plasticity/probe_remaining": now.accuracy / self._fresh[1] if self._fresh[1] else float("nan"),
            "plasticity/fresh_probe_acc": self._fresh[1],
            "plasticity/fresh_loss_drop": self._fresh[0],
            "plasticity/linear_probe_acc": lin.accuracy,
        }

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
        return {"series": self.series, "steps": self.steps, "probe_task": self._probe_task,
                "fresh": self._fresh}

    def load_state_dict(self, state: dict) -> None:
        self.series, self.steps = state["series"], state["steps"]
        self._probe_task, self._fresh = state["probe_task"], state["fresh"]
