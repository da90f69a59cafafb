"""Intra-op threads: how many CPU threads a run's tensor operations use.

``train.threads=auto`` (the default) chooses from the work of one training
step, measured as the floating-point operations of a forward pass over one
batch (``torch.utils.flop_counter.FlopCounterMode``: conv nets and MLPs
alike, no hand-written formula per network):

- below :data:`SMALL_STEP_FLOPS` one thread: a small step is mostly per-call
  overhead, which threads do not shorten, and extra threads only wait for a
  core (on a shared machine, ten times slower than one thread);
- above it, the cores this process may run on (``os.sched_getaffinity``:
  what SLURM or ``taskset`` gave it), less the ones other processes keep busy
  (the 1-minute load average), divided among the jobs of a sweep that run at
  once on this machine (``parallel_jobs``).

``benchmarks/threads.py`` measures where more threads start to pay; its
figures set :data:`SMALL_STEP_FLOPS`. A number (``train.threads=4``) is used
as given; the summary records the count and why it was chosen, because a
run's results depend on it (a different reduction order rounds differently).
On a GPU the threads only drive the host side: one is enough.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plasticity_lab.registry import ConfigError

SMALL_STEP_FLOPS = 2e8
"""Forward FLOPs per step below which one thread is fastest (benchmarks/threads.py:
784-100-100-10 at batch 16 is 2.9e6, the paper net at batch 1 1.9e7, conv_net at batch 100 ~3e9)."""


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded down."""
    try:
        return int(os.getloadavg()[0])
    except OSError:
        return 0


def step_flops(net: nn.Module, example: torch.Tensor, batch_size: int) -> float:
    """FLOPs of one forward pass over a batch of ``batch_size`` copies of ``example``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(example.unsqueeze(0).expand(min(batch_size, 8), *example.shape))
    return counter.get_total_flops() * batch_size / min(batch_size, 8)


def choose_threads(setting: Any, flops: float, device: torch.device, parallel_jobs: int = 1) -> ThreadChoice:
    """The thread count for ``train.threads=setting`` (see the module docstring)."""
    if setting not in (None, "auto"):
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ConfigError("train.threads", setting, "auto, or a positive number of threads")
        return ThreadChoice(setting, "train.threads")
    if device.type != "cpu":
        return ThreadChoice(1, f"auto: the step runs on {device.type}")
    if flops < SMALL_STEP_FLOPS:
        return ThreadChoice(1, f"auto: a small step ({flops:.1e} FLOPs < {SMALL_STEP_FLOPS:.0e})")
    cores, busy = available_cores(), busy_cores()
    free = max(1, cores - busy)
    n = max(1, free // max(1, parallel_jobs))
    jobs = f", {parallel_jobs} parallel jobs" if parallel_jobs > 1 else ""
    return ThreadChoice(n, f"auto: {flops:.1e} FLOPs per step; {cores} cores, {busy} busy{jobs}")


def parallel_jobs() -> int:
    """How many jobs of a Hydra sweep run at once on this machine (1 outside a
    sweep, or with a launcher that runs them one by one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    n = launcher.get("n_jobs") if launcher is not None else None
    if isinstance(n, int) and n < 0:  # joblib: -1 is every core
        return available_cores()
    return n if isinstance(n, int) and n > 1 else 1


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (a process-wide setting)."""
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
