"""Networks built from config, with named hidden layers.

The MLP follows Dohare et al. (2024) by default: Linear layers with
Kaiming-uniform weights (gain of the activation; the output layer with the
linear gain, 1) and zero biases; ``agent.init`` chooses another scheme per
role (agents/init.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from plasticity_lab.agents.activations import bias_init, init_gain, make_activation, width_factor
from plasticity_lab.agents.init import PYTORCH, InitSpec
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
    init: InitSpec = field(default_factory=InitSpec)
    head_bias: bool = True


@dataclass
class UnitLayer:
    """One hidden layer seen as units: ``incoming`` makes its pre-activations,
    ``outgoing`` reads its output, ``norm`` sits between (or is None), and
    ``draw(rows)`` fills rows of ``incoming``'s weight from its init scheme.
    ``fan_out_per_unit`` is how many input columns (or channels) of
    ``outgoing`` each unit feeds: 2 for CReLU/Fourier, in blocks (unit j feeds
    j and j + H), or H*W after a conv->flatten boundary, ``consecutive``
    (channel c feeds c*P .. c*P + P - 1)."""

    name: str
    incoming: nn.Module
    outgoing: nn.Module
    norm: nn.Module | None
    draw: Callable[[torch.Tensor], None]
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
        init: InitSpec | None = None,
        head_bias: bool | None = None,
    ):
        """``input_size``: features, or an input shape (flattened); ``bias``: the
        hidden layers' (``head_bias``: the head's, default the same); ``init``:
        agents/init.py's spec (default Dohare et al.'s)."""
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
        head_bias = bias if head_bias is None else head_bias
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=bias if k < len(hidden) else head_bias)
                                    for k, (i, o) in enumerate(zip(sizes_in, sizes_out)))
        self.init = (init or InitSpec()).filled("kaiming_uniform", "kaiming_uniform", "zero")
        self.norms = nn.ModuleList(nn.LayerNorm(w) if layer_norm else nn.Identity() for w in hidden)
        self.acts = nn.ModuleList(make_activation(activation, w, **params) for w in hidden)
        self.gain = init_gain(activation, params)
        self._act_params = params
        if self.init == PYTORCH:  # the layers were built with PyTorch's init (as a plain nn.Sequential would be)
            self._reset_modules()
        else:
            self.reset_parameters()

    def role(self, i: int) -> str:
        return "head" if i == len(self.layers) - 1 else "hidden"

    def reset_parameters(self) -> None:
        """Each layer's weights from its role's scheme (default Kaiming uniform,
        bound = gain * sqrt(3 / fan_in)), then its biases: zero (or the
        activation's own bias init, e.g. Elephant's spread biases), or PyTorch's."""
        for i, layer in enumerate(self.layers):
            self.draw_weight(i, layer.weight)
            if layer.bias is not None:
                own = bias_init(self.activation, layer.out_features, self._act_params) if self.role(i) == "hidden" else None
                self.init.draw_bias(layer.bias, layer.in_features, own)
        self._reset_modules()

    def _reset_modules(self) -> None:
        """LayerNorms and learnable activations to their initial values (no random draws)."""
        for module in [*self.norms, *self.acts]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        return [*self.hidden_names, "out"]

    def draw_weight(self, i: int, out: torch.Tensor) -> None:
        """Fill ``out`` (``layers[i]``'s weight, or rows of it) from its init scheme."""
        layer = self.layers[i]
        self.init.draw(self.role(i), out, layer.in_features, layer.out_features, self.gain)

    def init_bound(self, i: int) -> float:
        """Half-width of the uniform distribution with ``layers[i]``'s init variance
        (Kaiming uniform: gain * sqrt(3 / fan_in))."""
        layer = self.layers[i]
        return self.init.bound(self.role(i), layer.in_features, layer.out_features, self.gain)

    def unit_layers(self) -> list[UnitLayer]:
        """Each hidden layer as units (what continual backprop and ReDo reset)."""
        factor = self.layers[1].in_features // self.layers[0].out_features
        return [
            UnitLayer(name, self.layers[i], self.layers[i + 1],
                      self.norms[i] if isinstance(self.norms[i], nn.LayerNorm) else None,
                      lambda rows, i=i: self.draw_weight(i, rows), factor)
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
    biases = [spec.bias] * len(spec.hidden) + [spec.head_bias]
    return sum(i * o + (o if b else 0) for i, o, b in zip(sizes_in, sizes_out, biases))


@networks.register("mlp")
def mlp(spec: NetworkSpec) -> MLP:
    """Dohare et al.'s MLP (the input flattened)."""
    return MLP(spec.input_shape, spec.hidden, spec.output_size, spec.activation, spec.activation_params, spec.bias,
               spec.layer_norm, spec.init, spec.head_bias)
