"""Mean |W| per unit, incoming and outgoing: what continual backprop's
utility reads every step (Dohare et al. 2024, Methods: a unit's
contribution is scaled by its mean outgoing and divided by its mean incoming
weight magnitude), available to any intervention that resets units by them.
"""
from __future__ import annotations

import torch
from torch import nn

from plasticity_lab.agents.networks import UnitLayer


class WeightMagnitudes:
    """Mean |W| per unit, in and out. A fused step that updated the weights
    hands over the row and column sums of the new |W| it computed in that pass
    (``StepInfo.weight_abs_sums``, agents/abs_sums.py); otherwise |W| is
    computed here at most once per matrix per step, into a buffer kept across
    steps (row sums contiguous, column sums a BLAS vector-matrix product). A
    hidden layer's incoming matrix is the previous layer's outgoing one, so
    each matrix is read once per step however many utilities use it."""

    def __init__(self) -> None:
        self._buffers: dict[int, torch.Tensor] = {}
        self._fresh: set[int] = set()
        self._given: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def new_step(self, sums: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 layers: list[nn.Module] | None = None) -> None:
        """Forget last step's |W|; ``sums`` (``StepInfo.weight_abs_sums``, one
        (rows, cols) pair per weight layer of ``layers``) are this step's, if given."""
        self._fresh.clear()
        self._given = {} if sums is None else {id(layer.weight): s for layer, s in zip(layers, sums)}

    @torch.no_grad()
    def absolute(self, w: torch.Tensor) -> torch.Tensor:
        """|w| (conv kernels flattened per output channel), computed once per step into a kept buffer."""
        w2 = w.flatten(1) if w.dim() > 2 else w
        key = id(w)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != w2.shape:
            buf = self._buffers[key] = torch.empty_like(w2)
        if key not in self._fresh:
            torch.abs(w2, out=buf)
            self._fresh.add(key)
        return buf

    @torch.no_grad()
    def incoming(self, layer: UnitLayer) -> torch.Tensor:
        """mean_i |W_cur[j, i]| per unit j (a contiguous row sum: ~4x faster than the mat-vec here)."""
        w = layer.incoming.weight
        given = self._given.get(id(w))
        if given is not None:
            return given[0] / w.shape[1]
        a = self.absolute(w)
        return a.sum(1).div_(a.shape[1])

    @torch.no_grad()
    def outgoing(self, layer: UnitLayer) -> torch.Tensor:
        """mean_k |W_next[k, j]| per unit j (over all columns the unit feeds)."""
        w = layer.outgoing.weight
        units = layer.incoming.weight.shape[0]
        given = self._given.get(id(w))
        if given is not None:
            per_column = given[1] / w.shape[0]
        else:
            a = self.absolute(w)
            per_column = a.new_full((a.shape[0],), 1.0 / a.shape[0]) @ a
        if w.dim() > 2:  # conv: (in-channel, kernel position) columns -> mean over the kernel positions too
            per_column = per_column.view(w.shape[1], -1).mean(1)
        if per_column.shape[0] != units:  # several columns per unit: CReLU's blocks or a conv's positions
            per_column = per_column.view(units, -1).mean(1) if layer.consecutive else per_column.view(-1, units).mean(0)
        return per_column
