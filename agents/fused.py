"""The fused online path: forward, backward and the SGD update of an MLP in
place, without autograd (the arithmetic is in agents/stacked.py, shared with
vectorised seeds).

For a batch (often of one), with h_0 = x, z_l = h_{l-1} W_l^T + b_l and
h_l = phi(z_l), cross-entropy gives dL/dlogits = (softmax - onehot) / B (mean
squared error on one output: 2 (out - y) / B); the
deltas d_l = (d_{l+1} W_{l+1}) * phi'(z_l) are all computed before any weight
changes, then each layer is updated with one fused rank-B update
W_l <- (1 - lr wd) W_l - lr d_l^T h_{l-1} (``addmm_``): no gradient tensors
are materialised and nothing per step scales in allocation with the model.
It is exactly SGD (no momentum) on the same loss, so the autograd path and
this one agree to float rounding (tested).

Used when the run allows it (``fused_reason`` says why not otherwise): an MLP
without LayerNorm, an activation with a known derivative (relu, leaky_relu,
tanh, sigmoid, linear), ``torch.optim.SGD`` without momentum/nesterov/maximize,
cross-entropy or mean squared error, and interventions whose only loss term is ``l2`` (folded into
the decay). ``train.fast=false`` forces the autograd path.
"""
from __future__ import annotations

from typing import Any

import torch

from plasticity_lab.agents import abs_sums
from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.cuda_graph import graphed
from plasticity_lab.agents.stacked import StackedStep

DERIVATIVES = {
    "relu": lambda z, h, p: (z > 0).to(z.dtype),
    "leaky_relu": lambda z, h, p: torch.where(z > 0, 1.0, p.get("negative_slope", 0.01)).to(z.dtype),
    "tanh": lambda z, h, p: 1 - h * h,
    "sigmoid": lambda z, h, p: h * (1 - h),
    "linear": lambda z, h, p: torch.ones_like(z),
}


def fused_reason(agent: Agent, penalty_owners: list[Any]) -> str | None:
    """Why the fused path cannot run this agent (None when it can)."""
    model, opt = agent.model, agent.optimizer
    if not hasattr(model, "layers") or not all(type(layer) is torch.nn.Linear for layer in model.layers):
        return "the network is not an MLP"
    if model.activation not in DERIVATIVES:
        return f"activation {model.activation!r} has no hand-written derivative (fused: {', '.join(DERIVATIVES)})"
    if any(isinstance(n, torch.nn.LayerNorm) for n in model.norms):
        return "agent.layer_norm=true"
    if type(opt) is not torch.optim.SGD:
        return f"optimizer {type(opt).__name__} (fused: plain SGD)"
    g = opt.param_groups[0]
    if len(opt.param_groups) > 1 or g["momentum"] or g["nesterov"] or g["maximize"]:
        return "SGD with momentum, nesterov or maximize"
    if agent.loss_name not in ("cross_entropy", "mse"):
        return f"loss {agent.loss_name}"
    others = [type(o).__name__ for o in penalty_owners if not hasattr(o, "decay")]
    if others:
        return f"loss penalties of {', '.join(others)}"
    return None


class FusedAgent(Agent):
    """An Agent whose ``observe`` is the fused SGD step (see module docstring)."""

    def __init__(self, agent: Agent, extra_decay: float = 0.0, deferred_updates: int = 0,
                 weight_abs_sums: bool = False, cuda_graphs: bool = False):
        """``deferred_updates``: how many examples' updates may stay pending
        (agents/pending.py; 0 applies each at once). Only for runs where nothing
        reads the weights between steps: lab/build.py decides.
        ``weight_abs_sums``: report the row and column sums of each updated |W|
        in ``StepInfo`` (agents/abs_sums.py), for continual backprop.
        ``cuda_graphs``: replay the step as a CUDA graph when the weights are
        on a GPU (agents/cuda_graph.py)."""
        super().__init__(agent.model, agent.optimizer, agent.loss_name)
        self._mask = agent._mask
        self.extra_decay = extra_decay
        self.deferred_updates = deferred_updates
        self.weight_abs_sums = weight_abs_sums
        if weight_abs_sums and self.model.layers[0].weight.device.type == "cpu":
            abs_sums.kernel()  # built (once per machine) now, before training, not at the first step
        self.cuda_graphs = cuda_graphs
        self._stepper: Any = None
        self.act_params = [getattr(a, "params", {}) for a in self.model.acts]
        self.derivative = DERIVATIVES[self.model.activation]
        self._stack: StackedStep | None = None  # built at the first step, or by the vectorised seeds' group

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

    def load_state_dict(self, state: dict) -> None:
        self.flush_updates()
        super().load_state_dict(state)

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        """The fused step as a stack of one seed (agents/stacked.py), so a run
        alone and the same seed among vectorised seeds do the same arithmetic
        (a seed in a vectorised group is stepped by the group, lab/seeds.py)."""
        if self._stepper is None:
            self._stepper = graphed(StackedStep([self]), self.cuda_graphs)
        xs, ys = x[None], y[None]
        return self._stepper.info(0, xs, ys, *self._stepper.step(xs, ys))
