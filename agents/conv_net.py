"""The convolutional network of Dohare et al.'s continual-ImageNet experiment
(Nature 2024, Methods "Continual ImageNet"; code: shibhansh/loss-of-plasticity, lop/nets/conv_net.py):

    conv 3->32 k5, act, maxpool 2 -> conv 32->64 k3, act, maxpool 2 ->
    conv 64->128 k3, act, maxpool 2 -> flatten (128 x 2 x 2 at 32x32 input) ->
    fc 512->128, act -> fc 128->128, act -> fc 128->outputs

with PyTorch's default initialisation (weights and biases U(-1/sqrt(fan_in),
1/sqrt(fan_in))), as the paper's code. A unit of a conv layer is an output
channel; its features (what continual backprop and the metrics read) are the
post-pool maps, and the last conv layer's channel c feeds the flattened
columns c*P .. c*P+P-1 of the first fc layer (P = pooled positions, 4 here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plasticity_lab.agents.activations import init_gain, make_activation, width_factor
from plasticity_lab.agents.init import PYTORCH, fans
from plasticity_lab.agents.networks import NetworkSpec, UnitLayer, networks
from plasticity_lab.registry import ConfigError


def channelwise(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Apply ``act`` with channels as its unit axis (N, C, H, W -> per channel),
    so activations with per-unit parameters (Elephant's a, h) work on conv maps."""
    return act(z.movedim(1, -1)).movedim(-1, 1) if z.dim() == 4 else act(z)


@networks.register("conv_net")
class ConvNet(nn.Module):
    """Conv layers of ``channels`` (kernel 5 first, 3 after; each followed by the
    activation and a 2x2 max-pool), then fc layers of ``hidden`` widths and the head."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        input_shape, hidden, channels, activation = tuple(spec.input_shape), list(spec.hidden), list(spec.channels), spec.activation
        if len(input_shape) != 3:
            raise ConfigError("agent.network", "conv_net", f"an image stream (C, H, W input); this stream's input is {input_shape}")
        if not channels or any((not isinstance(c, int)) or c < 1 for c in channels):
            raise ConfigError("agent.channels", channels, "a non-empty list of positive channel counts")
        if not hidden or any((not isinstance(w, int)) or w < 1 for w in hidden):
            raise ConfigError("agent.hidden", hidden, "a non-empty list of positive layer widths")
        if width_factor(activation) != 1:
            raise ConfigError("activation", activation, "an activation that keeps the width (conv_net does not support CReLU/Fourier)")
        if spec.layer_norm:
            raise ConfigError("agent.layer_norm", True, "false (conv_net has no normalisation layers)")
        bias, output_size = spec.bias, spec.output_size
        params = dict(spec.activation_params)
        self.activation = activation
        kernels = [5] + [3] * (len(channels) - 1)
        sizes = [input_shape[0], *channels]
        convs = [nn.Conv2d(i, o, k, bias=bias) for i, o, k in zip(sizes[:-1], sizes[1:], kernels)]
        with torch.no_grad():
            probe = torch.zeros(1, *input_shape)
            try:
                for conv in convs:
                    probe = F.max_pool2d(conv(probe), 2)
            except RuntimeError:
                raise ConfigError("agent.channels", channels,
                                  f"fewer conv layers for {input_shape} inputs (the maps shrink to nothing)") from None
        self.positions = int(probe.shape[2] * probe.shape[3])
        widths = [channels[-1] * self.positions, *hidden]
        fcs = [nn.Linear(i, o, bias=bias if k < len(hidden) else spec.head_bias)
               for k, (i, o) in enumerate(zip(widths, [*hidden, output_size]))]
        self.init = spec.init.filled("pytorch", "pytorch", "pytorch")
        self.gain = init_gain(activation, params)
        self.num_conv = len(convs)
        self.layers = nn.ModuleList([*convs, *fcs])
        self.hidden_names = [f"conv{i + 1}" for i in range(len(convs))] + [f"fc{i + 1}" for i in range(len(hidden))]
        self.norms = nn.ModuleList(nn.Identity() for _ in self.hidden_names)
        self.acts = nn.ModuleList(make_activation(activation, w, **params) for w in [*channels, *hidden])
        if self.init != PYTORCH:  # the layers were built with PyTorch's init: draw another only when asked
            self.reset_parameters()

    @property
    def layer_names(self) -> list[str]:
        return [*self.hidden_names, "out"]

    def role(self, i: int) -> str:
        return "head" if i == len(self.layers) - 1 else "hidden"

    def reset_parameters(self) -> None:
        """Every layer from ``agent.init`` (default: PyTorch's own init of each
        layer, weights then biases, as the paper's code keeps it)."""
        for i, layer in enumerate(self.layers):
            self.draw_weight(i, layer.weight)
            if layer.bias is not None:
                self.init.draw_bias(layer.bias, fans(layer.weight)[0])
        for module in self.acts:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def draw_weight(self, i: int, out: torch.Tensor) -> None:
        """Fill ``out`` (``layers[i]``'s weight, or some of its output channels) from its init scheme."""
        self.init.draw(self.role(i), out, *fans(self.layers[i].weight), self.gain)

    def init_bound(self, i: int) -> float:
        """Half-width of the uniform distribution with layer i's init variance
        (PyTorch's default: sqrt(1 / fan_in))."""
        return self.init.bound(self.role(i), *fans(self.layers[i].weight), self.gain)

    def unit_layers(self) -> list[UnitLayer]:
        """Channels of each conv layer and units of each hidden fc layer."""
        out = []
        for i, name in enumerate(self.hidden_names):
            last_conv = i == self.num_conv - 1
            out.append(UnitLayer(name, self.layers[i], self.layers[i + 1], None, lambda rows, i=i: self.draw_weight(i, rows),
                                 self.positions if last_conv else 1, consecutive=last_conv))
        return out

    def _hidden(self, x: torch.Tensor, keep_pre: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        feats, pre = [], []
        for i, (layer, act) in enumerate(zip(self.layers[:-1], self.acts)):
            if i == self.num_conv:
                x = x.flatten(1)
            z = layer(x)
            if keep_pre:
                pre.append(z)
            x = channelwise(act, z)
            if i < self.num_conv:
                x = F.max_pool2d(x, 2)
            feats.append(x)
        if self.num_conv == len(self.layers) - 1:
            x = x.flatten(1)
        return x, feats, pre

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each hidden layer's output (post-pool for conv layers)."""
        h, feats, _ = self._hidden(x, keep_pre=False)
        return self.layers[-1](h), feats

    def forward_preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's input to its activation (conv maps before pooling)."""
        return self._hidden(x, keep_pre=True)[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
