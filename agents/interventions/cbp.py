"""Continual backprop (Dohare et al., "Loss of plasticity in deep continual
learning", Nature 632, 2024, arXiv:2306.13812, Methods "Continual
backpropagation"; code: shibhansh/loss-of-plasticity, lop/algos/gnt.py).

After every update, for each hidden layer with units j (eta = decay_rate):

1. age_j += 1
2. f_j <- eta f_j + (1 - eta) mean_batch h_j;  f̂_j = f_j / (1 - eta^age_j)
3. u_j <- eta u_j + (1 - eta) y_j;  û_j = u_j / (1 - eta^age_j), with y_j by ``util_type``
   (out = mean_k |W_next[k, j]|, in = mean_i |W_cur[j, i]|, h from the pre-update forward):
   contribution: out * mean|h_j|; zero_contribution: out * mean|h_j - f̂_j|;
   adaptable_contribution: out * mean|h_j - f̂_j| / in (the paper's overall utility);
   feature_by_input: mean|h_j - f̂_j| / in; weight: out; adaptation: 1 / in;
   random: û_j ~ U[0, 1).
4. Eligible: age_j > maturity_threshold. n = replacement_rate * |eligible|;
   ``accumulate``: acc += n, replace floor(acc) and keep the fraction;
   otherwise replace int(n), or one unit with probability n when n < 1.
5. The k eligible units with the smallest û are reset through the shared
   helper (new incoming weights from the init distribution, bias 0, outgoing
   weights 0, optimizer state of those entries cleared), with u, f, age = 0.

Follows the paper. The authors' code (lop/algos/gnt.py, ``reinit_features``)
also "bias-corrects" the next layer (b_next += W_next[:, j] f̂_j) but zeroes f_j
first, so the correction adds 0 there; ``next_bias_correction=true`` applies
the intended correction, with f̂_j read before it is zeroed.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from plasticity_lab.agents.agent import Agent, GroupStepInfo, StepInfo
from plasticity_lab.agents.hooks import Record
from plasticity_lab.agents.interventions import Intervention, interventions
from plasticity_lab.agents.interventions.magnitudes import WeightMagnitudes
from plasticity_lab.agents.interventions.units import per_unit, reset_units

UTIL_TYPES = ("contribution", "zero_contribution", "adaptable_contribution", "feature_by_input", "weight",
              "adaptation", "random")
READS_OUT = ("contribution", "zero_contribution", "adaptable_contribution", "weight")
"""The utilities that read the mean outgoing |W| (``out``)."""
READS_IN = ("adaptable_contribution", "feature_by_input", "adaptation")
"""The utilities that read the mean incoming |W| (``in``)."""


@dataclass
class LayerUtility:
    """Continual backprop's per-unit state: of one layer, of all layers end to
    end, or of N stacked seeds' layers (a leading seed dimension). The unit
    ages live on the host (``ages``), so counting the mature units and
    deciding how many to replace never waits for the device (a GPU run syncs
    only when it replaces); ``decay_power`` = eta^age per unit lives with the
    averages on the run's device and bias-corrects them there (one multiply per step)."""

    util: torch.Tensor
    mean_feature: torch.Tensor
    ages: np.ndarray
    decay_power: torch.Tensor

    @property
    def age(self) -> torch.Tensor:
        """The ages as a tensor on the run's device."""
        return torch.as_tensor(self.ages, device=self.util.device)

    def correction(self, dtype: torch.dtype) -> torch.Tensor:
        """1 - eta^age per unit: the bias correction of the running averages."""
        return torch.rsub(self.decay_power, 1.0).to(dtype)

    def __getitem__(self, index) -> "LayerUtility":
        """A view of some units (or, stacked, of one seed): writes reach this state."""
        return LayerUtility(self.util[index], self.mean_feature[index], self.ages[index], self.decay_power[index])

    def split(self, sizes: list[int]) -> list["LayerUtility"]:
        """Views of consecutive slices of the last (unit) dimension, ``sizes`` units each."""
        views, start = [], 0
        for n in sizes:
            views.append(self[..., start:start + n])
            start += n
        return views

    @classmethod
    def joined(cls, parts: list["LayerUtility"], dim: int = -1) -> "LayerUtility":
        """``parts`` end to end along ``dim`` (-1: layers' units; 0: seeds, stacked), as new tensors."""
        if dim == -1:
            return cls(_end_to_end([p.util for p in parts]), _end_to_end([p.mean_feature for p in parts]),
                       np.concatenate([p.ages for p in parts], -1), _end_to_end([p.decay_power for p in parts]))
        return cls(torch.stack([p.util for p in parts]), torch.stack([p.mean_feature for p in parts]),
                   np.stack([p.ages for p in parts]), torch.stack([p.decay_power for p in parts]))


