"""Activation functions, looked up by name.

Register your own with one decorated definition, a function of the
pre-activation tensor (keyword arguments are its parameters) or an
``nn.Module`` class (``__init__`` keywords are its parameters; a ``width``
argument, if it has one, receives the layer's width)::

    @activations.register("mine", gain="relu", exact_zeros=True,
                          derivative=lambda z, h, p=2.0: p * z.clamp(min=0) ** (p - 1))
    def mine(x, p: float = 2.0):
        return x.clamp(min=0) ** p

Everything else the lab knows about an activation is declared in that one
registration (:class:`ActivationFacts`): its init gain, width factor, bias
init, its derivative (which opts it into the fused SGD path) and whether it
outputs exact zeros (which sets the sparsity metrics' threshold).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from plasticity_lab.agents.kernels import KERNEL_CODES
from plasticity_lab.registry import ConfigError, Registry


@dataclass(frozen=True)
class ActivationFacts:
    """What a registration declares about an activation phi.

    ``gain``: the gain of its Kaiming-uniform init (a
    ``torch.nn.init.calculate_gain`` name, a number, or a function of the
    activation's parameters); ``width_factor``: outputs per unit (2 when it
    concatenates two views, as CReLU); ``bias_init(width, **params)``: the
    initial bias of the Linear feeding it (None: zeros); ``derivative(z, h,
    **params)``: phi'(z) elementwise, given the pre-activation z and h =
    phi(z), which the fused SGD path (agents/fused.py) uses instead of
    autograd (only for functions without trainable parameters; None keeps such
    a run on autograd); ``exact_zeros``: phi outputs exact zeros on a whole
    region (the ReLU family), so sparsity counts |h| == 0, not |h| <= eps;
    ``kernel``: the name of phi's built-in code in the compiled batch-1 step
    (agents/compiled_step.py; one of agents/kernels.py ``KERNEL_CODES``), for parameterless functions
    that have one (None: that step leaves it to PyTorch ops).
    """

    gain: Union[str, float, Callable[..., float]] = "relu"
    width_factor: int = 1
    bias_init: Optional[Callable[..., torch.Tensor]] = None
    derivative: Optional[Callable[..., torch.Tensor]] = None
    exact_zeros: bool = False
    kernel: Optional[str] = None


def _check_registration(name: str, obj: Any, facts: ActivationFacts) -> None:
    """A derivative is only meaningful for an elementwise function of fixed parameters."""
    if facts.derivative is not None and inspect.isclass(obj):
        raise TypeError(f"activation {name!r}: derivative= is for function activations (elementwise, no trainable "
                        "parameters); a module activation trains through autograd")
    if facts.kernel is not None and (facts.kernel not in KERNEL_CODES or facts.derivative is None):
        raise TypeError(f"activation {name!r}: kernel= names built-in code ({', '.join(KERNEL_CODES)}) of an "
                        f"activation that also registers its derivative; got {facts.kernel!r}")


activations = Registry("activation", reserved={"width"}, facts=ActivationFacts, check=_check_registration)


class FunctionActivation(nn.Module):
    """Wrap a registered ``f(x, **params)`` as a module with fixed params."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str, params: dict[str, Any]):
        super().__init__()
        self.fn, self.name, self.params = fn, name, dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.params)

    def derivative(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """phi'(z) from the registered derivative (``activation_facts(name).derivative`` must be set)."""
        return activations.facts(self.name).derivative(z, h, **self.params)

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


def activation_facts(name: str) -> ActivationFacts:
    """What ``name``'s registration declared (ConfigError for an unknown name)."""
    return activations.facts(name)


def init_gain(name: str, params: dict[str, Any] | None = None) -> float:
    """The Kaiming gain for ``name``, from its ``gain`` registration fact."""
    gain = activation_facts(name).gain
    if callable(gain):
        return float(gain(**(params or {})))
    if isinstance(gain, str):
        return nn.init.calculate_gain(gain)
    return float(gain)


def width_factor(name: str) -> int:
    """Outputs per unit (2 when the activation concatenates two views)."""
    return int(activation_facts(name).width_factor)


def bias_init(name: str, width: int, params: dict[str, Any] | None = None) -> torch.Tensor | None:
    """The initial bias of the Linear feeding this activation (None: zeros)."""
    fn = activation_facts(name).bias_init
    return None if fn is None else fn(width, **{k: v for k, v in (params or {}).items() if k in inspect.signature(fn).parameters})


def _positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")


@activations.register("relu", gain="relu", exact_zeros=True, derivative=lambda z, h: (z > 0).to(z.dtype), kernel="relu")
def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU: max(0, x) (Nair & Hinton 2010)."""
    return F.relu(x)


@activations.register("leaky_relu", gain=lambda negative_slope=0.01: nn.init.calculate_gain("leaky_relu", negative_slope),
                      derivative=lambda z, h, negative_slope=0.01: torch.where(z > 0, 1.0, negative_slope).to(z.dtype))
def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """Leaky ReLU: x if x > 0 else negative_slope * x (Maas et al. 2013)."""
    if not 0 <= negative_slope < 1:
        raise ValueError("negative_slope must be in [0, 1)")
    return F.leaky_relu(x, negative_slope)


@activations.register("tanh", gain="tanh", derivative=lambda z, h: 1 - h * h, kernel="tanh")
def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent."""
    return torch.tanh(x)


@activations.register("sigmoid", gain="sigmoid", derivative=lambda z, h: h * (1 - h), kernel="sigmoid")
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid 1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


@activations.register("linear", gain="linear", derivative=lambda z, h: torch.ones_like(z), kernel="linear")
def linear(x: torch.Tensor) -> torch.Tensor:
    """Identity (a linear network; the baseline of Dohare et al.'s regression study)."""
    return x



@activations.register("elu", gain="relu", derivative=lambda z, h, alpha=1.0: torch.where(z > 0, torch.ones_like(h), h + alpha))
def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """ELU: x if x > 0 else alpha (e^x - 1) (Clevert et al. 2016). Dohare's code inits with the ReLU gain."""
    _positive(alpha=alpha)
    return F.elu(x, alpha)


SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772
"""SELU's fixed lambda and alpha (Klambauer et al. 2017, eq. 2), as ``F.selu`` uses them."""


@activations.register("selu", gain=1.0, derivative=lambda z, h: torch.where(z > 0, torch.full_like(h, SELU_SCALE), h + SELU_SCALE * SELU_ALPHA))
def selu(x: torch.Tensor) -> torch.Tensor:
    """SELU: lambda (x if x > 0 else alpha (e^x - 1)), lambda = 1.0507..., alpha = 1.6733...
    (Klambauer et al. 2017). LeCun-uniform init (gain 1, bound sqrt(3/fan_in)), as Dohare's code."""
    return F.selu(x)


@activations.register("gelu", gain="relu")
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016); approximate='tanh' for the tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError("approximate must be 'none' or 'tanh'")
    return F.gelu(x, approximate=approximate)


