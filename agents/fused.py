"""The fused online SGD path: forward, backward and the SGD update of an MLP
in place, without autograd.

For a batch (often of one), with h_0 = x, z_l = h_{l-1} W_l^T + b_l and
h_l = phi(z_l), cross-entropy gives dL/dlogits = (softmax - onehot) / B (mean
squared error on one output: 2 (out - y) / B); the deltas
d_l = (d_{l+1} W_{l+1}) * phi'(z_l) are all computed before any weight
changes, then each layer gets one rank-B update
W_l <- (1 - lr wd) W_l - lr d_l^T h_{l-1}: no gradient tensors are
materialised and nothing per step allocates in proportion to the model. It is
exactly SGD (no momentum) on the same loss, so the autograd path and this one
agree to float rounding (tested).

How the pieces fit (each module's docstring gives its arithmetic)::

    FusedAgent (here)             an Agent whose observe() is the fused step; what a run may
     |                            combine is checked in its constructor
     +-- StackedStep (stacked.py) the step of N stacked copies of the MLP (N = 1 alone; the
          |                       seeds of a vectorised group share one): bmm / baddbmm_ for
          |                       all seeds, addr_ per seed for batch-1 updates of large matrices
          +-- PendingUpdates      deferred_updates > 0: updates kept as a low-rank correction and
          |   (pending.py)        applied every few steps -- only where nothing reads the weights
          |                       between steps
          +-- |W| sums            weight_abs_sums: the |W| row/column sums continual backprop reads,
              (abs_sums.py)       computed in the update's own pass -- so never with pending updates
          +-- CompiledStep        on the CPU at batch 1: the whole step of every seed as one
          |   (compiled_step.py)  compiled call (agents/kernels.py)
    GraphedStep (cuda_graph.py)   wraps a StackedStep on a GPU and replays it as a CUDA graph;
                                  a deferring step is never captured (choose one)

Used when :func:`fused_reason` finds nothing against it: an MLP without
LayerNorm whose activation registers its derivative (agents/activations.py),
``torch.optim.SGD`` without momentum/nesterov/maximize, cross-entropy or mean
squared error, and no loss penalty other than SGD weight decay
(``as_weight_decay``, e.g. ``l2``, folded into the decay).
"""
from __future__ import annotations

from typing import Any

import torch

from plasticity_lab.agents import kernels
from plasticity_lab.agents.activations import FunctionActivation, activation_facts
from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.cuda_graph import graphed
from plasticity_lab.agents.hooks import HookPlan
from plasticity_lab.agents.networks import MLP
from plasticity_lab.agents.pending import pays_off
from plasticity_lab.agents.stacked import StackedStep


def fused_reason(agent: Agent, plan: HookPlan | None = None) -> str | None:
    """Why the fused path cannot run this agent with these hooks (None when it can)."""
    model, opt = agent.model, agent.optimizer
    if type(agent) is not Agent and not isinstance(agent, FusedAgent):
        return f"agent {type(agent).__name__} (fused: the lab's own learner)"
    if not isinstance(model, MLP):
        return f"the network is {type(model).__name__}, not an MLP"
    if activation_facts(model.activation).derivative is None:
        return f"activation {model.activation!r} registers no derivative"
    if not all(isinstance(act, FunctionActivation) for act in model.acts):
        return f"activation {model.activation!r} is a module with its own parameters"
    if any(isinstance(n, torch.nn.LayerNorm) for n in model.norms):
        return "agent.layer_norm=true"
    if type(opt) is not torch.optim.SGD:
        return f"optimizer {type(opt).__name__} (fused: plain SGD)"
    g = opt.param_groups[0]
    if len(opt.param_groups) > 1 or g["momentum"] or g["nesterov"] or g["maximize"]:
        return "SGD with momentum, nesterov or maximize"
    if agent.loss_name not in ("cross_entropy", "mse"):
        return f"loss {agent.loss_name}"
    if plan is not None and plan.other_penalties:
        return f"loss penalties of {', '.join(plan.other_penalties)}"
    return None