def _end_to_end(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer unit tensors joined along their unit (last) dimension, in layer order (one layer: as it is)."""
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


def update_utility(state: LayerUtility, h: torch.Tensor, eta: float, kind: str, out_mag: torch.Tensor | None,
                   in_mag: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-3 for every unit of ``state`` at once (``h``: (..., batch, units),
    the magnitudes (..., units)); returns f̂ and the bias correction 1 - eta^age."""
    state.ages += 1
    state.decay_power.mul_(eta)
    state.mean_feature.mul_(eta).add_(_batch_mean(h), alpha=1 - eta)
    correction = state.correction(h.dtype)
    f_hat = state.mean_feature / correction
    if kind != "random":
        state.util.mul_(eta).add_(instant_utility(kind, h, f_hat, out_mag, in_mag), alpha=1 - eta)
    return f_hat, correction


def _batch_mean(h: torch.Tensor) -> torch.Tensor:
    """mean over the batch (second-to-last) dimension; at batch 1 the one row itself."""
    return h[..., 0, :] if h.shape[-2] == 1 else h.mean(-2)


def instant_utility(kind: str, h: torch.Tensor, f_hat: torch.Tensor, out_mag: torch.Tensor | None,
                    in_mag: torch.Tensor | None) -> torch.Tensor:
    """y_j of every unit (step 3)."""
    if kind == "contribution":
        return out_mag * _batch_mean(h.abs())
    if kind == "weight":
        return out_mag
    if kind == "adaptation":
        return 1 / in_mag
    centred = (h[..., 0, :] - f_hat).abs_() if h.shape[-2] == 1 else (h - f_hat[..., None, :]).abs().mean(-2)
    if kind == "zero_contribution":
        return out_mag * centred
    if kind == "adaptable_contribution":
        return out_mag * centred / in_mag
    return centred / in_mag  # feature_by_input


@interventions.register("cbp")
@dataclass
class ContinualBackprop(Intervention):
    """Continual backprop: replace a small fraction of low-utility mature units
    every step. Defaults: the paper's permuted-MNIST configuration (decay 0.99,
    maturity 100, adaptable contribution, accumulated replacement), with
    replacement_rate 1e-4 (the paper swept 1e-4 .. 1e-6)."""

    replacement_rate: float = 1e-4
    decay_rate: float = 0.99
    maturity_threshold: int = 100
    util_type: str = "adaptable_contribution"
    accumulate: bool = True
    next_bias_correction: bool = False
    layers: list = field(default_factory=list, init=False, repr=False)
    _whole: LayerUtility | None = field(default=None, init=False, repr=False)
    _accumulated: np.ndarray | None = field(default=None, init=False, repr=False)
    _mags: WeightMagnitudes = field(default_factory=lambda: WeightMagnitudes(), init=False, repr=False)
    _units: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.replacement_rate <= 1:
            raise ValueError(f"replacement_rate must be in [0, 1], got {self.replacement_rate}")
        if not 0 <= self.decay_rate < 1:
            raise ValueError(f"decay_rate must be in [0, 1), got {self.decay_rate}")
        if self.maturity_threshold < 0:
            raise ValueError(f"maturity_threshold must be >= 0, got {self.maturity_threshold}")
        if self.util_type not in UTIL_TYPES:
            raise ValueError(f"util_type must be one of {', '.join(UTIL_TYPES)}; got {self.util_type!r}")

    def needs_weight_abs_sums(self) -> bool:
        """Asks the fused path for each step's |W| row/column sums (agents/abs_sums.py)."""
        return self.util_type != "random"

    def on_run_start(self, agent: Agent) -> None:
        layers = []
        for layer in agent.model.unit_layers():
            h = layer.incoming.weight.shape[0]
            device = layer.incoming.weight.device
            zeros = lambda: torch.zeros(h, device=device)
            ones = torch.ones(h, dtype=torch.float64, device=device)
            layers.append(LayerUtility(zeros(), zeros(), np.zeros(h, dtype=np.int64), ones))
        self._adopt(LayerUtility.joined(layers), np.zeros(len(layers)), [len(s.ages) for s in layers])

    def _adopt(self, whole: LayerUtility, accumulated: np.ndarray, sizes: list[int]) -> None:
        """Keep ``whole`` (every layer's units end to end) and ``accumulated``
        (per layer) as this seed's state, each layer's state a view of its
        slice: the per-step averages then run as one elementwise op for all
        layers, not one per layer (at batch 1 most of the cost is Python and
        kernel-launch overhead), and a group of seeds can hand each seed views
        of its stacked state (:class:`StackedContinualBackprop`)."""
        self._whole, self._accumulated, self.layers = whole, accumulated, whole.split(sizes)

    @torch.no_grad()
    def after_step(self, agent: Agent, info: StepInfo) -> dict | None:
        """Utilities of every layer are computed from this step's weights (before
        any replacement in this step, as the reference GnT does), then units replaced."""
        self._mags.new_step(info.weight_abs_sums, agent.model.layers)
        if self._units is None:
            self._units = agent.model.unit_layers()
        kind = self.util_type
        h = _end_to_end([per_unit(f, s.util.shape[0]) for f, s in zip(info.features, self.layers)])
        out_mag = _end_to_end([self._mags.outgoing(u) for u in self._units]) if kind in READS_OUT else None
        in_mag = _end_to_end([self._mags.incoming(u) for u in self._units]) if kind in READS_IN else None
        f_hat, correction = update_utility(self._whole, h, self.decay_rate, kind, out_mag, in_mag)
        replaced, start = {}, 0
        for i, state in enumerate(self.layers):
            end = start + state.util.shape[0]
            u_hat = torch.rand_like(state.util) if kind == "random" else None  # drawn every step, as the reference code does
            mature = state.ages > self.maturity_threshold
            k = self._how_many(i, int(np.count_nonzero(mature)))
            if k:
                replaced.update(self.replace_lowest(agent, i, k, mature, correction[start:end], f_hat[start:end], u_hat))
            start = end
        return replaced or None

    def _how_many(self, i: int, mature: int) -> int:
        """How many of layer i's ``mature`` units to replace now (step 4)."""
        if mature == 0:
            return 0
        n = self.replacement_rate * mature
        if self.accumulate:
            self._accumulated[i] += n
            k = math.floor(self._accumulated[i])
            self._accumulated[i] -= k
        else:
            k = int(n) if n >= 1 else int(torch.rand(()) < n)
        return min(k, mature)

    def replace_lowest(self, agent: Agent, i: int, k: int, mature: np.ndarray, correction: torch.Tensor,
                       f_hat: torch.Tensor, u_hat: torch.Tensor | None = None) -> dict[str, int]:
        """Step 5 in layer i: reset its ``k`` ``mature`` units of smallest û
        (bias-corrected only here, when it decides something; ``u_hat`` given
        for the random utility)."""
        state, layer = self.layers[i], self._units[i]
        if u_hat is None:
            u_hat = state.util / correction
        eligible = torch.as_tensor(np.flatnonzero(mature), device=u_hat.device)
        chosen = eligible[torch.topk(-u_hat[eligible], k).indices]
        if self.next_bias_correction and layer.outgoing.bias is not None:
            layer.outgoing.bias += (layer.outgoing.weight[:, chosen] * f_hat[chosen]).sum(1)
        reset_units(layer, chosen, agent.optimizer)
        state.util[chosen] = 0.0
        state.mean_feature[chosen] = 0.0
        state.decay_power[chosen] = 1.0
        state.ages[chosen.cpu().numpy()] = 0
        return {f"cbp/replaced/{layer.name}": k}

    def stacked(self, seeds: list["ContinualBackprop"], agents: list[Agent]) -> "StackedContinualBackprop | None":
        """All seeds' continual backprop as one (see :class:`StackedContinualBackprop`),
        where its per-step work draws no random numbers (not the random utility,
        not ``accumulate=false``) and each unit feeds one column of a fully
        connected next layer (not CReLU's copies, not convolutions)."""
        if self.util_type == "random" or not self.accumulate:
            return None
        for agent in agents:
            units = agent.model.unit_layers()
            if any(u.fan_out_per_unit != 1 or u.incoming is not agent.model.layers[i]
                   or u.outgoing is not agent.model.layers[i + 1] or u.incoming.weight.dim() != 2
                   for i, u in enumerate(units)):
                return None
        return StackedContinualBackprop(seeds, agents)

    def state_dict(self) -> dict:
        return {"layers": [{"util": s.util.clone(), "mean_feature": s.mean_feature.clone(), "age": s.age,
                            "decay_power": s.decay_power.clone(), "accumulated": float(a)}
                           for s, a in zip(self.layers, self._accumulated)]}

    def load_state_dict(self, state: dict) -> None:
        layers = []
        for s in state["layers"]:
            age = s["age"]
            power = s.get("decay_power")  # absent from checkpoints written before it was kept
            power = self.decay_rate ** age.double() if power is None else power
            layers.append(LayerUtility(s["util"], s["mean_feature"], age.cpu().numpy().copy(), power))
        accumulated = np.array([float(s["accumulated"]) for s in state["layers"]])
        self._adopt(LayerUtility.joined(layers), accumulated, [len(s.ages) for s in layers])


class StackedContinualBackprop:
    """Continual backprop of N vectorised seeds as one ``after_step``: each
    seed's state becomes a view of its row of one (N, units) state, so the
    per-step averages (steps 1-3) and the count of units due (step 4) run
    once for the group instead of once per seed, from the group step's
    stacked features and |W| sums. The arithmetic is each seed's own,
    elementwise, so a seed computes the same numbers as alone; the rare
    replacements (step 5) are each seed's own, under its own random
    generators. On a step some seeds sit out, each seed's instance runs
    alone on the same (viewed) state."""

    def __init__(self, seeds: list[ContinualBackprop], agents: list[Agent]):
        first = seeds[0]
        self.seeds, self.agents = seeds, agents
        self.eta, self.kind = first.decay_rate, first.util_type
        self.rate, self.maturity = first.replacement_rate, first.maturity_threshold
        sizes = [len(s.ages) for s in first.layers]
        self.whole = LayerUtility.joined([s._whole for s in seeds], dim=0)
        self.accumulated = np.stack([s._accumulated for s in seeds])
        for n, (cbp, agent) in enumerate(zip(seeds, agents)):
            cbp._adopt(self.whole[n], self.accumulated[n], sizes)
            cbp._units = agent.model.unit_layers()
        self.starts = np.cumsum([0] + sizes[:-1])
        layers = agents[0].model.layers
        device = self.whole.util.device
        self.in_counts = torch.tensor([layers[i].weight.shape[1] for i, n in enumerate(sizes) for _ in range(n)],
                                      dtype=self.whole.util.dtype, device=device)
        self.out_counts = torch.tensor([layers[i + 1].weight.shape[0] for i, n in enumerate(sizes) for _ in range(n)],
                                       dtype=self.whole.util.dtype, device=device)

    @torch.no_grad()
    def __call__(self, info: GroupStepInfo, own: Callable[[int], AbstractContextManager]) -> list[Record]:
        """One step of every seed: the records per seed (None where nothing was
        replaced); ``own(n)`` runs a block with seed n's random generators."""
        h = _end_to_end(info.features)  # (N, batch, units)
        rows, cols = zip(*info.weight_abs_sums)  # the fused step computes them: needs_weight_abs_sums
        out_mag = _end_to_end(list(cols[1:])) / self.out_counts if self.kind in READS_OUT else None
        in_mag = _end_to_end(list(rows[:-1])) / self.in_counts if self.kind in READS_IN else None
        f_hat, correction = update_utility(self.whole, h, self.eta, self.kind, out_mag, in_mag)
        mature = self.whole.ages > self.maturity
        counts = np.add.reduceat(mature, self.starts, axis=1, dtype=np.int64)
        self.accumulated += self.rate * counts  # + 0.0 where none is mature: as a seed alone, which skips them
        due = np.floor(self.accumulated)
        self.accumulated -= due
        due = np.minimum(due, counts).astype(np.int64)
        records: list[Record] = [None] * len(self.seeds)
        for n, i in zip(*np.nonzero(due)):
            start, end = self.starts[i], self.starts[i] + len(self.seeds[n].layers[i].ages)
            with own(n):
                record = self.seeds[n].replace_lowest(self.agents[n], i, int(due[n, i]), mature[n, start:end],
                                                      correction[n, start:end], f_hat[n, start:end])
            records[n] = {**(records[n] or {}), **record}
        return records
