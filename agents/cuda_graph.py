"""The fused step replayed as a CUDA graph.

On a GPU a batch-1 step of the paper's MLP is a few dozen small kernels, each
finished long before Python launches the next: the step is bound by launch
overhead, not by the GPU. A CUDA graph records the step's kernels once and
replays them with one launch (``torch.cuda.CUDAGraph``), reading the batch
from fixed input buffers that each step fills with a device-to-device copy.

What may change between replays is only tensor *contents*; anything decided
in Python at capture time is part of the key of the captured graph, and a
change of key captures again: the batch shapes, the learning rate and decay,
and the head masks (a task switch with task heads). Deferred updates
(agents/pending.py) keep their count in Python, so a deferring step is never
captured. Interventions run between replays, outside the graph, and write
the weights in place (the graph reads the same memory).

The graph checks itself on first use: the step is run once eagerly (weights
saved before), the weights restored, the same batch replayed through the new
graph, and the two results compared; if they differ, or the capture fails,
the run keeps the eager step (with its result) and says so. The first ``WARMUP`` steps of a key run
eagerly on a side stream, as PyTorch's CUDA-graph recipe asks (cuBLAS
workspaces and the caching allocator settle there).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from plasticity_lab.agents.stacked import StackedStep

WARMUP = 3


def graphed(step: StackedStep, enabled: bool = True) -> Any:
    """``step`` wrapped to replay as a CUDA graph when its weights are on a GPU (else ``step`` itself)."""
    if not enabled or step.weights[0].device.type != "cuda":
        return step
    return GraphedStep(step)


class GraphedStep:
    """A StackedStep whose ``step`` replays a captured CUDA graph (see module docstring);
    every other attribute is the wrapped step's."""

    def __init__(self, inner: StackedStep):
        self.inner = inner
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.out: tuple | None = None
        self.static_x: torch.Tensor | None = None
        self.static_y: torch.Tensor | None = None
        self.warm = 0
        self.disabled: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        key = self._key(x, y)
        if self.disabled is not None or key is None:
            return self.inner.step(x, y)
        if key != self.key:
            self.key, self.graph, self.warm = key, None, 0
        if self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            return self.out
        if self.warm < WARMUP:
            self.warm += 1
            return self._on_side_stream(x, y)
        return self._capture(x, y)

    def _key(self, x: torch.Tensor, y: torch.Tensor) -> tuple | None:
        """What the graph bakes in; None when this step cannot be captured."""
        if self.inner.pending is not None:
            return None
        group = self.inner.agents[0].optimizer.param_groups[0]
        mask = self.inner.masks()  # built here, outside any capture
        return (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, group["lr"], group["weight_decay"],
                id(mask) if mask is not None else None)

    def _on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = self.inner.step(x, y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return out

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step writes: weights, biases and the |W| sums it hands to CBP."""
        sums = [t for pair in self.inner.abs_sums or [] for t in pair]
        return [t for t in (*self.inner.weights, *self.inner.biases, *sums) if t is not None]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """Capture the step, check one replay against the eager step, keep the graph if they agree."""
        before = [t.clone() for t in self._state()]
        eager = self.inner.step(x, y)
        eager_values = [t.clone() for t in (*eager[:3], *eager[3])]
        after = [t.clone() for t in self._state()]
        for t, saved in zip(self._state(), before):
            t.copy_(saved)
        self.static_x, self.static_y = x.clone(), y.clone()
        try:
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize(x.device)
            with torch.cuda.graph(graph):
                out = self.inner.step(self.static_x, self.static_y)
            graph.replay()
        except RuntimeError as err:  # an op that cannot be captured: keep the eager step
            return self._give_up(after, eager, f"capture failed ({str(err).splitlines()[0] if str(err) else err})")
        replayed = [*out[:3], *out[3]]
        agree = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(eager_values, replayed))
        agree = agree and all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(after, self._state()))
        if not agree:
            return self._give_up(after, eager, "the captured step disagreed with the eager step")
        self.graph, self.out = graph, out
        return out

    def _give_up(self, after: list[torch.Tensor], eager: tuple, why: str) -> tuple:
        """Keep the eager step's weights and result, and step eagerly from now on."""
        for t, saved in zip(self._state(), after):
            t.copy_(saved)
        self.disabled = why
        warnings.warn(f"CUDA graphs off for this run: {why} (train.cuda_graphs=false silences this)")
        return eager
