"""Weight and feature magnitudes."""
from __future__ import annotations

import torch


def mean_abs(W: torch.Tensor) -> float:
    """Average weight magnitude mean |W| of one layer (Dohare et al. log sum |W|; mean is width-free)."""
    return float(W.detach().abs().mean())


def feature_norm(A: torch.Tensor) -> float:
    """mean_n ||A_n||_2: average L2 norm of a layer's output per input."""
    return float(A.detach().flatten(1).norm(dim=1).mean())
