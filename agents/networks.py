"""Networks built from config, with named hidden layers.

The MLP follows Dohare et al. (2024): Linear layers with Kaiming-uniform
weights (gain of the activation; the output layer with the linear gain, 1)
and zero biases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plasticity_lab.agents.activations import bias_init, init_gain, make_activation, width_factor
from plasticity_lab.registry import ConfigError, Registry

networks = Registry("network")
"""Network builders by name (``agent.network``): ``builder(spec: NetworkSpec)``
returns a module with the lab's network contract:

- ``layers``: its weight layers (Linear / Conv2d) in order, the head last;
  ``layer_names`` names them; ``init_bound(i)`` is layer i's init half-width;
- ``hidden_names``, ``acts``, ``norms``, ``activation``: the hidden layers
  whose outputs metrics and interventions read;
- ``forward_features(x) -> (logits, [hidden outputs])``,
  ``forward_preactivations(x)``, ``unit_layers()``, ``reset_parameters()``.
"""


@dataclass(frozen=True)
class NetworkSpec:
    """What a network is built from: the stream's input shape and output
    size, and the ``agent``/``activation`` config (widths of the fully
    connected hidden layers, conv channels for conv nets)."""

    input_shape: tuple[int, ...]
    output_size: int
    hidden: list[int]
    activation: str = "relu"
    activation_params: dict[str, Any] = field(default_factory=dict)
    bias: bool = True
    layer_norm: bool = False
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])


@dataclass
class UnitLayer:
    """One hidden layer seen as units: ``incoming`` makes its pre-activations,
    ``outgoing`` reads its output, ``norm`` sits between (or is None), and
    ``bound`` is the half-width of the uniform init of ``incoming``'s weights.
    ``fan_out_per_unit`` is how many input columns (or channels) of
    ``outgoing`` each unit feeds: 2 for CReLU/Fourier, in blocks (unit j feeds
    j and j + H), or H*W after a conv->flatten boundary, ``consecutive``
    (channel c feeds c*P .. c*P + P - 1)."""

    name: str
    incoming: nn.Module
    outgoing: nn.Module
    norm: nn.Module | None
    bound: float
    fan_out_per_unit: int = 1
    consecutive: bool = False


class MLP(nn.Module):
    """``in -> [Linear -> (LayerNorm) -> act] x len(hidden) -> Linear -> out``.

    Hidden layer ``i`` (1-based) is named ``h{i}``: ``layers[i-1]`` feeds it
    and ``layers[i]`` reads it. ``forward_features`` returns the logits and
    each hidden layer's post-activation output, from one forward pass.
    """

    def __init__(
        self,
        input_size: int | tuple[int, ...],
        hidden: list[int],
        output_size: int,
        activation: str = "relu",
        activation_params: dict[str, Any] | None = None,
        bias: bool = True,
        layer_norm: bool = False,
    ):
        """``input_size``: features, or an input shape (flattened)."""
        super().__init__()
        input_size = int(math.prod(input_size)) if isinstance(input_size, (tuple, list)) else int(input_size)
        if not hidden or any((not isinstance(w, int)) or w < 1 for w in hidden):
            raise ConfigError("agent.hidden", list(hidden), "a non-empty list of positive layer widths")
        params = dict(activation_params or {})
        factor = width_factor(activation)
        self.hidden_names = [f"h{i + 1}" for i in range(len(hidden))]
        self.activation = activation
        sizes_in = [input_size] + [w * factor for w in hidden]
        sizes_out = list(hidden) + [output_size]
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(sizes_in, sizes_out))
        self.norms = nn.ModuleList(nn.LayerNorm(w) if layer_norm else nn.Identity() for w in hidden)
        self.acts = nn.ModuleList(make_activation(activation, w, **params) for w in hidden)
        self.gain = init_gain(activation, params)
        self._act_params = params
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights (bound = gain * sqrt(3 / fan_in)), zero biases
        (or the activation's own bias init, e.g. Elephant's spread biases)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            bound = self.init_bound(i)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound)
                if layer.bias is not None:
                    spread = bias_init(self.activation, layer.out_features, self._act_params) if i < last else None
                    layer.bias.copy_(spread) if spread is not None else layer.bias.zero_()
        for module in [*self.norms, *self.acts]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        return [*self.hidden_names, "out"]

    def init_bound(self, i: int) -> float:
        """Half-width of the uniform init of ``layers[i]`` (gain * sqrt(3 / fan_in))."""
        gain = 1.0 if i == len(self.layers) - 1 else self.gain
        return gain * (3.0 / self.layers[i].in_features) ** 0.5

    def unit_layers(self) -> list[UnitLayer]:
        """Each hidden layer as units (what continual backprop and ReDo reset)."""
        factor = self.layers[1].in_features // self.layers[0].out_features
        return [
            UnitLayer(name, self.layers[i], self.layers[i + 1],
                      self.norms[i] if isinstance(self.norms[i], nn.LayerNorm) else None, self.init_bound(i), factor)
            for i, name in enumerate(self.hidden_names)
        ]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each hidden layer's post-activation output."""
        feats, x = [], x.flatten(1)
        for linear, norm, act in zip(self.layers[:-1], self.norms, self.acts):
            x = act(norm(linear(x)))
            feats.append(x)
        return self.layers[-1](x), feats

    def forward_preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's input to its activation (after the optional LayerNorm)."""
        pre, x = [], x.flatten(1)
        for linear, norm, act in zip(self.layers[:-1], self.norms, self.acts):
            z = norm(linear(x))
            pre.append(z)
            x = act(z)
        return pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for linear, norm, act in zip(self.layers[:-1], self.norms, self.acts):
            x = act(norm(linear(x)))
        return self.layers[-1](x)


def mlp_parameters(spec: NetworkSpec) -> int:
    """How many weights and biases ``mlp(spec)`` has, without building it."""
    sizes_in = [int(math.prod(spec.input_shape))] + [w * width_factor(spec.activation) for w in spec.hidden]
    sizes_out = [*spec.hidden, spec.output_size]
    return sum(i * o + (o if spec.bias else 0) for i, o in zip(sizes_in, sizes_out))


@networks.register("mlp")
def mlp(spec: NetworkSpec) -> MLP:
    """Dohare et al.'s MLP (the input flattened)."""
    return MLP(spec.input_shape, spec.hidden, spec.output_size, spec.activation, spec.activation_params, spec.bias,
               spec.layer_norm)
