"""Intra-op threads: how many CPU threads a run's tensor operations use.

``train.threads=auto`` (the default) chooses from the work of one training
step, measured as the floating-point operations of a forward pass over one
batch (``torch.utils.flop_counter.FlopCounterMode``: conv nets and MLPs
alike, no hand-written formula per network):

- one thread when the step is small (below :data:`SMALL_STEP_FLOPS`) or the
  batch is (below :data:`SMALL_BATCH`: matrix-vector products, bound by
  memory, not arithmetic): there a second thread gains at most ~1.2x on a
  quiet machine and loses several-fold as soon as another process wants the
  cores (a shared machine: 5,500 vs 24,900 ex/s for the default run);
- otherwise the cores this process may run on (``os.sched_getaffinity``:
  what SLURM or ``taskset`` gave it), divided among the jobs of a sweep that
  run at once on this machine (``parallel_jobs``).

The rule reads nothing that changes from one launch to the next (not the
machine's load), so the same command on the same allocation uses the same
threads and gives the same numbers. ``benchmarks/threads.py`` measures where
more threads pay (2-core CPU, examples/s of 2 threads over 1: 784-100-100-10
x0.84 at batch 1, x1.22 at batch 16; 784-1000-10 batch 16 x1.18; the paper's
784-2000x3-10 x0.89 at batch 1, x1.62 at batch 16, x1.40 at batch 128). A
number (``train.threads=4``) is used as given; the summary records the count
and why, because a run's results depend on it (a different reduction order
rounds differently). On a GPU the threads only drive the host side: one is enough.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plasticity_lab.registry import ConfigError

SMALL_STEP_FLOPS = 1e8
"""Forward FLOPs per step below which one thread is used (784-100-100-10 at batch 16
is 2.9e6, 784-1000-10 at batch 16 2.5e7, the paper's net at batch 16 3.1e8)."""
SMALL_BATCH = 8
"""Batches below this size use one thread (the paper's net at batch 1: 1.9e7 FLOPs, and
two threads are slower)."""


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


def step_flops(net: nn.Module, example: torch.Tensor, batch_size: int) -> float:
    """FLOPs of one forward pass over a batch of ``batch_size`` copies of ``example``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    training = net.training
    net.eval()  # in training mode BatchNorm would fold the probe into its running statistics
    try:
        with torch.no_grad(), counter:
            net(example.unsqueeze(0).expand(min(batch_size, 8), *example.shape))
    finally:
        net.train(training)
    return counter.get_total_flops() * batch_size / min(batch_size, 8)


def choose_threads(setting: Any, flops: float, batch_size: int, device: torch.device,
                   parallel_jobs: int = 1) -> ThreadChoice:
    """The thread count for ``train.threads=setting`` (see the module docstring)."""
    if setting not in (None, "auto"):
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ConfigError("train.threads", setting, "auto, or a positive number of threads")
        return ThreadChoice(setting, "train.threads")
    if device.type != "cpu":
        return ThreadChoice(1, f"auto: the step runs on {device.type}")
    if batch_size < SMALL_BATCH:
        return ThreadChoice(1, f"auto: a small batch ({batch_size} < {SMALL_BATCH})")
    if flops < SMALL_STEP_FLOPS:
        return ThreadChoice(1, f"auto: a small step ({flops:.1e} FLOPs < {SMALL_STEP_FLOPS:.0e})")
    cores = available_cores()
    n = max(1, cores // max(1, parallel_jobs))
    jobs = f" shared by {parallel_jobs} parallel jobs" if parallel_jobs > 1 else ""
    return ThreadChoice(n, f"auto: {flops:.1e} FLOPs per step; {cores} cores{jobs}")


def parallel_jobs() -> int:
    """How many jobs of a Hydra sweep run at once on this machine (1 outside a
    sweep, or with a launcher that runs them one by one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    n = launcher.get("n_jobs") if launcher is not None else None
    if isinstance(n, int) and n < 0:  # joblib's rule: -1 is every core, -2 all but one, ...
        n = available_cores() + 1 + n
    return n if isinstance(n, int) and n > 1 else 1


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (a process-wide setting)."""
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
