"""Linear layers whose weight gradient comes out in the weight's own layout
under ``torch.func.vmap``.

For y = x W^T + b, dL/dW = g^T x (g = dL/dy). A single ``F.linear`` computes
it that way, contiguous like W. Under vmap, torch (2.14) runs the layer as
``x @ W.mT`` and returns the gradient of ``W.mT`` transposed back: a view with
W's shape and transposed strides. The stacked optimizer must then copy it into
W's layout first (torch's fused CPU optimizers read a transposed gradient as if
it were contiguous), and a transposing copy of N seeds' 784x1000 gradients is
slow: 10 of the 30 ms of an 8-seed Hard ASH step (batch 16) on the 2-core
development CPU. :class:`WeightLayoutLinear` computes the gradient as g^T x
per seed instead — the same sum, contiguous. Hand-written because torch has no
switch for the layout of a batched gradient.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _Linear(torch.autograd.Function):
    """``F.linear`` with dL/dW = g^T x (flattened over leading dimensions), dL/dx = g W, dL/db = sum g."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        rows = g.reshape(-1, g.shape[-1])
        return (g @ w if need_x else None,
                rows.mT @ x.reshape(-1, x.shape[-1]) if need_w else None,
                rows.sum(0) if need_b else None)


class WeightLayoutLinear(TorchFunctionMode):
    """Inside this mode every ``F.linear`` (so every ``nn.Linear``) returns its
    weight gradient in the weight's layout; all other functions run as they are."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return _Linear.apply(*_linear_args(*args, **kwargs))
        return func(*args, **kwargs)


def _linear_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``F.linear``'s arguments, however they were passed."""
    return input, weight, bias


__all__ = ["WeightLayoutLinear"]
