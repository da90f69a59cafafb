"""Sparsity of activations, of activation derivatives and of parameter gradients.

Thresholds: eps = 0 counts exact zeros (the ReLU family); smooth or bounded
activations (elephant, tanh, sigmoid) never reach exact 0, so pass a small
eps (the lab's trackers use 1e-3 for them, stated in the metric name's docs).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def activation_sparsity(A: torch.Tensor, eps: float = 0.0) -> float:
    """mean_{n,j} 1[|A_nj| <= eps]: fraction of (input, unit) outputs that are (near) zero."""
    return float((A.abs() <= eps).float().mean())


def derivative_sparsity(Z: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor], eps: float = 0.0) -> float:
    """mean 1[|phi'(Z_nj)| <= eps] over pre-activations Z: the gradient
    sparsity elephant is designed to have (Lan & Mahmood 2023). phi' comes from
    autograd, so it works for any activation, learnable ones included."""
    z = Z.detach().clone().requires_grad_(True)
    (d,) = torch.autograd.grad(activation(z).sum(), z)
    return float((d.abs() <= eps).float().mean())


def parameter_gradient_sparsity(grads: Iterable[torch.Tensor], eps: float = 0.0) -> float:
    """Fraction of parameter-gradient entries with |dL/dw| <= eps, over all tensors."""
    grads = [g for g in grads if g is not None]
    total = sum(g.numel() for g in grads)
    return float(sum((g.abs() <= eps).sum() for g in grads)) / max(total, 1)
