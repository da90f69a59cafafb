"""UPGD, utility-based perturbed gradient descent (Elsayed & Mahmood, ICLR 2024,
arXiv:2404.00781; code: mohmdelsayed/upgd, core/optim/weight_upgd/first_order.py),
in ``torch.optim``'s interface.

First-order global, protecting variant (their ``FirstOrderGlobalUPGD``):

    u_t = -g_t * w_t;   U_t = beta U_{t-1} + (1 - beta) u_t;   Û_t = U_t / (1 - beta^t)
    eta = max over all parameters of U_t (not bias-corrected, as their code)
    w  <- (1 - lr wd) w - lr (g + sigma eps) (1 - sigmoid(Û_t / eta)),  eps ~ N(0, 1)

Step size -lr as their experiment code (their README snippet uses -2 lr).
When every utility is <= 0 the global max is replaced by a tiny positive
number so the sigmoid is not flipped (a division by a non-positive maximum would
invert the gate).
"""
from __future__ import annotations

import torch


class UPGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-5, weight_decay: float = 1e-3, beta_utility: float = 0.999,
                 sigma: float = 1e-3):
        if not 0 <= beta_utility < 1:
            raise ValueError(f"beta_utility must be in [0, 1), got {beta_utility}")
        if sigma < 0 or weight_decay < 0:
            raise ValueError("sigma and weight_decay must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        global_max = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["avg_utility"] = torch.zeros_like(p)
                state["step"] += 1
                state["avg_utility"].mul_(group["beta_utility"]).add_(-p.grad * p, alpha=1 - group["beta_utility"])
                m = state["avg_utility"].max()
                global_max = m if global_max is None else torch.maximum(global_max, m)
        if global_max is None:
            return loss
        eta = global_max.clamp(min=1e-12)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                corrected = state["avg_utility"] / (1 - group["beta_utility"] ** state["step"])
                gate = 1 - torch.sigmoid(corrected / eta)
                noise = torch.randn_like(p) * group["sigma"]
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_((p.grad + noise) * gate, alpha=-group["lr"])
        return loss