class FusedAgent(Agent):
    """An Agent whose ``observe`` is the fused SGD step (see the module docstring)."""

    def __init__(self, agent: Agent, extra_decay: float = 0.0, deferred_updates: int = 0,
                 weight_abs_sums: bool = False, cuda_graphs: bool = False, compiled_step: bool = True):
        """``extra_decay``: SGD weight decay on top of the optimizer's (penalties
        that are weight decay). ``deferred_updates``: how many examples' updates
        may stay pending (agents/pending.py; 0 applies each at once): only for
        runs where nothing reads the weights between steps. ``weight_abs_sums``:
        report the row and column sums of each updated |W| in ``StepInfo``
        (agents/abs_sums.py), for continual backprop. ``cuda_graphs``: replay
        the step as a CUDA graph when the weights are on a GPU. ``compiled_step``:
        run batch-1 steps on the CPU as one compiled call where they can
        (agents/compiled_step.py).
        Raises ValueError for an agent the path cannot run or a combination it
        cannot honour."""
        reason = fused_reason(agent)
        if reason is not None:
            raise ValueError(f"the fused SGD path cannot run this agent: {reason}")
        if deferred_updates < 0:
            raise ValueError(f"deferred_updates must be >= 0, got {deferred_updates}")
        if deferred_updates and weight_abs_sums:
            raise ValueError("weight_abs_sums needs each step's updated |W|, which deferred updates do not "
                             "compute: use deferred_updates=0 with it")
        on_gpu = agent.model.layers[0].weight.device.type == "cuda"
        if deferred_updates and cuda_graphs and on_gpu:
            raise ValueError("a deferring step is never captured as a CUDA graph: choose deferred_updates or cuda_graphs")
        super().__init__(agent.model, agent.optimizer, agent.loss_name)
        self._mask = agent._mask
        self.extra_decay = extra_decay
        self.deferred_updates = deferred_updates
        self.weight_abs_sums = weight_abs_sums
        if (weight_abs_sums or compiled_step) and not on_gpu:
            kernels.kernel()  # built (once per machine) now, before training, not at the first step
        self.cuda_graphs = cuda_graphs
        self.compiled_step = compiled_step
        self._stepper: Any = None
        self._stack: StackedStep | None = None  # built at the first step, or by the vectorised seeds' group
        self.restored_pending: dict | None = None  # a checkpoint's deferred updates, for the next stack built

    @classmethod
    def for_plan(cls, agent: Agent, plan: HookPlan, batch_size: int, deferred_updates: int,
                 cuda_graphs: bool, compiled_step: bool = True) -> "FusedAgent":
        """The fused agent for a run with these hooks: their weight decay folded
        in, |W| sums when an intervention reads them, CUDA graphs on a GPU, the
        compiled step for batch-1 runs (built only for them), and
        updates deferred only where nothing reads the weights between steps and
        it pays off (agents/pending.py ``pays_off``)."""
        graphs = cuda_graphs and agent.model.layers[0].weight.device.type == "cuda"
        weights = sum(layer.weight.numel() for layer in agent.model.layers)
        defer = (not (plan.reads_weights_between_steps or plan.needs_weight_abs_sums or graphs)
                 and pays_off(weights, batch_size, deferred_updates))
        return cls(agent, extra_decay=plan.weight_decay, deferred_updates=deferred_updates if defer else 0,
                   weight_abs_sums=plan.needs_weight_abs_sums, cuda_graphs=graphs,
                   compiled_step=compiled_step and batch_size == 1)

    @property
    def compiled(self) -> bool:
        """Whether this agent's batch-1 CPU steps run as one compiled call
        (agents/compiled_step.py; known once its step is built)."""
        return self._stack is not None and self._stack.compiled is not None

    def flush_updates(self) -> None:
        if self._stack is not None:
            self._stack.flush()

    def predict(self, x: torch.Tensor, classes: tuple[int, ...] | None = None) -> torch.Tensor:
        self.flush_updates()
        return super().predict(x, classes)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.flush_updates()
        return super().features(x)

    def state_dict(self) -> dict:
        self.flush_updates()
        return super().state_dict()

    def checkpoint_state(self) -> dict:
        """The weights as stored and the updates still deferred (agents/pending.py),
        unapplied: a run resumed from them computes exactly what it would have."""
        state = super().state_dict()
        if self._stack is not None:
            state["pending"] = self._stack.pending_state(self._stack.agents.index(self))
        return state

    def load_state_dict(self, state: dict) -> None:
        """From ``state_dict`` or ``checkpoint_state`` (its deferred updates reach the next stack built)."""
        self.flush_updates()
        super().load_state_dict(state)
        self.restored_pending = state.get("pending")

    def stepper(self) -> Any:
        """This agent's step as a stack of one (graphed on a GPU), built once."""
        if self._stepper is None:
            self._stepper = graphed(StackedStep([self]), self.cuda_graphs)
        return self._stepper

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        """The fused step as a stack of one seed (agents/stacked.py), so a run
        alone and the same seed among vectorised seeds do the same arithmetic."""
        stepper = self.stepper()
        xs, ys = x[None], y[None]
        return stepper.info(0, xs, ys, *stepper.step(xs, ys))
