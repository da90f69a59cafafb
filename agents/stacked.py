"""The fused SGD step of N copies of one MLP at once (N = 1 for a single run):
weights stacked into (N, out, in) tensors, every step done with batched matrix
products (``bmm`` / ``baddbmm_``). With h_0 = x, z_l = h_{l-1} W_l^T + b_l,
h_l = phi(z_l): dL/dlogits = (softmax - onehot) / B for cross-entropy,
2 (out - y) / B for the mean squared error; d_l = (d_{l+1} W_{l+1}) * phi'(z_l),
all before any weight changes; then W_l <- (1 - lr wd) W_l - lr d_l^T h_{l-1}
(one ``baddbmm_`` per layer for all seeds, ``addr_`` per seed for large
matrices at batch 1) and b_l likewise. With ``deferred_updates`` the weight
updates are kept pending as a low-rank correction and applied every few steps
(agents/pending.py). On the CPU a batch-1 step is one compiled call for all
seeds where it applies (agents/compiled_step.py: the same arithmetic to float
rounding, several times faster for small nets).

Each seed keeps its own Agent: its model's parameters are re-pointed at views
of the stacked tensors (``param.data = stack[i]``), so the seed's
interventions, metrics and checkpoints read and write its own slice in place,
exactly as in a run of that seed alone. A batched matmul computes each slice
with the same kernel as the single product (bit-identical on the CPU here;
tested), so seed i trained here equals seed i trained alone.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from plasticity_lab.agents.abs_sums import sums_of, update_with_abs_sums
from plasticity_lab.agents.agent import GroupStepInfo, StackedMasks, StepInfo
from plasticity_lab.agents.compiled_step import CompiledStep, compiled_reason
from plasticity_lab.agents.pending import PendingUpdates


ADDR_MIN_ENTRIES = 1_000_000
"""A batch-1 update of a matrix this large is one ``addr_`` per seed (2.4x
faster than the rank-1 ``baddbmm_`` at 2000 x 2000 here); smaller ones stay one
``baddbmm_`` for all seeds (per-call overhead wins there: 8 seeds of 100 x 784,
217 vs 85 us). Decided by shape alone, so a seed alone and among others
take the same path (and get the same bits)."""


class StackedStep:
    """One fused SGD step for N agents with identical configurations."""

    def __init__(self, agents: list):
        """``agents``: FusedAgents of one configuration (the first one's activations, loss, decay and options serve all)."""
        first = agents[0]
        self.agents = agents
        for a in agents:
            if a._stack is not None:  # an earlier stack's pending updates belong in the weights stacked here
                a._stack.flush()
            a._stack = self  # the step that holds (and flushes) each agent's weights
        self.loss_name = first.loss_name
        self.acts = first.model.acts  # FunctionActivations (fused_reason): phi and its registered phi'
        self.masks = StackedMasks(agents, per_example=True)
        """(N, 1, out) head masks of the seeds (None when no seed masks its logits)."""
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor | None] = []
        for i, layer in enumerate(first.model.layers):
            w = torch.stack([a.model.layers[i].weight.detach() for a in agents])
            self.weights.append(w)
            has_bias = layer.bias is not None
            self.biases.append(torch.stack([a.model.layers[i].bias.detach() for a in agents]) if has_bias else None)
            for n, a in enumerate(agents):  # each seed's parameters become views of its slice
                a.model.layers[i].weight.data = w[n]
                if has_bias:
                    a.model.layers[i].bias.data = self.biases[-1][n]
        defer = first.deferred_updates
        self.pending = PendingUpdates.for_weights(self.weights, defer) if defer else None
        for n, a in enumerate(agents):  # a resumed agent's pending corrections, as its checkpoint kept them
            if a.restored_pending is not None:
                self.restore_pending(n, a.restored_pending)
                a.restored_pending = None
        self.abs_sums = ([(w.new_zeros(w.shape[:2]), w.new_zeros(w.shape[0], w.shape[2])) for w in self.weights]
                         if first.weight_abs_sums else None)
        self.compiled_reason = (compiled_reason(self.acts, self.loss_name, self.weights, self.pending is not None)
                                if first.compiled_step else "train.compiled_step=false")
        """Why batch-1 steps do not run as one compiled call (None: they do, agents/compiled_step.py)."""
        self.compiled = CompiledStep.of(self.acts, self.loss_name) if self.compiled_reason is None else None

    def flush(self) -> None:
        """Apply the deferred updates (agents/pending.py), if any, to the weights."""
        if self.pending is not None:
            self.pending.flush(self.weights)

    def pending_state(self, i: int) -> dict | None:
        """Seed i's deferred updates as they stand (None when nothing is pending):
        a checkpoint keeps them beside the stored weights, so a resumed run
        continues the same arithmetic instead of applying them early."""
        p = self.pending
        if p is None or (p.count == 0 and p.scale == 1.0):
            return None
        return {"count": p.count, "scale": p.scale, "us": [u[i].clone() for u in p.us], "vs": [v[i].clone() for v in p.vs]}

    def restore_pending(self, i: int, state: dict) -> None:
        """Seed i's deferred updates from :meth:`pending_state`; where this step
        defers differently (another capacity, or none) they are applied to the weights."""
        p = self.pending
        if p is None or p.capacity != state["us"][0].shape[1]:
            for w, u, v in zip(self.weights, state["us"], state["vs"]):
                w[i].addmm_(u.to(w.device), v.to(w.device).t(), beta=state["scale"], alpha=-state["scale"])
            return
        p.count, p.scale = state["count"], state["scale"]
        for u, v, su, sv in zip(p.us, p.vs, state["us"], state["vs"]):
            u[i].copy_(su)
            v[i].copy_(sv)

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               list[torch.Tensor], Callable[[int], list[torch.Tensor]]]:
        """Update every seed on its batch ``x[i], y[i]`` ((N, B, ...) and (N, B)).

        Returns per-seed loss (N,), correct (N,), logits (N, B, out), the
        hidden features [(N, B, h)] and ``grads(i)`` building seed i's gradients."""
        group = self.agents[0].optimizer.param_groups[0]
        lr, decay = group["lr"], group["weight_decay"] + self.agents[0].extra_decay
        n, b = y.shape
        if self.compiled is not None and b == 1:
            loss, correct, logits, feats, deltas = self.compiled(x, y, self.weights, self.biases, self.masks(), lr,
                                                                 1 - lr * decay, self.abs_sums)
            ins = [x.flatten(2), *feats]
        else:
            loss, correct, logits, feats, deltas, ins = self._eager(x, y, lr, decay)

        def grads(i: int) -> list[torch.Tensor]:
            out = []
            for bias, d, h_in in zip(self.biases, deltas, ins):
                out.append(d[i].t() @ h_in[i])
                if bias is not None:
                    out.append(d[i].sum(0))
            return out

        return loss, correct, logits, feats, grads

    def _eager(self, x: torch.Tensor, y: torch.Tensor, lr: float, decay: float) -> tuple:
        """The step in PyTorch ops: returns loss, correct, logits, features, deltas and layer inputs."""
        n, b = y.shape
        h = x.flatten(2)
        ins, pre, feats = [h], [], []
        for layer, act in enumerate(self.acts):
            z = self._linear(layer, h)
            h = act(z)
            pre.append(z)
            feats.append(h)
            ins.append(h)
        logits = self._linear(len(self.weights) - 1, h)
        mask = self.masks()
        if mask is not None:
            logits = logits + mask
        if self.loss_name == "mse":
            loss = (logits.squeeze(-1) - y).square().mean(1)
            delta = (logits - y.view_as(logits)).mul_(2.0 / b)
            correct = torch.zeros(n, dtype=torch.long, device=y.device)
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(n, b).mean(1)
            delta = torch.softmax(logits, dim=2)
            delta.scatter_add_(2, y[:, :, None], torch.full_like(delta[:, :, :1], -1.0))
            delta /= b
            correct = (logits.argmax(2) == y).sum(1)
        if self.abs_sums is not None and b == 1:
            deltas = self._backward_updating(delta, pre, feats, ins, lr, 1 - lr * decay)
        else:
            deltas = [delta]
            for i in range(len(pre) - 1, -1, -1):
                d = torch.bmm(deltas[-1], self.weights[i + 1])
                if self._deferring():
                    d = self.pending.backward(i + 1, deltas[-1], d)
                deltas.append(d * self.acts[i].derivative(pre[i], feats[i]))
            deltas.reverse()
            self._update(deltas, ins, lr, 1 - lr * decay)
        return loss, correct, logits, feats, deltas, ins

    def _deferring(self) -> bool:
        """Whether updates are pending, so the stored weights are not the current ones."""
        return self.pending is not None and (self.pending.count > 0 or self.pending.scale != 1.0)

    def _linear(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """h W_l^T + b_l with the current weights (stored ones corrected by the pending updates)."""
        w, bias = self.weights[layer], self.biases[layer]
        if self._deferring():
            z = self.pending.forward(layer, h, torch.bmm(h, w.transpose(1, 2)))
            return z if bias is None else z.add_(bias[:, None, :])
        return torch.bmm(h, w.transpose(1, 2)) if bias is None else torch.baddbmm(bias[:, None, :], h, w.transpose(1, 2))

    def _update(self, deltas: list[torch.Tensor], ins: list[torch.Tensor], lr: float, factor: float) -> None:
        """W_l <- factor W_l - lr d_l^T h_{l-1} and b_l likewise: deferred when the
        step fits the pending buffers, else at once (with the sums of the new
        |W| when asked, batch > 1: batch 1 is ``_backward_updating``)."""
        for layer, d in enumerate(deltas):
            self._update_bias(layer, d, lr, factor)
        b = deltas[0].shape[1]
        if self.pending is not None and self.pending.fits(b):
            self.pending.add(self.weights, deltas, ins, lr, factor)
            return
        for layer, (w, d, h_in) in enumerate(zip(self.weights, deltas, ins)):
            if b == 1 and w[0].numel() >= ADDR_MIN_ENTRIES:
                for i in range(w.shape[0]):
                    w[i].addr_(d[i, 0], h_in[i, 0], beta=factor, alpha=-lr)
            else:
                w.baddbmm_(d.transpose(1, 2), h_in, beta=factor, alpha=-lr)
            if self.abs_sums is not None:
                sums_of(w, *self.abs_sums[layer])

    def _update_bias(self, layer: int, d: torch.Tensor, lr: float, factor: float) -> None:
        bias = self.biases[layer]
        if bias is not None:
            if factor != 1.0:
                bias.mul_(factor)
            bias.add_(d.sum(1), alpha=-lr)

    def _backward_updating(self, delta: torch.Tensor, pre: list[torch.Tensor], feats: list[torch.Tensor],
                           ins: list[torch.Tensor], lr: float, factor: float) -> list[torch.Tensor]:
        """Backward and update together, from the top layer down (batch 1, |W|
        sums asked for): one pass over each matrix gives the delta below it
        (from the old weights, as SGD needs), its update and the sums of its new
        |W| (agents/abs_sums.py). Returns the deltas, bottom layer first."""
        deltas = [delta]
        for layer in range(len(self.weights) - 1, -1, -1):
            w, d, rows, cols = self.weights[layer], deltas[-1], *self.abs_sums[layer]
            self._update_bias(layer, d, lr, factor)
            back = d.new_empty(w.shape[0], 1, w.shape[2]) if layer else None
            update_with_abs_sums(w, d[:, 0], ins[layer][:, 0], lr, factor, rows, cols,
                                 back[:, 0] if back is not None else None)  # every seed in one call
            if layer:
                deltas.append(back * self.acts[layer - 1].derivative(pre[layer - 1], feats[layer - 1]))
        deltas.reverse()
        return deltas

    def group_info(self, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, correct: torch.Tensor,
                   logits: torch.Tensor, feats: list[torch.Tensor], grads: Callable[[int], list[torch.Tensor]]
                   ) -> GroupStepInfo:
        """Every seed's view of the step at once (the stacked tensors themselves)."""
        return GroupStepInfo(feats, self.abs_sums,
                             lambda i: self.info(i, x, y, loss, correct, logits, feats, grads))

    def info(self, i: int, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, correct: torch.Tensor,
             logits: torch.Tensor, feats: list[torch.Tensor], grads: Callable[[int], list[torch.Tensor]]) -> StepInfo:
        """Seed i's view of the step, as its own fused agent would report it."""
        sums = None if self.abs_sums is None else [(rows[i], cols[i]) for rows, cols in self.abs_sums]
        return StepInfo(x[i], y[i], logits[i], loss[i], correct[i], [f[i] for f in feats], lambda: grads(i), sums)
