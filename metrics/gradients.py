"""Gradient norm and per-sample gradient interference."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from plasticity_lab.metrics.catalog import metrics


@metrics.register("grad/norm", when="step", every="every_steps", inputs={"grads": "gradients"},
                  title="gradient norm", unit="L2 norm", definition="global gradient norm of the step's update")
def grad_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global ||grad_theta L||_2 over every parameter gradient (a 0-d tensor on their device)."""
    return torch.sqrt(sum(g.detach().square().sum() for g in grads if g is not None))


def per_sample_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, P) matrix of per-example parameter gradients (torch.func.vmap over grad)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([t.flatten(1) for t in g.values()], dim=1)


def gradient_interference(G: torch.Tensor) -> float:
    """Mean off-diagonal cosine similarity C_ij = <g_i, g_j> / (||g_i|| ||g_j||)
    of per-sample gradients (rows of G); negative = updates on one example
    hurt the others (Lan & Mahmood's interference analysis)."""
    Gn = torch.nn.functional.normalize(G.double(), dim=1)
    C = Gn @ Gn.t()
    n = C.shape[0]
    return float((C.sum() - C.diagonal().sum()) / max(n * (n - 1), 1))
