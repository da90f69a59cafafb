"""Sparsity of activations, of activation derivatives and of parameter gradients.

Thresholds: eps = 0 counts exact zeros (the ReLU family); smooth or bounded
activations (elephant, tanh, sigmoid) never reach exact 0, so pass a small
eps (the lab's trackers use 1e-3 for them, stated in the metric name's docs).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from plasticity_lab.metrics.catalog import metrics


@metrics.register("sparsity/act", when="task_start", per="layer", every="task_every",
                  inputs={"A": "features", "eps": "sparsity_eps"}, title="activation sparsity", unit="fraction of outputs",
                  definition="fraction of outputs with |h| <= eps (eps = 0 for activations with exact zeros, "
                             "`metrics.sparsity_eps` = 1e-3 otherwise)")
def activation_sparsity(A: torch.Tensor, eps: float = 0.0) -> float:
    """mean_{n,j} 1[|A_nj| <= eps]: fraction of (input, unit) outputs that are (near) zero."""
    return float((A.abs() <= eps).float().mean())


@metrics.register("sparsity/grad", when="task_start", per="layer", every="task_every",
                  inputs={"Z": "preactivations", "activation": "activation", "eps": "sparsity_eps"},
                  title="activation-derivative sparsity", unit="fraction of derivatives",
                  definition="fraction of activation derivatives phi'(z) with |phi'(z)| <= eps (Lan & Mahmood 2023)")
def derivative_sparsity(Z: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor], eps: float = 0.0) -> float:
    """mean 1[|phi'(Z_nj)| <= eps] over pre-activations Z: the gradient
    sparsity elephant is designed to have (Lan & Mahmood 2023). phi' comes from
    autograd, so it works for any activation, learnable ones included."""
    with torch.enable_grad():
        z = Z.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(activation(z).sum(), z)
    return float((d.abs() <= eps).float().mean())


@metrics.register("sparsity/param_grad", when="step", every="every_steps", inputs={"grads": "gradients"},
                  title="parameter-gradient sparsity", unit="fraction of entries",
                  definition="fraction of zero entries of the step's parameter gradient")
def parameter_gradient_sparsity(grads: Iterable[torch.Tensor], eps: float = 0.0) -> torch.Tensor:
    """Fraction of parameter-gradient entries with |dL/dw| <= eps, over all
    tensors (a 0-d tensor on their device: read with the run's next records)."""
    grads = [g.detach() for g in grads if g is not None]
    total = sum(g.numel() for g in grads)
    return sum((g.abs() <= eps).sum() for g in grads) / max(total, 1)
