"""The fused batch-1 SGD step of N stacked MLPs as one compiled call
(agents/kernels.py ``online_step``): for each seed, with h_0 = x,

    z_l = W_l h_{l-1} + b_l,  h_l = phi(z_l)  (logits z_L, plus the head mask)
    cross-entropy: loss = logsumexp(z_L) - z_L[y],  d_L = softmax(z_L) - onehot(y)
    mean squared error (one output): loss = (z_L - y)^2,  d_L = 2 (z_L - y)
    from the top down: d_{l-1} = (W_l^T d_l) * phi'(z_{l-1}) with the old W_l, then
    b_l <- f b_l - lr d_l,  W_l <- f W_l - lr d_l h_{l-1}^T   (f = 1 - lr weight_decay)

-- the same SGD as agents/stacked.py's PyTorch ops, to float rounding (tested),
and, when continual backprop asks, the row and column sums of each new |W_l|
in the update's own pass (agents/abs_sums.py).

Why compiled: at batch 1 a step of a small net is ~40 PyTorch calls of a
few microseconds of arithmetic each, so the step costs its dispatch overhead
(Dohare et al.'s width-100 permuted-MNIST net: ~1.4 ms per step for 3 seeds,
most of it overhead). No library runs a whole small-MLP SGD step in one
call; torch.compile would, but compiles per shape at start-up, recompiles for
the ragged last batch, and its CPU code for the update-plus-|W|-sums part was
no faster than the separate ops. Each seed's pass is the same loop whether it
is alone or stacked, so a seed's numbers do not depend on the others.

It runs where :func:`compiled_reason` finds nothing against it: on the CPU,
batch 1, no deferred updates, float32/64, every hidden activation one with
built-in code (its registration declares ``kernel``: relu, tanh, sigmoid,
linear), cross-entropy, or the mean squared error of one output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity_lab.agents.activations import FunctionActivation, activation_facts
from plasticity_lab.agents.kernels import KERNEL_CODES, kernel


def compiled_reason(acts: list, loss_name: str, weights: list[torch.Tensor], deferring: bool) -> str | None:
    """Why the compiled step cannot run this stack (None when it can, batch 1 aside)."""
    w = weights[0]
    if w.device.type != "cpu":
        return f"the weights are on {w.device.type}"
    if w.dtype not in (torch.float32, torch.float64):
        return f"dtype {w.dtype}"
    if deferring:
        return "updates are deferred (train.deferred_updates)"
    codes = {act_code(a) for a in acts}
    if len(codes) > 1:
        return "the hidden layers' activations differ"
    if None in codes:
        return f"activation {acts[0]!r} has no built-in code (registration: kernel=...)"
    if loss_name not in ("cross_entropy", "mse") or (loss_name == "mse" and weights[-1].shape[1] != 1):
        return f"loss {loss_name} with {weights[-1].shape[1]} outputs"
    if kernel() is None:
        return "the compiled CPU code could not be built"
    return None


def act_code(act: torch.nn.Module) -> int | None:
    """The built-in code of a parameterless function activation that declares one (else None)."""
    if not isinstance(act, FunctionActivation) or act.params:
        return None
    name = activation_facts(act.name).kernel
    return KERNEL_CODES.get(name) if name is not None else None


@dataclass(frozen=True)
class CompiledStep:
    """The compiled step of one stack's configuration (see the module docstring)."""

    act: int
    mse: bool

    @classmethod
    def of(cls, acts: list, loss_name: str) -> "CompiledStep":
        return cls(act_code(acts[0]), loss_name == "mse")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor],
                 biases: list[torch.Tensor | None], mask: torch.Tensor | None, lr: float, factor: float,
                 abs_sums: list[tuple[torch.Tensor, torch.Tensor]] | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """One step of every seed on ``x`` (N, 1, ...) and ``y`` (N, 1): the
        weights, biases and |W| sums (if given) are updated in place. Returns
        loss (N,), correct (N,), logits (N, 1, out), the hidden features
        [(N, 1, h)] and the deltas [(N, 1, out_l)], bottom layer first."""
        n = y.shape[0]
        empty = weights[0].new_empty(0)
        rows, cols = ([r for r, _ in abs_sums], [c for _, c in abs_sums]) if abs_sums is not None else ([], [])
        out = kernel().online_step(
            x.reshape(n, -1).contiguous(), y.reshape(n).contiguous(), weights,
            [b if b is not None else empty for b in biases], empty if mask is None else mask.reshape(n, -1).contiguous(),
            self.act, self.mse, float(lr), float(factor), rows, cols)
        hidden = len(weights) - 1
        return out[0], out[1], out[2], list(out[3:3 + hidden]), list(out[3 + hidden:])
