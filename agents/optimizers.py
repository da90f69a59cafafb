"""Optimizers: any ``torch.optim`` class by (case-insensitive) name, plus the
lab's own in the same interface (``upgd``)."""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterable

import torch

from plasticity_lab.agents.upgd import UPGD
from plasticity_lab.agents.vmapped import SeedOptimizer
from plasticity_lab.registry import ConfigError

EXTRA = {"upgd": UPGD}


def optimizer_names() -> list[str]:
    """Lower-case names of every optimizer class in ``torch.optim``."""
    return sorted({
        n.lower() for n, c in vars(torch.optim).items()
        if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
    } | set(EXTRA))


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if str(name).lower() in EXTRA:
        return EXTRA[str(name).lower()]
    for n, c in vars(torch.optim).items():
        if n.lower() == str(name).lower() and inspect.isclass(c) and issubclass(c, torch.optim.Optimizer):
            return c
    raise ConfigError("agent.optimizer.name", name, optimizer_names())


def fresh_like(optimizer: torch.optim.Optimizer | SeedOptimizer, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """A new optimizer of ``optimizer``'s class and defaults over ``params``
    (for a seed of vectorised seeds: of its own optimizer's class, not the stack's)."""
    kind = optimizer.kind if isinstance(optimizer, SeedOptimizer) else type(optimizer)
    return kind(params, **optimizer.defaults)


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr, **kwargs)``; ``None`` kwargs are dropped.

    Raises ConfigError for an unknown name, a non-positive lr or a keyword the
    optimizer does not take (listing those it does).
    """
    cls = optimizer_class(name)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < math.inf:
        raise ConfigError("agent.optimizer.lr", lr, "a positive, finite number")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    valid = [p for p in inspect.signature(cls).parameters if p not in ("params", "lr")]
    for key, value in kwargs.items():
        if key not in valid:
            raise ConfigError(f"agent.optimizer.{key}", value, f"a parameter of torch.optim.{cls.__name__}: {', '.join(valid)}")
    try:
        return cls(params, lr=lr, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"agent.optimizer ({cls.__name__})", kwargs, str(err)) from None
