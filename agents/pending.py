"""Deferred SGD updates: the fused step's rank-B weight updates kept as a
low-rank correction and applied to the weights every few steps with one
matrix product.

A batch-1 SGD step changes W by the rank-1 matrix -lr d h^T. Applying it at
once reads and writes all of W (as much memory traffic as the forward and
backward passes together). Kept pending instead, with
W_eff = s (W - U V^T) (U's columns lr d / s, V's columns h, s the product of
the decay factors 1 - lr wd so far), the next steps use W_eff exactly:

    forward   h W_eff^T = s (h W^T - (h V) U^T)
    backward  d W_eff   = s (d W - (d U) V^T)

which costs O((in + out) x pending columns) per layer, not O(in x out). Once
``capacity`` columns are pending, ``flush`` applies them: W <- s (W - U V^T)
(one GEMM: a single read and write of W for ``capacity`` updates).
This is the same SGD arithmetic in another order, so it agrees with applying
each update at once to float rounding (tested). Nothing outside the step may
read the weights while updates are pending: the runner flushes at the end of
each task's training, the fused agent before it saves, loads or predicts, and
the fused path defers only when no intervention acts between steps
(lab/build.py).

Hand-written because no library keeps SGD updates as a low-rank correction;
the same idea (accumulate rank-1 terms, apply them as a GEMM) is how blocked
LAPACK routines cut memory traffic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


MIN_WEIGHTS = 4_000_000
MIN_STEPS_PER_FLUSH = 4


def pays_off(weights: int, batch_size: int, capacity: int) -> bool:
    """Whether deferring speeds a run up: only where a step is bound by memory
    traffic, i.e. the weights outgrow the CPU's caches, and only with several
    steps between flushes. Measured on the 2-core development CPU at batch 1
    (steps/s deferred / at once): 784-1000-1000-10 (1.8M weights) 0.85x,
    784-2000-2000-2000-10 (9.6M) 1.4x; at batch 16 with 16 columns it flushes
    every step and halves the speed."""
    return weights >= MIN_WEIGHTS and batch_size * MIN_STEPS_PER_FLUSH <= capacity


@dataclass
class PendingUpdates:
    """The pending low-rank corrections of N stacked seeds' weight matrices.

    ``us[l]``: (N, out_l, capacity), ``vs[l]``: (N, in_l, capacity); the first
    ``count`` columns are pending, the rest zero; ``scale`` is s (a float:
    all seeds share lr and decay)."""

    capacity: int
    us: list[torch.Tensor] = field(default_factory=list)
    vs: list[torch.Tensor] = field(default_factory=list)
    count: int = 0
    scale: float = 1.0

    @classmethod
    def for_weights(cls, weights: list[torch.Tensor], capacity: int) -> "PendingUpdates":
        """Empty buffers for (N, out, in) stacked weights."""
        us = [w.new_zeros(w.shape[0], w.shape[1], capacity) for w in weights]
        vs = [w.new_zeros(w.shape[0], w.shape[2], capacity) for w in weights]
        return cls(capacity, us, vs)

    def fits(self, columns: int) -> bool:
        """Whether a step of ``columns`` examples can be deferred at all."""
        return columns <= self.capacity

    def forward(self, layer: int, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h W_eff^T from ``z`` = h W^T (in place; (N, B, out)). All ``capacity``
        columns take part (the unused ones are zero): fixed shapes keep the
        products' kernels, and so each seed's bits, the same for 1 or N seeds."""
        z.baddbmm_(torch.bmm(h, self.vs[layer]), self.us[layer].transpose(1, 2), alpha=-1.0)
        if self.scale != 1.0:
            z.mul_(self.scale)
        return z

    def backward(self, layer: int, d: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """d W_eff from ``g`` = d W (in place; (N, B, in))."""
        g.baddbmm_(torch.bmm(d, self.us[layer]), self.vs[layer].transpose(1, 2), alpha=-1.0)
        if self.scale != 1.0:
            g.mul_(self.scale)
        return g

    def add(self, weights: list[torch.Tensor], deltas: list[torch.Tensor], inputs: list[torch.Tensor],
            lr: float, factor: float) -> None:
        """Defer W_eff <- factor W_eff - lr d^T h for every layer (flushing first when full)."""
        b = deltas[0].shape[1]
        if self.count + b > self.capacity:
            self.flush(weights)
        self.scale *= factor
        c = self.count
        for u, v, d, h in zip(self.us, self.vs, deltas, inputs):
            u[:, :, c:c + b].copy_(d.transpose(1, 2)).mul_(lr / self.scale)
            v[:, :, c:c + b].copy_(h.flatten(2).transpose(1, 2))
        self.count = c + b

    def flush(self, weights: list[torch.Tensor]) -> None:
        """Apply every pending update: W <- s (W - U V^T)."""
        c, s = self.count, self.scale
        for w, u, v in zip(weights, self.us, self.vs):
            if c:
                for i in range(w.shape[0]):  # per seed: a batched GEMM of small matrices rounds differently
                    w[i].addmm_(u[i], v[i].t(), beta=s, alpha=-s)
                u.zero_()
                v.zero_()
            elif s != 1.0:
                w.mul_(s)
        self.count, self.scale = 0, 1.0