@activations.register("silu", aliases=("swish",), gain="relu",
                      derivative=lambda z, h: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))))
def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / Swish: x sigmoid(x) (Ramachandran et al. 2017; Dohare's "swish", ReLU gain)."""
    return F.silu(x)


@activations.register("softplus", gain="relu", derivative=lambda z, h, beta=1.0: torch.sigmoid(beta * z))
def softplus(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Softplus: log(1 + e^(beta x)) / beta."""
    _positive(beta=beta)
    return F.softplus(x, beta)


@activations.register("relu2", gain="relu", exact_zeros=True, derivative=lambda z, h: 2 * z.clamp(min=0))
def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU: max(0, x)^2 (So et al. 2021, Primer, arXiv:2109.08668)."""
    return F.relu(x).square()


@activations.register("crelu", gain="relu", width_factor=2, exact_zeros=True)
def crelu(x: torch.Tensor) -> torch.Tensor:
    """CReLU: [ReLU(x), ReLU(-x)] concatenated on the feature dim, so the next
    layer sees 2H inputs (Shang et al. 2016; Abbas et al. 2023, arXiv:2303.07507,
    against loss of plasticity). Never dead: one of each pair is active for x != 0."""
    return torch.cat([F.relu(x), F.relu(-x)], dim=-1)


@activations.register("fourier", gain=1.0, width_factor=2)
def fourier(x: torch.Tensor) -> torch.Tensor:
    """Deep Fourier features: [sin(x), cos(x)] concatenated (width doubles)
    (Lewandowski, Schuurmans & Machado, ICLR 2025, arXiv:2410.20634)."""
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


class _ExpandedGate(nn.Module):
    """x * ((1 + 2a) g(x) - a): a gate g with its range expanded to [-a, 1 + a],
    one trainable scalar ``a`` per layer, initialised to ``a`` (0 in the paper)
    (Huang 2024, "Expanded Gating Ranges Improve Activation Functions", arXiv:2405.20768)."""

    gate: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, a: float = 0.0, trainable: bool = True):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)), requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * ((1 + 2 * self.a) * self.gate(x) - self.a)


@activations.register("xsilu", gain="relu")
class XSiLU(_ExpandedGate):
    """xSiLU: x ((1 + 2a) sigmoid(x) - a), trainable a (Huang 2024)."""

    gate = staticmethod(torch.sigmoid)


