"""The batch-1 SGD update of a weight matrix fused with the row and column
sums of its new absolute values (what continual backprop's utility reads
every step: a unit's mean incoming |W| is its row's, its mean outgoing |W|
is its column's in the next layer).

    W <- f W - lr d h^T;   rows_k = sum_j |W_kj|;   cols_j = sum_k |W_kj|

and, in the same pass, the backward product g = d^T W with the old W (the
next layer down's delta before its activation derivative), so the step reads
each matrix once for backward, update and magnitudes together.

In PyTorch ops this is an ``addr_`` (read and write W), ``abs`` (read W,
write a buffer), a row sum and a column sum (two more reads): on the paper's
784-2000-2000-2000-10 net about 9 ms per step on top of a 9 ms backprop step.
One pass that updates each entry and adds its new magnitude to both sums
while the row is in cache costs about 1 ms. No library fuses an SGD update
with reductions of its result (torch.compile's CPU code for it was about as
slow as the separate ops here), so the kernel is written here in C++ and
compiled with the lab's other CPU code (agents/kernels.py). Where it
cannot be built, or off the CPU, the same sums come from the PyTorch ops
above. Both agree to float rounding (tested).
"""
from __future__ import annotations

import torch

from plasticity_lab.agents.kernels import kernel


def update_with_abs_sums(w: torch.Tensor, d: torch.Tensor, h: torch.Tensor, lr: float, factor: float,
                         rows: torch.Tensor, cols: torch.Tensor, back: torch.Tensor | None = None) -> None:
    """``w <- factor w - lr outer(d, h)`` in place; ``rows``/``cols`` receive the
    row and column sums of the new ``|w|``, and ``back`` (if given) the
    backward product ``d @ w`` with the old ``w``. ``w`` is one matrix (the
    vectors 1-d) or N stacked seeds' (N, out, in) (the vectors (N, len)): the
    kernel then does each seed's pass in one call, the same arithmetic as N calls."""
    k = kernel() if w.device.type == "cpu" and w.is_contiguous() else None
    if k is not None:
        k.update_abs_sums(w, d.contiguous(), h.contiguous(), float(lr), float(factor), rows, cols,
                          back if back is not None else w.new_empty(0))
        return
    if w.dim() == 3:
        if back is not None:
            torch.bmm(d.unsqueeze(1), w, out=back.unsqueeze(1))
        w.baddbmm_(d.unsqueeze(2), h.unsqueeze(1), beta=factor, alpha=-lr)
    else:
        if back is not None:
            torch.mv(w.t(), d.reshape(-1), out=back)  # d @ w; d may arrive as (1, out)
        w.addr_(d, h, beta=factor, alpha=-lr)
    sums_of(w, rows, cols)


def sums_of(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Row and column sums of ``|w|`` into ``rows``/``cols`` with PyTorch ops
    (``w`` (out, in), or (N, out, in) for stacked seeds)."""
    a = w.abs()
    torch.sum(a, -1, out=rows)
    torch.sum(a, -2, out=cols)
