"""Vectorised multi-seed runs: ``lab run seeds=[0,1,2,3,4,5,6,7]``.

The seeds train in one process, in lock-step, with their weights stacked:
one batched fused SGD step per batch for an MLP the fused path takes
(agents/stacked.py), else one torch.func.vmap step with one elementwise
optimizer over the stacked tensors (agents/vmapped.py); driven
by the same loop as a single run (lab/loop.py) and opened and checkpointed
as one group (lab/group.py). Each seed is otherwise its
own run — its own stream (permutations from its seed), data order,
initialisation, interventions, tracker, random generators, checkpoint, run
directory (``<out>/seed_<s>``) and W&B run — and ends with the weights and
records of ``lab run seed=<s>`` alone, up to float reassociation (a batched
product of N seeds may sum in another order than the product of one).

Each seed's random numbers come from its own generator state: the global
generators are swapped to a seed's state around everything that runs for that
seed (hooks, augmentation, its task boundary), so one seed's continual-backprop
draws never shift another's. Not available (run the seeds as a sweep,
``--multirun seed=0,1,2``) for a non-elementwise optimizer, the Avalanche
bridge's agents, or streams whose task sizes differ between seeds.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Iterator

import torch

from plasticity_lab.lab import checkpoint
from plasticity_lab.registry import ConfigError


def check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list of distinct integers (ConfigError otherwise)."""
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", seeds, "a non-empty list of distinct integer seeds, e.g. seeds=[0,1,2,3]")
    return seeds


class SeedGenerators:
    """Each run's own random generator state in a group (none to swap for a single run)."""

    def __init__(self, states: list[dict[str, Any]] | None):
        self.states = states

    @classmethod
    def single(cls) -> "SeedGenerators":
        """A group of one: its generators are the process's own, nothing is swapped."""
        return cls(None)

    def own(self, i: int, full: bool = True) -> AbstractContextManager:
        """A context running its block with run i's generators: all of them
        (Python, numpy, torch) at task boundaries, torch's alone per step
        (``full=False``: the only ones a step's hooks and augmentation draw from)."""
        return nullcontext() if self.states is None else _swapped(self.states, i, full)

    def state(self, i: int) -> dict[str, Any]:
        """Run i's generator state now (for a checkpoint)."""
        return checkpoint.rng_state() if self.states is None else self.states[i]

    def restore(self, i: int, state: dict[str, Any]) -> None:
        """Run i's generators as a checkpoint kept them."""
        if self.states is None:
            checkpoint.set_rng_state(state)
        else:
            self.states[i] = state


@contextmanager
def _swapped(states: list[dict[str, Any]], i: int, full: bool) -> Iterator[None]:
    cuda = "cuda" in states[i] and torch.cuda.is_available()
    dev = torch.cuda.current_device() if cuda else 0
    if full:
        checkpoint.set_rng_state(states[i])
    else:
        torch.set_rng_state(states[i]["torch"])
        if cuda:
            torch.cuda.set_rng_state(states[i]["cuda"][dev])
    try:
        yield
    finally:
        if full:
            states[i] = checkpoint.rng_state()
        else:
            states[i]["torch"] = torch.get_rng_state()
            if cuda:
                states[i]["cuda"][dev] = torch.cuda.get_rng_state()
