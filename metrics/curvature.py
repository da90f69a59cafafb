"""Curvature: the largest Hessian eigenvalue of the loss by power iteration on
Hessian-vector products (Lyle et al. 2023, arXiv:2303.01486)."""
from __future__ import annotations

import torch
from torch import nn

from plasticity_lab.metrics.catalog import metrics


@metrics.register("curvature/hessian_top", when="task_end", every="hessian_every",
                  inputs={"model": "model", "loss_fn": "loss_fn", "x": "x", "y": "y"}, title="largest Hessian eigenvalue",
                  unit="curvature", definition="largest Hessian eigenvalue of the loss on the task's first 256 examples "
                                               "(power iteration on Hessian-vector products, 10 iterations)")
def hessian_top_eigenvalue(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, iterations: int = 10,
                           seed: int = 0) -> float:
    """lambda_max of d^2 L / d theta^2 at the current parameters (power
    iteration, v <- Hv / ||Hv||, Hv by double backward; returns v^T H v)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g).to(p.device) for p in params]
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / norm for t in v]
    eig = 0.0
    for _ in range(iterations):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = torch.sqrt(sum((t * t).sum() for t in hv))
        if float(norm) == 0:
            return 0.0
        v = [t.detach() / norm for t in hv]
    return eig
