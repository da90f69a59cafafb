"""Dead and dormant units of a hidden layer.

``A`` is the post-activation output of one layer on a probe batch, shape
(N, H) for dense layers or (N, C, H, W) for conv layers (a channel is a unit).
"""
from __future__ import annotations

import torch

from plasticity_lab.metrics.catalog import metrics


def _per_unit_abs_mean(A: torch.Tensor) -> torch.Tensor:
    """mean over inputs (and positions) of |A| for each unit."""
    return A.abs().transpose(0, 1).flatten(1).mean(1)


@metrics.register("units/dead_frac", when="task_start", per="layer", every="task_every", inputs={"A": "features"},
                  title="dead units", unit="fraction of units", plot=True, panel="Representation",
                  column="dead units (final)",
                  definition="fraction of units exactly 0 on every probe input (Dohare et al. 2024)")
def dead_fraction(A: torch.Tensor) -> float:
    """Fraction of units whose output is exactly 0 on every probe input:
    unit j dead iff sum_n |A_nj| == 0 (Dohare et al. 2024, measured on 2,000
    examples of the new task at each task switch)."""
    return float((_per_unit_abs_mean(A) == 0).float().mean())


def dormant_scores(A: torch.Tensor) -> torch.Tensor:
    """ReDo's tau-dormant score s_j = E|h_j| / ((1/H) sum_k E|h_k|)
    (Sokar et al. 2023; +1e-9 in the denominator as their code)."""
    m = _per_unit_abs_mean(A)
    return m / (m.mean() + 1e-9)


@metrics.register("units/dormant_frac", when="task_start", per="layer", every="task_every",
                  inputs={"A": "features", "tau": "dormant_tau"}, title="dormant units", unit="fraction of units",
                  definition="ReDo's tau-dormant fraction, s_j <= tau (Sokar et al. 2023; tau = `metrics.dormant_tau`, 0.1)")
def dormant_fraction(A: torch.Tensor, tau: float = 0.1) -> float:
    """Fraction of tau-dormant units: s_j <= tau (ReDo; tau=0 counts dead units)."""
    return float((dormant_scores(A) <= tau).float().mean())


def inactive_fraction(A: torch.Tensor, threshold: float = 0.01) -> float:
    """Fraction of units active (non-zero) on fewer than ``threshold`` of the
    inputs and positions: Dohare et al.'s dormant channels in conv nets
    (``compute_dormant_units_proportion``, threshold 0.01)."""
    active = (A != 0).float().transpose(0, 1).flatten(1).mean(1)
    return float((active < threshold).float().mean())
