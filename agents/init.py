"""Weight initialisation: schemes by name, chosen per role (hidden layers, head).

In the plasticity literature the init is an experimental variable (L2-init
and resets return to it; Elephant's and Hard ASH's authors choose their own),
so it is a config key, ``agent.init``:

- ``hidden`` / ``head``: a scheme registered here (``lab list`` shows them);
- ``hidden_gain`` / ``head_gain``: the gain of schemes that take one; null is
  the scheme's own default (``gain="activation"``: the activation's registered
  gain for hidden layers, 1 for the linear head);
- ``bias``: ``zero`` (or the activation's own bias init, e.g. Elephant's) or
  ``pytorch`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as ``nn.Linear``/``Conv2d``).

The default (Kaiming uniform with the activation's gain, gain-1 head, zero
biases) is Dohare et al.'s (2024) DeepFFNN init (``lop/nets/ffnn.py`` of
shibhansh/loss-of-plasticity). A scheme draws in place into ``weight``, which
may be a whole layer or some of its rows (the units continual backprop or ReDo
re-initialise), so the fans are passed, not read from the shape. Every draw
uses torch's global generator (seeded, checkpointed). A plug-in scheme is one
decorated function::

    @inits.register("my_init", gain="activation")
    def my_init(weight, fan_in, fan_out, gain):
        weight.normal_(0, gain / fan_in ** 0.5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import nn

from plasticity_lab.registry import ConfigError, Registry

KERAS_TRUNCATION = 0.87962566103423978
"""Std of a unit normal truncated to [-2, 2]: Keras' VarianceScaling divides by it so the
truncated draw keeps the intended variance (keras/initializers, ``truncated_normal``)."""


def _uniform_bound(std: Callable[[int, int, float], float]) -> Callable[[int, int, float], float]:
    return lambda fan_in, fan_out, gain: std(fan_in, fan_out, gain) * 3.0 ** 0.5


@dataclass(frozen=True)
class InitFacts:
    """``gain``: the scheme's default gain: "activation" (the activation's
    gain for hidden layers, 1 for the head), a number, or None (takes none).
    ``bound(fan_in, fan_out, gain)``: the half-width of the uniform
    distribution with the scheme's variance (the noise shrink & perturb adds
    and the uniform resets draw)."""

    gain: Union[str, float, None] = "activation"
    bound: Callable[[int, int, float], float] = lambda fan_in, fan_out, gain: gain * (3.0 / fan_in) ** 0.5


inits = Registry("init", facts=InitFacts)


@inits.register("kaiming_uniform", gain="activation")
def kaiming_uniform(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """U(-b, b), b = gain * sqrt(3 / fan_in) (He et al. 2015; Dohare et al. 2024's default)."""
    bound = gain * (3.0 / fan_in) ** 0.5
    weight.uniform_(-bound, bound)


@inits.register("kaiming_normal", gain="activation", bound=_uniform_bound(lambda fi, fo, g: g / fi ** 0.5))
def kaiming_normal(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """N(0, (gain / sqrt(fan_in))^2) (He et al. 2015; ``nn.init.kaiming_normal_``, fan_in mode)."""
    weight.normal_(0.0, gain / fan_in ** 0.5)


@inits.register("he_normal", gain=math.sqrt(2.0), bound=_uniform_bound(lambda fi, fo, g: g / fi ** 0.5))
def he_normal(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """Keras' ``he_normal``: a normal truncated at 2 std with variance gain^2 / fan_in (gain sqrt 2)."""
    std = gain / fan_in ** 0.5 / KERAS_TRUNCATION
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)


@inits.register("lecun_normal", gain=1.0, bound=_uniform_bound(lambda fi, fo, g: g / fi ** 0.5))
def lecun_normal(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """Keras' ``lecun_normal`` (LeCun et al. 1998): truncated normal, variance gain^2 / fan_in (gain 1)."""
    he_normal(weight, fan_in, fan_out, gain)


@inits.register("xavier_uniform", gain=1.0, bound=lambda fi, fo, g: g * (6.0 / (fi + fo)) ** 0.5)
def xavier_uniform(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    bound = gain * (6.0 / (fan_in + fan_out)) ** 0.5
    weight.uniform_(-bound, bound)


@inits.register("xavier_normal", gain=1.0, bound=_uniform_bound(lambda fi, fo, g: g * (2.0 / (fi + fo)) ** 0.5))
def xavier_normal(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """N(0, gain^2 * 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    weight.normal_(0.0, gain * (2.0 / (fan_in + fan_out)) ** 0.5)


@inits.register("orthogonal", gain="activation", bound=_uniform_bound(lambda fi, fo, g: g / max(fi, fo) ** 0.5))
def orthogonal(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float) -> None:
    """Orthonormal rows times gain (Saxe et al. 2014; ``nn.init.orthogonal_``). Re-initialised
    units get rows orthonormal among themselves (not to the rows they join)."""
    flat = weight.view(weight.shape[0], -1)
    nn.init.orthogonal_(flat, gain=gain)


@inits.register("pytorch", gain=None, bound=lambda fi, fo, g: 1.0 / fi ** 0.5)
def pytorch(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float | None) -> None:
    """PyTorch's ``nn.Linear``/``nn.Conv2d`` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (``kaiming_uniform_(a=sqrt(5))``)."""
    nn.init.kaiming_uniform_(weight.view(weight.shape[0], -1), a=math.sqrt(5))


BIAS_INITS = ("zero", "pytorch")


@dataclass(frozen=True)
class InitSpec:
    """The ``agent.init`` config: a scheme and gain per role, and the bias
    init; a None scheme or bias is the network's own default (:meth:`filled`)."""

    hidden: str | None = None
    head: str | None = None
    hidden_gain: float | None = None
    head_gain: float | None = None
    bias: str | None = None

    def filled(self, hidden: str, head: str, bias: str) -> "InitSpec":
        """This spec with a network's defaults where it says None."""
        return InitSpec(self.hidden or hidden, self.head or head, self.hidden_gain, self.head_gain, self.bias or bias)

    def check(self) -> None:
        for role in ("hidden", "head"):
            name = getattr(self, role)
            if name is not None and name not in inits:
                raise ConfigError(f"agent.init.{role}", name, inits.names())
            gain = getattr(self, f"{role}_gain")
            if gain is not None and (not isinstance(gain, (int, float)) or not gain > 0):
                raise ConfigError(f"agent.init.{role}_gain", gain, "a positive number, or null (the scheme's default)")
            if gain is not None and name is not None and inits.facts(name).gain is None:
                raise ConfigError(f"agent.init.{role}_gain", gain, f"null: the {name} scheme takes no gain")
        if self.bias is not None and self.bias not in BIAS_INITS:
            raise ConfigError("agent.init.bias", self.bias, BIAS_INITS)

    def gain(self, role: str, activation_gain: float) -> float | None:
        """The gain layer of ``role`` ("hidden" or "head") is drawn with."""
        override = getattr(self, f"{role}_gain")
        default = inits.facts(getattr(self, role)).gain
        if override is not None and default is not None:
            return float(override)
        if default == "activation":
            return activation_gain if role == "hidden" else 1.0
        return default

    def bound(self, role: str, fan_in: int, fan_out: int, activation_gain: float) -> float:
        """Half-width of the uniform distribution with ``role``'s init variance."""
        return inits.facts(getattr(self, role)).bound(fan_in, fan_out, self.gain(role, activation_gain) or 1.0)

    def draw(self, role: str, weight: torch.Tensor, fan_in: int, fan_out: int, activation_gain: float) -> None:
        """Fill ``weight`` (a layer's weight, or rows of it) with ``role``'s scheme."""
        with torch.no_grad():
            inits.get(getattr(self, role))(weight, fan_in, fan_out, self.gain(role, activation_gain))

    def draw_bias(self, bias: torch.Tensor, fan_in: int, own: torch.Tensor | None = None) -> None:
        """Fill ``bias``: zero (or ``own``, the activation's bias init), or PyTorch's U(-1/sqrt(fan_in), ...)."""
        with torch.no_grad():
            if self.bias == "pytorch":
                bound = 1.0 / fan_in ** 0.5 if fan_in > 0 else 0.0
                bias.uniform_(-bound, bound)
            elif own is not None:
                bias.copy_(own)
            else:
                bias.zero_()


PYTORCH = InitSpec("pytorch", "pytorch", None, None, "pytorch")
"""PyTorch's own init of every layer (what ``nn.Linear``/``nn.Conv2d`` draw when built)."""


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv2d weight."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def as_spec(config: Any) -> InitSpec:
    """An InitSpec from the ``agent.init`` mapping (checked)."""
    spec = InitSpec(**dict(config or {}))
    spec.check()
    return spec