@activations.register("xgelu", gain="relu")
class XGELU(_ExpandedGate):
    """xGELU: x ((1 + 2a) Phi(x) - a) = x (0.5 + (0.5 + a) erf(x / sqrt 2)), trainable a (Huang 2024)."""

    gate = staticmethod(lambda x: 0.5 * (1 + torch.erf(x * 0.5 ** 0.5)))


@activations.register("xatlu", gain="relu")
class XATLU(_ExpandedGate):
    """xATLU: x ((1 + 2a) (arctan(x) / pi + 1/2) - a), trainable a (Huang 2024)."""

    gate = staticmethod(lambda x: torch.atan(x) / math.pi + 0.5)


@activations.register("crrelu", gain="relu")
class CRReLU(nn.Module):
    """CRReLU: ReLU(x) + eps x exp(-x^2 / 2), eps a trainable scalar, init 0.01
    (Sun et al. 2024, EAFO, arXiv:2405.12954)."""

    def __init__(self, eps: float = 0.01, trainable: bool = True):
        super().__init__()
        self.eps = nn.Parameter(torch.tensor(float(eps)), requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) + self.eps * x * torch.exp(-0.5 * x * x)


def _spread_bias(width: int, bias_std: float = 0.0) -> torch.Tensor:
    """linspace(-sqrt(3) bias_std, sqrt(3) bias_std, H): bell windows tiling the input range (Elephant code)."""
    b = math.sqrt(3.0) * bias_std
    return torch.linspace(-b, b, width)


@activations.register("elephant", gain=3 ** -0.5, bias_init=_spread_bias)
class Elephant(nn.Module):
    """Elephant: h / (1 + |x / a|^d) (Lan & Mahmood 2023, arXiv:2310.01365).

    As the authors' code (qlan3/Elephant, ``networks/utils.py``, ``MLP.py``):
    ``layer_norm`` puts a LayerNorm over the units before the bell;
    ``learnable`` stores a and h per unit in log space (``log_a``, ``log_h``),
    initialised to log(a), log(h); ``d`` is fixed; the preceding Linear's bias
    is spread as linspace(-sqrt(3) bias_std, sqrt(3) bias_std, H) and its
    weights use PyTorch's fan-in uniform bound sqrt(1/fan_in) (gain 1/sqrt(3)).
    Defaults d=4, a=0.1, h=1, bias_std=0 (their MLP defaults; d=8 for regression).
    """

    def __init__(self, width: int, d: float = 4.0, a: float = 0.1, h: float = 1.0, learnable: bool = True,
                 layer_norm: bool = True, bias_std: float = 0.0):
        super().__init__()
        _positive(d=d, a=a, h=h)
        if bias_std < 0:
            raise ValueError(f"bias_std must be >= 0, got {bias_std}")
        self.d = float(d)
        log_a, log_h = torch.full((width,), math.log(a)), torch.full((width,), math.log(h))
        if learnable:
            self.log_a, self.log_h = nn.Parameter(log_a), nn.Parameter(log_h)
        else:
            self.register_buffer("log_a", log_a)
            self.register_buffer("log_h", log_h)
        self.norm = nn.LayerNorm(width) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return torch.exp(self.log_h) / (1 + torch.abs(x / torch.exp(self.log_a)).pow(self.d))


def _unit_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the units of each example (last dim), never over the batch."""
    return x.mean(dim=-1, keepdim=True), x.std(dim=-1, keepdim=True, unbiased=False)


@activations.register("ash", gain="relu")
class ASH(nn.Module):
    """Adaptive SwisH: x sigmoid(alpha (x - mu - z_k sigma)), mu and sigma the
    mean and std of the layer's units for each example (Lee et al. 2022,
    arXiv:2210.11672; Keskinen's port: scalar alpha init 1 and z_k init 0, both
    trainable unless ``trainable=false``)."""

    def __init__(self, alpha: float = 1.0, z_k: float = 0.0, trainable: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=trainable)
        self.z_k = nn.Parameter(torch.tensor(float(z_k)), requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, sigma = _unit_stats(x)
        return x * torch.sigmoid(self.alpha * (x - mu - self.z_k * sigma))


@activations.register("hard_ash", gain="relu", exact_zeros=True)
def hard_ash(x: torch.Tensor, alpha: float = 3.0, z_k: float = 1.9) -> torch.Tensor:
    """Hard ASH: clip(x, 0, 2) sigmoid(alpha (x - mu - z_k sigma)), mu and sigma
    over the layer's units per example, alpha = 3 and z_k fixed (Keskinen 2024,
    arXiv:2404.17651; z_k = 1.9 as the author's pairwise_online_learning code)."""
    _positive(alpha=alpha)
    mu, sigma = _unit_stats(x)
    return x.clamp(0.0, 2.0) * torch.sigmoid(alpha * (x - mu - z_k * sigma))
