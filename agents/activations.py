"""Activation functions, looked up by name.

Register your own with one decorated definition, a function of the
pre-activation tensor (keyword arguments are its parameters) or an
``nn.Module`` class (``__init__`` keywords are its parameters; a ``width``
argument, if it has one, receives the layer's width)::

    @activations.register("mine", gain="relu")
    def mine(x, p: float = 2.0):
        return x.clamp(min=0) ** p

``gain`` is the gain the network builder uses in Kaiming-uniform init (a
``torch.nn.init.calculate_gain`` name or a number); ``width_factor`` says how
many outputs per unit the activation produces (2 for CReLU).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from registry import ConfigError, Registry

activations = Registry("activation", reserved={"width"})


class FunctionActivation(nn.Module):
    """Wrap a registered ``f(x, **params)`` as a module with fixed params."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str, params: dict[str, Any]):
        super().__init__()
        self.fn, self.name, self.params = fn, name, dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([self.name] + [f"{k}={v}" for k, v in self.params.items()])


def make_activation(name: str, width: int, **params: Any) -> nn.Module:
    """Build activation ``name`` for a layer of ``width`` units.

    Unknown names and parameters raise ConfigError listing the valid ones;
    a parameter value the activation rejects (a ValueError) is reported too.
    """
    obj = activations.get(name)
    activations.check_params(name, params)
    try:
        if inspect.isclass(obj):
            takes_width = "width" in inspect.signature(obj).parameters
            return obj(**params, width=width) if takes_width else obj(**params)
        module = FunctionActivation(obj, name, params)
        module(torch.zeros(1, width))  # validate parameter values now, not mid-run
        return module
    except (TypeError, ValueError) as err:
        raise ConfigError(f"activation ({name})", params, str(err)) from None


def init_gain(name: str, params: dict[str, Any] | None = None) -> float:
    """The Kaiming gain for ``name``, from its ``gain`` registration fact."""
    gain = activations.entry(name).meta.get("gain", "relu")
    if callable(gain):
        return float(gain(**(params or {})))
    if isinstance(gain, str):
        return nn.init.calculate_gain(gain)
    return float(gain)


def width_factor(name: str) -> int:
    """Outputs per unit (2 when the activation concatenates two views)."""
    return int(activations.entry(name).meta.get("width_factor", 1))


@activations.register("relu", gain="relu")
def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU: max(0, x) (Nair & Hinton 2010)."""
    return F.relu(x)


@activations.register("leaky_relu", gain=lambda negative_slope=0.01: nn.init.calculate_gain("leaky_relu", negative_slope))
def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """Leaky ReLU: x if x > 0 else negative_slope * x (Maas et al. 2013)."""
    if not 0 <= negative_slope < 1:
        raise ValueError("negative_slope must be in [0, 1)")
    return F.leaky_relu(x, negative_slope)


@activations.register("tanh", gain="tanh")
def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent."""
    return torch.tanh(x)


@activations.register("sigmoid", gain="sigmoid")
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid 1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


@activations.register("linear", gain="linear")
def linear(x: torch.Tensor) -> torch.Tensor:
    """Identity (a linear network; the baseline of Dohare et al.'s regression study)."""
    return x


