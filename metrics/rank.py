"""Ranks of a representation matrix A (N inputs x H units), from its singular
values s_1 >= ... >= s_q. Compare methods on the same number of probe inputs:
every rank here is bounded by N. Each function takes the matrix, or its
singular values as ``s=`` when several ranks of one matrix are wanted (one SVD)."""
from __future__ import annotations

import torch

from plasticity_lab.metrics.catalog import metrics


def singular_values(A: torch.Tensor) -> torch.Tensor:
    """Singular values in float64 on the CPU (robust where a GPU SVD of a
    2000 x 2000 matrix may not converge, the pitfall Dohare et al. hit)."""
    return torch.linalg.svdvals(A.detach().flatten(1).double().cpu())


@metrics.register("rank/effective", when="task_start", per="layer", every="task_every", inputs={"s": "singular_values"},
                  title="effective rank", unit="rank", plot=True, panel="Representation", column="effective rank (final)",
                  definition="Roy & Vetterli effective rank exp(-sum p_k log p_k), p = L1-normalised singular values")
def effective_rank(A: torch.Tensor | None = None, s: torch.Tensor | None = None) -> float:
    """exp(-sum_k p_k log p_k), p_k = s_k / sum_i s_i (L1-normalised singular
    values, 0 log 0 = 0) (Roy & Vetterli 2007, EUSIPCO; Dohare et al.)."""
    s = singular_values(A) if s is None else s
    if float(s.sum()) == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@metrics.register("rank/srank", when="task_start", per="layer", every="task_every", inputs={"s": "singular_values"},
                  title="srank", unit="rank", definition="srank, delta = 0.01 (Kumar et al. 2021)")
def srank(A: torch.Tensor | None = None, delta: float = 0.01, s: torch.Tensor | None = None) -> int:
    """min{k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta} (Kumar et al. 2021,
    arXiv:2010.14498; Dohare's "stable rank" in incremental CIFAR is this)."""
    s = singular_values(A) if s is None else s
    if float(s.sum()) == 0:
        return 0
    cum = torch.cumsum(s, 0) / s.sum()
    return int(torch.searchsorted(cum, torch.tensor(1 - delta, dtype=cum.dtype) - 1e-12).item()) + 1


def approximate_rank(A: torch.Tensor | None = None, prop: float = 0.99, s: torch.Tensor | None = None) -> int:
    """min{k : sum_{i<=k} s_i^2 / sum_i s_i^2 >= prop} (Yang et al. 2019; Dohare's approximate rank)."""
    s2 = (singular_values(A) if s is None else s).square()
    if float(s2.sum()) == 0:
        return 0
    cum = torch.cumsum(s2, 0) / s2.sum()
    return int(torch.searchsorted(cum, torch.tensor(prop, dtype=cum.dtype) - 1e-12).item()) + 1


@metrics.register("rank/stable", when="task_start", per="layer", every="task_every", inputs={"s": "singular_values"},
                  title="stable rank", unit="rank", definition="stable rank sum s_i^2 / s_1^2")
def stable_rank(A: torch.Tensor | None = None, s: torch.Tensor | None = None) -> float:
    """||A||_F^2 / ||A||_2^2 = sum_i s_i^2 / s_1^2 (the classical stable rank)."""
    s = singular_values(A) if s is None else s
    return 0.0 if float(s[0]) == 0 else float(s.square().sum() / s[0].square())


def numerical_rank(A: torch.Tensor) -> int:
    """#{s_i > s_1 * max(N, H) * eps} (numpy/LAPACK's default tolerance)."""
    s = singular_values(A)
    tol = s[0] * max(A.shape[0], A[0].numel()) * torch.finfo(torch.float64).eps if s.numel() else 0
    return int((s > tol).sum())
