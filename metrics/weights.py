"""Weight and feature magnitudes."""
from __future__ import annotations

import torch

from plasticity_lab.metrics.catalog import metrics


@metrics.register("weights/mean_abs", when="task_start", per="weight_layer", every="task_every", inputs={"W": "weight"},
                  title="mean weight magnitude |W|", unit="weight magnitude", plot=True, panel="Representation",
                  definition="mean |W| of the weight layer feeding the layer (`out`: the head)")
def mean_abs(W: torch.Tensor) -> float:
    """Average weight magnitude mean |W| of one layer (Dohare et al. log sum |W|; mean is width-free)."""
    return float(W.detach().abs().mean())


@metrics.register("features/norm", when="task_start", per="layer", every="task_every", inputs={"A": "features"},
                  title="feature norm", unit="L2 norm", definition="mean L2 norm of a layer's output per probe input")
def feature_norm(A: torch.Tensor) -> float:
    """mean_n ||A_n||_2: average L2 norm of a layer's output per input."""
    return float(A.detach().flatten(1).norm(dim=1).mean())
