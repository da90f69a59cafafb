"""ResNet-18 for 32x32 images (He et al. 2016), as Dohare et al. use it for
class-incremental CIFAR-100 (Nature 2024; code: shibhansh/loss-of-plasticity,
lop/nets/torchvision_modified_resnet.py): torchvision's ResNet-18 with
BatchNorm, its first convolution 3x3 / stride 1 and no max-pool (the usual
CIFAR variant of the 224-pixel stem), Kaiming-normal convolutions
(torchvision's own init).

Hidden layers seen by the metrics: the outputs of the four residual stages
and the pooled 512-d features (the "last-layer features" whose rank Dohare et
al. report). Every one of them is a ReLU output, so the activation derivative
at those units is 1[output > 0]; ``acts`` are ReLUs and the "pre-activations"
are the outputs themselves, which gives the metrics that same derivative.
Continual backprop and ReDo need a chain of units whose outgoing weights are
the only readers of a unit; residual connections break that (the authors'
ResGnT handles it separately), so ``unit_layers`` refuses.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from plasticity_lab.agents.activations import init_gain
from plasticity_lab.agents.init import fans
from plasticity_lab.agents.networks import NetworkSpec, networks
from plasticity_lab.registry import ConfigError


@networks.register("resnet18")
class ResNet18(nn.Module):
    """torchvision's ResNet-18 with a CIFAR stem and the lab's network contract."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        from torchvision.models import resnet18  # here, not at the top: importing torchvision takes ~2 s

        input_shape = tuple(spec.input_shape)
        if len(input_shape) != 3:
            raise ConfigError("agent.network", "resnet18", f"an image stream (C, H, W input); this stream's input is {input_shape}")
        if not spec.head_bias:
            raise ConfigError("agent.head_bias", False, "true or null (resnet18 keeps torchvision's head with its bias)")
        if spec.activation != "relu":
            raise ConfigError("activation", spec.activation, "relu (resnet18 uses torchvision's ReLU blocks)")
        net = resnet18(num_classes=spec.output_size)
        net.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        self.net = net
        self.activation = "relu"
        self.hidden_names = ["stage1", "stage2", "stage3", "stage4", "pool"]
        self.acts = nn.ModuleList(nn.ReLU() for _ in self.hidden_names)
        named = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.layer_names = ["out" if n == "fc" else n.replace(".", "/") for n, _ in named]
        self.layers = [m for _, m in named]  # a plain list: the modules are registered under self.net
        self.norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        self.init = spec.init
        if self.init.hidden or self.init.head or self.init.bias:  # torchvision's init was drawn; draw another if asked
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's init (Kaiming-normal convs in fan-out mode, BatchNorm 1/0,
        PyTorch's default Linear), or ``agent.init``'s scheme for the convs
        (``hidden``) and the head, and its bias init for the head."""
        for m in self.net.modules():
            if isinstance(m, nn.Conv2d):
                if self.init.hidden:
                    self.init.draw("hidden", m.weight, *fans(m.weight), init_gain("relu", {}))
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        fc = self.net.fc
        if self.init.head:
            self.init.draw("head", fc.weight, *fans(fc.weight), 1.0)
        else:
            fc.reset_parameters()
        if self.init.bias and fc.bias is not None:
            self.init.draw_bias(fc.bias, fc.in_features)

    def init_bound(self, i: int) -> float:
        """Half-width of a uniform init with the layer's init variance: sqrt(6 / fan_out) for
        convs (Kaiming, fan-out mode), 1/sqrt(fan_in) for the head."""
        w = self.layers[i].weight
        if w.dim() == 4:
            return math.sqrt(6.0 / (w.shape[0] * w[0, 0].numel()))
        return 1.0 / math.sqrt(w.shape[1])

    def unit_layers(self) -> list:
        raise ConfigError("agent.network", "resnet18", "mlp or conv_net for unit resets (continual backprop, ReDo): "
                          "residual connections also read a unit, so zeroing its outgoing weights would not remove it")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        feats = []
        for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = stage(x)
            feats.append(x)
        x = torch.flatten(n.avgpool(x), 1)
        feats.append(x)
        return n.fc(x), feats

    def forward_preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
