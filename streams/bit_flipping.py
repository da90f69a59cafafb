"""Slowly-changing regression, a.k.a. bit-flipping (Dohare et al. 2024,
Nature, Methods "Slowly-changing regression"; code: shibhansh/loss-of-plasticity,
lop/slowly_changing_regression/).

Inputs are m = 20 bits in {0, 1}: the first f = 15 change slowly, the other
5 are fresh uniform random bits for every example. The slow bits are held for
``flip_every`` T = 10,000 examples; then either one random slow bit flips
(``variant=flip_one``, the paper's "bit-flipping" description) or all 15 are
redrawn (``variant=new_pattern``, the authors' default cfg/prob.json).

The target is a fixed random network of linear threshold units (FixLTUNet):
all weights V (100 x 20), biases b, output weights v and output bias c drawn
uniformly from {-1, +1};

    S_j = (m - sum_i V_ji + b_j) / 2,   tau_j = beta (m + 1) - S_j,
    LTU_j(x) = 1[V_j . x + b_j > tau_j],   y = sum_j v_j LTU_j(x) + c,

with beta = 0.7 and no noise. A task here is one period of T examples between
changes (task k has the k-th slow pattern), so the lab's per-task online loss
is the paper's binned online squared error (bins of T; the paper plots bins
of 2T). Everything is generated on the fly from (seed, task): no files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plasticity_lab.registry import ConfigError
from plasticity_lab.streams.sources import DataSource
from plasticity_lab.streams.stream import EvalSet, Stream, StreamBuilder, check_positive, stream_builders, task_rng
from plasticity_lab.streams.task import Task

VARIANTS = ("flip_one", "new_pattern")


@dataclass(frozen=True)
class LTUTarget:
    """The fixed target network: ``y = v . LTU(V x + b) + c``."""

    V: torch.Tensor  # (features, inputs)
    b: torch.Tensor  # (features,)
    v: torch.Tensor  # (features,)
    c: float
    tau: torch.Tensor  # (features,)

    @classmethod
    def sample(cls, rng: np.random.Generator, inputs: int, features: int, beta: float) -> "LTUTarget":
        sign = lambda *shape: torch.as_tensor(rng.integers(0, 2, size=shape) * 2 - 1, dtype=torch.float64)
        V, b, v, c = sign(features, inputs), sign(features), sign(features), float(sign(1)[0])
        S = (inputs - V.sum(1) + b) / 2
        return cls(V, b, v, c, beta * (inputs + 1) - S)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ltu = ((x.double() @ self.V.t() + self.b) > self.tau).double()
        return (ltu @ self.v + self.c).float()


@stream_builders.register("bit_flipping")
@dataclass
class BitFlipping(StreamBuilder):
    """Online regression on slowly changing bits against a fixed LTU network.

    num_tasks: periods of ``flip_every`` examples (100 x 10,000 = the paper's
    1M examples); inputs / slow_bits: m and f; target_features / beta: the
    LTU target's width and threshold; variant: flip_one | new_pattern.
    """

    num_tasks: int = 100
    flip_every: int = 10_000
    inputs: int = 20
    slow_bits: int = 15
    target_features: int = 100
    beta: float = 0.7
    variant: str = "flip_one"

    def __post_init__(self) -> None:
        for key in ("num_tasks", "flip_every", "inputs", "target_features"):
            check_positive(key, getattr(self, key))
        if not 0 < self.slow_bits <= self.inputs:
            raise ConfigError("stream.slow_bits", self.slow_bits, f"an integer in 1..{self.inputs} (stream.inputs)")
        if self.variant not in VARIANTS:
            raise ConfigError("stream.variant", self.variant, VARIANTS)

    def pattern(self, seed: int, k: int) -> np.ndarray:
        """The slow bits of task ``k``: the first pattern with k single-bit
        flips applied (flip_one), or an independent draw (new_pattern)."""
        if self.variant == "new_pattern":
            return task_rng(seed, k, "bit_pattern").integers(0, 2, size=self.slow_bits)
        bits = task_rng(seed, 0, "bit_pattern").integers(0, 2, size=self.slow_bits)
        flips = task_rng(seed, 0, "bit_flips").integers(0, self.slow_bits, size=k)
        np.add.at(bits, flips, 1)
        return bits % 2

    def build(self, seed: int, data: DataSource | str | None = None) -> Stream:  # generated: reads no data
        target = LTUTarget.sample(task_rng(seed, 0, "ltu_target"), self.inputs, self.target_features, self.beta)
        fresh = self.inputs - self.slow_bits

        def build_task(k: int) -> Task:
            rng = task_rng(seed, k, "bit_fresh")
            slow = np.broadcast_to(self.pattern(seed, k), (self.flip_every, self.slow_bits))
            x = torch.as_tensor(np.concatenate([slow, rng.integers(0, 2, size=(self.flip_every, fresh))], 1),
                                dtype=torch.float32)
            empty = torch.zeros((0, self.inputs))
            return Task(id=k, x_train=x, y_train=target(x), x_test=empty, y_test=torch.zeros(0), classes=(),
                        origin={"stream": "bit_flipping", "seed": seed, "task": k, "variant": self.variant})

        def build_test(k: int) -> EvalSet:
            return EvalSet(torch.zeros((0, self.inputs)), torch.zeros(0), ())

        return Stream("bit_flipping", (self.inputs,), 0, 1, self.num_tasks, "domain", build_task, build_test,
                      target="value", data="synthetic bits (generated from the run's seed)")
