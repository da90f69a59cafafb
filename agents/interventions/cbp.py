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
from dataclasses import dataclass, field

import numpy as np
import torch

from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.interventions import Intervention, interventions
from plasticity_lab.agents.interventions.magnitudes import WeightMagnitudes
from plasticity_lab.agents.interventions.units import per_unit, reset_units

UTIL_TYPES = ("contribution", "zero_contribution", "adaptable_contribution", "feature_by_input", "weight",
              "adaptation", "random")


@dataclass
class LayerUtility:
    """Per-layer state of continual backprop. The unit ages live on the host
    (``ages``), so counting the mature units and deciding how many to replace
    never waits for the device (a GPU run syncs only when it replaces);
    ``decay_power`` = eta^age per unit lives with the averages on the run's
    device and bias-corrects them there (one multiply per step)."""

    util: torch.Tensor
    mean_feature: torch.Tensor
    ages: np.ndarray
    decay_power: torch.Tensor
    accumulated: float = 0.0

    @property
    def age(self) -> torch.Tensor:
        """The ages as a tensor on the run's device."""
        return torch.as_tensor(self.ages, device=self.util.device)

    def correction(self, dtype: torch.dtype) -> torch.Tensor:
        """1 - eta^age per unit: the bias correction of the running averages."""
        return torch.rsub(self.decay_power, 1.0).to(dtype)

    @classmethod
    def joined(cls, layers: list["LayerUtility"]) -> tuple["LayerUtility", list["LayerUtility"]]:
        """One state for all ``layers``' units end to end, and each layer's
        state as views of its slice of it (what a checkpoint and a replacement
        read and write): the per-step averages then run as one elementwise op
        for all layers, not one per layer, which is most of continual
        backprop's cost at batch 1 (Python and kernel-launch overhead)."""
        whole = cls(torch.cat([s.util for s in layers]), torch.cat([s.mean_feature for s in layers]),
                    np.concatenate([s.ages for s in layers]), torch.cat([s.decay_power for s in layers]))
        views, start = [], 0
        for s in layers:
            end = start + len(s.ages)
            views.append(cls(whole.util[start:end], whole.mean_feature[start:end], whole.ages[start:end],
                             whole.decay_power[start:end], s.accumulated))
            start = end
        return whole, views


def _end_to_end(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer unit tensors joined along their unit (last) dimension, in layer order (one layer: as it is)."""
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


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
        self._whole, self.layers = LayerUtility.joined(layers)

    @torch.no_grad()
    def after_step(self, agent: Agent, info: StepInfo) -> dict | None:
        """Utilities of every layer are computed from this step's weights (before
        any replacement in this step, as the reference GnT does), then units replaced."""
        self._mags.new_step(info.weight_abs_sums, agent.model.layers)
        if self._units is None:
            self._units = agent.model.unit_layers()
        h = [per_unit(f, s.util.shape[0]) for f, s in zip(info.features, self.layers)]
        f_hat, correction = self._update(_end_to_end(h))
        replaced, start = {}, 0
        for layer, state in zip(self._units, self.layers):
            end = start + state.util.shape[0]
            chosen = self._choose(state, correction[start:end])
            if chosen is not None:
                self._f_hat = f_hat[start:end]
                self._replace(agent, layer, state, chosen)
                replaced[f"cbp/replaced/{layer.name}"] = len(chosen)
            start = end
        return replaced or None

    def _update(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-3 for every layer's units at once (``h``: (batch, all units));
        returns f̂ and the bias correction 1 - eta^age."""
        eta, whole = self.decay_rate, self._whole
        whole.ages += 1
        whole.decay_power.mul_(eta)
        whole.mean_feature.mul_(eta).add_(h[0] if h.shape[0] == 1 else h.mean(0), alpha=1 - eta)
        correction = whole.correction(h.dtype)
        f_hat = whole.mean_feature / correction
        if self.util_type != "random":
            whole.util.mul_(eta).add_(self._instant_utility(h, f_hat), alpha=1 - eta)
        return f_hat, correction

    def _choose(self, state: LayerUtility, correction: torch.Tensor) -> torch.Tensor | None:
        """Step 4-5's choice in one layer: the k eligible units of smallest û (None: none this step)."""
        if self.util_type == "random":  # drawn every step, as the reference code does
            u_hat = torch.rand_like(state.util)
        k, mature = self._how_many(state)
        if k == 0:
            return None
        if self.util_type != "random":
            u_hat = state.util / correction  # bias-corrected only when it decides something
        eligible = torch.as_tensor(np.flatnonzero(mature), device=u_hat.device)
        order = torch.topk(-u_hat[eligible], k).indices
        return eligible[order]

    def _how_many(self, state: LayerUtility) -> tuple[int, np.ndarray]:
        """How many units to replace now (step 4), and which are mature."""
        mature = state.ages > self.maturity_threshold
        count = int(np.count_nonzero(mature))
        if count == 0:
            return 0, mature
        n = self.replacement_rate * count
        if self.accumulate:
            state.accumulated += n
            k = math.floor(state.accumulated)
            state.accumulated -= k
        else:
            k = int(n) if n >= 1 else int(torch.rand(()) < n)
        return min(k, count), mature

    def _instant_utility(self, h: torch.Tensor, f_hat: torch.Tensor) -> torch.Tensor:
        """y_j of every layer's units (step 3), with the layers' |W| means end to end."""
        kind = self.util_type
        out_mag = (_end_to_end([self._mags.outgoing(layer) for layer in self._units])
                   if kind not in ("feature_by_input", "adaptation") else None)
        in_mag = (_end_to_end([self._mags.incoming(layer) for layer in self._units])
                  if kind in ("adaptable_contribution", "feature_by_input", "adaptation") else None)
        if kind == "contribution":
            return out_mag * (h[0].abs() if h.shape[0] == 1 else h.abs().mean(0))
        if kind == "weight":
            return out_mag
        if kind == "adaptation":
            return 1 / in_mag
        centred = (h[0] - f_hat).abs_() if h.shape[0] == 1 else (h - f_hat).abs().mean(0)
        if kind == "zero_contribution":
            return out_mag * centred
        if kind == "adaptable_contribution":
            return out_mag * centred / in_mag
        return centred / in_mag  # feature_by_input

    def _replace(self, agent: Agent, layer, state: LayerUtility, chosen: torch.Tensor) -> None:
        if self.next_bias_correction and layer.outgoing.bias is not None:
            cols = layer.outgoing.weight[:, chosen]
            layer.outgoing.bias += (cols * self._f_hat[chosen]).sum(1)
        reset_units(layer, chosen, agent.optimizer)
        state.util[chosen] = 0.0
        state.mean_feature[chosen] = 0.0
        state.decay_power[chosen] = 1.0
        state.ages[chosen.cpu().numpy()] = 0

    def state_dict(self) -> dict:
        return {"layers": [{"util": s.util, "mean_feature": s.mean_feature, "age": s.age, "decay_power": s.decay_power,
                            "accumulated": s.accumulated} for s in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        layers = []
        for s in state["layers"]:
            age = s["age"]
            power = s.get("decay_power")  # absent from checkpoints written before it was kept
            power = self.decay_rate ** age.double() if power is None else power
            layers.append(LayerUtility(s["util"], s["mean_feature"], age.cpu().numpy().copy(), power,
                                       s["accumulated"]))
        self._whole, self.layers = LayerUtility.joined(layers)
