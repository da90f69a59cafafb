"""Accuracy-matrix metrics of continual learning.

``R[i][j]`` is the test accuracy on task j after training task i (0-based
here), ``None`` where it was not evaluated. Each function uses only the
evaluated entries it needs and returns ``None`` when there are none.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

Matrix = Sequence[Sequence[Optional[float]]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def avg_accuracy(R: Matrix) -> float | None:
    """ACC = (1/T) Σ_j R[T, j] over the tasks evaluated after the last one
    (Lopez-Paz & Ranzato 2017, GEM, arXiv:1706.08840)."""
    if not R:
        return None
    return _mean([v for v in R[-1] if v is not None])


def bwt(R: Matrix) -> float | None:
    """Backward transfer BWT = (1/(T-1)) Σ_{j<T} (R[T, j] - R[j, j])
    (GEM; negative means forgetting)."""
    last = len(R) - 1
    return _mean([R[last][j] - R[j][j] for j in range(last) if R[last][j] is not None and R[j][j] is not None])


def forgetting(R: Matrix) -> float | None:
    """Average forgetting after the last task k (Chaudhry et al. 2018, RWalk,
    arXiv:1801.10112): f_j = max_{l<k} R[l, j] - R[k, j], averaged over j < k."""
    k = len(R) - 1
    out = []
    for j in range(k):
        earlier = [R[l][j] for l in range(j, k) if R[l][j] is not None]
        if earlier and R[k][j] is not None:
            out.append(max(earlier) - R[k][j])
    return _mean(out)


def fwt(R: Matrix, baseline: Sequence[Optional[float]]) -> float | None:
    """Forward transfer FWT = (1/(T-1)) Σ_{j≥2} (R[j-1, j] - b_j), with b_j the
    untrained model's accuracy on task j (GEM)."""
    return _mean([
        R[j - 1][j] - baseline[j] for j in range(1, len(R))
        if R[j - 1][j] is not None and baseline[j] is not None
    ])


def online_accuracy(correct: torch.Tensor, bin_size: int) -> list[float]:
    """Prequential accuracy: the per-example 0/1 flags of predictions made
    *before* each update, averaged over consecutive bins of ``bin_size``
    examples (Dohare et al. plot bins of one task, 60,000 examples; a last
    partial bin is averaged over what it holds)."""
    flags = correct.detach().float().flatten()
    return [float(flags[i:i + bin_size].mean()) for i in range(0, flags.numel(), bin_size)]
