"""The fused online path: forward, backward and the SGD update of an MLP in
place, without autograd.

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
import torch.nn.functional as F

from agents.agent import Agent, StepInfo

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

    def __init__(self, agent: Agent, extra_decay: float = 0.0):
        super().__init__(agent.model, agent.optimizer, agent.loss_name)
        self._mask = agent._mask
        self.extra_decay = extra_decay
        self.act_params = [getattr(a, "params", {}) for a in self.model.acts]
        self.derivative = DERIVATIVES[self.model.activation]

    @torch.no_grad()
    def observe(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        model = self.model
        group = self.optimizer.param_groups[0]
        lr, decay = group["lr"], group["weight_decay"] + self.extra_decay
        h = x.flatten(1)
        ins, pre, feats = [h], [], []
        for lin, act in zip(model.layers[:-1], model.acts):
            z = F.linear(h, lin.weight, lin.bias)
            h = act(z)
            pre.append(z)
            feats.append(h)
            ins.append(h)
        logits = F.linear(h, model.layers[-1].weight, model.layers[-1].bias)
        if self._mask is not None:
            logits = logits + self._mask
        if self.loss_name == "mse":
            loss = F.mse_loss(logits.squeeze(-1), y)
            delta = (logits - y.view_as(logits)).mul_(2.0 / len(y))
        else:
            loss = F.cross_entropy(logits, y)
            delta = torch.softmax(logits, dim=1)
            delta[torch.arange(len(y), device=y.device), y] -= 1.0
            delta /= len(y)
        deltas = [delta]
        for i in range(len(pre) - 1, -1, -1):
            d = deltas[-1] @ model.layers[i + 1].weight
            deltas.append(d * self.derivative(pre[i], feats[i], self.act_params[i]))
        deltas.reverse()
        for lin, d, h_in in zip(model.layers, deltas, ins):
            if decay:
                lin.weight.mul_(1 - lr * decay)
            lin.weight.addmm_(d.t(), h_in, alpha=-lr)
            if lin.bias is not None:
                if decay:
                    lin.bias.mul_(1 - lr * decay)
                lin.bias.add_(d.sum(0), alpha=-lr)
        correct = (logits.argmax(1) == y).sum() if self.loss_name == "cross_entropy" else torch.zeros((), dtype=torch.long, device=y.device)

        def grads() -> list[torch.Tensor]:
            """dL/dW = d^T h_in and dL/db = sum d per layer (the data loss; decay excluded)."""
            out = []
            for lin, d, h_in in zip(model.layers, deltas, ins):
                out.append(d.t() @ h_in)
                if lin.bias is not None:
                    out.append(d.sum(0))
            return out

        return StepInfo(x, y, logits, loss, correct, feats, grads)
