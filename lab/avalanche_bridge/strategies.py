"""Avalanche strategies as lab agents: ``lab run agent=avalanche agent.strategy=ewc``.

The strategy trains the lab's own network (so every lab metric sees it) on
each task through Avalanche's ``train(experience)``; the lab's runner still
evaluates, tracks and logs, so the outputs match a native run. Online accuracy
comes from the strategy's own forward pass before each update. Lab
interventions run inside the strategy as plugins (their ``penalty`` is added
to the strategy's loss before backward).

Defaults below are starting points for split MNIST, not tuned values.
Checkpoints keep the network and optimizer; a strategy's own memory (EWC
importances, replay buffers) is not in them, so a resumed Avalanche run
continues without it.
"""
from __future__ import annotations

import warnings

from typing import Any, Callable

import torch

from plasticity_lab.agents.agent import WholeTaskAgent
from plasticity_lab.streams import Task

STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "naive": ("Naive", {}),
    "ewc": ("EWC", {"ewc_lambda": 100.0, "mode": "separate"}),
    "si": ("SynapticIntelligence", {"si_lambda": 1.0}),
    "lwf": ("LwF", {"alpha": 1.0, "temperature": 2.0}),
    "replay": ("Replay", {"mem_size": 500}),
    "agem": ("AGEM", {"patterns_per_exp": 256, "sample_size": 256}),
    "gdumb": ("GDumb", {"mem_size": 500}),
}


class AvalancheAgent(WholeTaskAgent):
    """An Agent whose per-task training is an Avalanche strategy's."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: dict[str, Any],
                 batch_size: int, epochs: int, device: torch.device, loss: str = "cross_entropy"):
        super().__init__(model, optimizer, loss)
        from plasticity_lab.registry import ConfigError

        params = dict(strategy)
        name = params.pop("name")
        if name not in STRATEGIES:
            raise ConfigError("agent.strategy", name, STRATEGIES)
        self.strategy_name, (self.class_name, defaults) = name, STRATEGIES[name]
        unknown = set(params) - set(defaults)
        if unknown:
            raise ConfigError(f"agent.strategy.{sorted(unknown)[0]}", params[sorted(unknown)[0]],
                              f"a parameter of {name}: {', '.join(defaults) or '(none)'}")
        self.params, self.batch_size, self.epochs, self.device = {**defaults, **params}, batch_size, epochs, device
        self.strategy = self._build()  # imports avalanche (seconds) before training starts, not inside it

    def _build(self) -> Any:
        """The strategy, with Avalanche's two irrelevant warnings silenced: "no QP
        solver found" (qpsolvers, imported for GEM, which the lab does not offer)
        and "No loggers specified" (the lab records through its own sinks:
        lab/avalanche_bridge/plugins.py bridges the strategy's steps to them)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="no QP solver found")
            warnings.filterwarnings("ignore", message="No loggers specified")
            import avalanche.training.supervised as sup
            from avalanche.training.plugins import EvaluationPlugin

            from plasticity_lab.lab.avalanche_bridge.plugins import OnlineAccuracy, StepHooks

            self._online = OnlineAccuracy()
            self._hooks = StepHooks(self, [])
            cls = getattr(sup, self.class_name)
            return cls(model=self.model, optimizer=self.optimizer, criterion=torch.nn.CrossEntropyLoss(),
                       train_mb_size=self.batch_size, train_epochs=self.epochs, eval_mb_size=1024, device=self.device,
                       plugins=[self._online, self._hooks], evaluator=EvaluationPlugin(loggers=[]), **self.params)

    def train_task(self, task: Task, task_label: int, step_hooks: list[Callable]) -> tuple[int, float, int, int]:
        """Train ``task`` with the strategy: (correct, summed loss, examples, updates), read once."""
        from plasticity_lab.lab.avalanche_bridge.benchmark import task_experience

        self._hooks.step_hooks = step_hooks
        self._online.reset(self.device)
        experience = task_experience(task, task_label)
        before = self.strategy.clock.train_iterations
        self.strategy.train(experience)
        updates = self.strategy.clock.train_iterations - before
        return int(self._online.correct.item()), float(self._online.loss.item()), self._online.seen, updates
