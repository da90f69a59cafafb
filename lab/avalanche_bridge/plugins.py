"""The lab's interventions and metric tracker as Avalanche plugins.

Both wrap the lab's own objects and call their hooks at the matching moments
of an Avalanche strategy: ``before_training_exp`` -> ``on_task_start``,
``before_forward`` (training) -> ``before_step``, ``before_backward`` ->
``penalty`` (added to the strategy's loss), ``after_training_iteration``
(after the optimizer step) -> ``after_step``, ``after_training_exp`` ->
``on_task_end``. The features of the pre-update
forward pass (what continual backprop's utility reads) are captured with
forward hooks on the network's activation modules.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from plasticity_lab.agents import Agent, StepInfo
from plasticity_lab.agents.hooks import RunHooks, plan_hooks
from plasticity_lab.agents.interventions import interventions
from plasticity_lab.metrics.tracker import Tracker
from plasticity_lab.streams import Task

PROBE_EXAMPLES = 2000


def experience_task(experience: Any, limit: int = PROBE_EXAMPLES) -> Task:
    """A lab Task view of an Avalanche experience (its first ``limit`` examples)."""
    data = experience.dataset
    n = min(limit, len(data))
    xs, ys = zip(*[(s[0], s[1]) for s in (data[i] for i in range(n))])
    x, y = torch.stack(xs), torch.as_tensor(ys)
    classes = tuple(sorted(int(c) for c in getattr(experience, "classes_in_this_experience", y.unique().tolist())))
    return Task(int(experience.current_experience), x, y, x[:0], y[:0], classes, {"source": "avalanche"})


class _FeatureCapture:
    """Keeps the output of each activation module of the last forward pass."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: list[torch.Tensor] = [None] * len(model.acts)
        self.handles = [act.register_forward_hook(self._hook(i)) for i, act in enumerate(model.acts)]

    def _hook(self, i: int):
        def keep(module, inputs, output):
            self.outputs[i] = output.detach()
        return keep


class LabPlugin(SupervisedPlugin):
    """Runs lab hook objects (interventions, a tracker) inside an Avalanche
    strategy, at the moments their HookPlan (agents/hooks.py) lists."""

    def __init__(self, *hook_objects: RunHooks):
        super().__init__()
        self.objects = list(hook_objects)
        self.plan = plan_hooks(self.objects)
        self.agent: Agent | None = None
        self.capture: _FeatureCapture | None = None
        self.records: list[dict] = []

    def _agent(self, strategy: Any) -> Agent:
        if self.agent is None or self.agent.model is not strategy.model:
            self.agent = Agent(strategy.model, strategy.optimizer)
            self.capture = _FeatureCapture(strategy.model)
            for hook in self.plan.on_run_start:
                hook(self.agent)
        self.agent.optimizer = strategy.optimizer
        return self.agent

    def _call(self, hooks: tuple, *args: Any) -> None:
        for hook in hooks:
            rec = hook(*args)
            if rec:
                self.records.append(rec)

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._call(self.plan.on_task_start, self._agent(strategy), experience_task(strategy.experience))

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if strategy.is_training and self.plan.before_step:
            self._call(self.plan.before_step, self._agent(strategy), strategy.mb_x, strategy.mb_y)

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        for penalty in self.plan.penalty:
            strategy.loss = strategy.loss + penalty(strategy.model)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if not self.plan.after_step:
            return
        agent = self._agent(strategy)
        logits = strategy.mb_output.detach()
        y = strategy.mb_y
        info = StepInfo(strategy.mb_x, y, logits, strategy.loss.detach(), (logits.argmax(1) == y).sum(),
                        list(self.capture.outputs))
        self._call(self.plan.after_step, agent, info)

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._call(self.plan.on_task_end, self._agent(strategy), experience_task(strategy.experience))


def intervention_plugin(name: str, **params: Any) -> LabPlugin:
    """An Avalanche plugin running the lab intervention ``name`` (e.g. ``cbp``)."""
    return LabPlugin(interventions.get(name)(**params))


class TrackerMetric(PluginMetric[dict]):
    """The lab's metric tracker as an Avalanche plugin metric: dead and dormant
    units, sparsity, ranks, weights (at each experience start), gradient norm,
    plasticity probe. Values appear under the lab's names in the evaluator
    (``evaluator.get_all_metrics()``) and in Avalanche's loggers."""

    def __init__(self, **tracker_params: Any):
        super().__init__()
        self.plugin = LabPlugin(Tracker(**tracker_params))

    def reset(self) -> None:
        pass

    def result(self) -> dict:
        return self.plugin.records[-1] if self.plugin.records else {}

    def _emit(self, strategy: Any, hook, *args: Any) -> list[MetricValue]:
        before = len(self.plugin.records)
        hook(strategy, *args)
        step = strategy.clock.train_iterations
        return [MetricValue(self, name, float(value), step)
                for rec in self.plugin.records[before:] for name, value in rec.items()]

    def before_training_exp(self, strategy: Any) -> list[MetricValue]:
        return self._emit(strategy, self.plugin.before_training_exp)

    def after_training_iteration(self, strategy: Any) -> list[MetricValue]:
        return self._emit(strategy, self.plugin.after_training_iteration)

    def after_training_exp(self, strategy: Any) -> list[MetricValue]:
        return self._emit(strategy, self.plugin.after_training_exp)

    def __str__(self) -> str:
        return "LabTracker"


def tracker_metric(**params: Any) -> TrackerMetric:
    """Lab metrics for an Avalanche ``EvaluationPlugin`` (see ``TrackerMetric``)."""
    return TrackerMetric(**params)


class OnlineAccuracy(SupervisedPlugin):
    """Pre-update accuracy and loss of every training minibatch (kept on the device)."""

    def reset(self, device: torch.device) -> None:
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)
        self.seen = 0

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        y = strategy.mb_y
        self.correct += (strategy.mb_output.detach().argmax(1) == y).sum()
        self.seen += int(y.shape[0])

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.loss += strategy.loss.detach().sum() * strategy.mb_y.shape[0]


class StepHooks(SupervisedPlugin):
    """The runner's per-step hooks and penalties inside the strategy."""

    def __init__(self, agent: Agent, after_step: list[Callable]):
        super().__init__()
        self.agent, self.step_hooks = agent, after_step
        self.capture = _FeatureCapture(agent.model)

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        for penalty in self.agent.penalties:
            strategy.loss = strategy.loss + penalty(strategy.model)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if not self.step_hooks:
            return
        logits = strategy.mb_output.detach()
        info = StepInfo(strategy.mb_x, strategy.mb_y, logits, strategy.loss.detach(),
                        (logits.argmax(1) == strategy.mb_y).sum(), list(self.capture.outputs))
        for hook in self.step_hooks:
            hook(self.agent, info)
