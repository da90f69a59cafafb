"""N seeds of any network with any elementwise optimizer, trained as one:
each parameter (and buffer) of the N seeds' models stacked along a leading
dimension, the forward of every seed on its own batch at once with
``torch.func.vmap`` over ``torch.func.functional_call``, one backward of the
summed per-seed losses (seeds share no weight, so seed i's gradient is its own
loss's), and ONE torch optimizer over the stacked tensors.

For an elementwise optimizer (every state entry and update of weight w reads
only w, its gradient and its own state: SGD with or without momentum, Adam,
AdamW, Adagrad, RMSprop, ...) that optimizer is exactly N independent ones.
The state entries torch keeps per tensor, not per entry (Adam's ``step``), are
the same for every seed because the seeds step together.

Each seed keeps its own Agent, exactly as in the fused stack
(agents/stacked.py): its model's parameters and buffers are re-pointed at
views of its slice (``tensor.data = stack[i]``), so its interventions,
metrics, evaluations and checkpoints read and write its own slice in place;
its ``optimizer`` becomes a :class:`SeedOptimizer`, seed i's share of the
stacked optimizer in the interface unit resets and checkpoints use
(``param_groups``, ``state``, ``state_dict``): a seed's checkpoint has the
layout of a seed trained alone, and a unit reset clears the seed's entries of
the stacked state.

The results equal each seed trained alone up to float rounding: a batched
matrix product is not bit-identical to the single one on every kernel.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from plasticity_lab.agents.agent import Agent, StackedMasks, StepInfo
from plasticity_lab.agents.linear_grad import WeightLayoutLinear

ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.RMSprop,
               torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adadelta)
"""torch.optim classes whose update of an entry reads only that entry, its
gradient and its own state (so one over stacked seeds is N independent ones).
Not here: LBFGS (a line search over all weights), SparseAdam (sparse
gradients), Adafactor (factored second moments over rows and columns), the
lab's UPGD (it draws noise: seeds would share a generator), ASGD and Rprop
(elementwise, but untested here)."""

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

PER_TENSOR_KEYS = ("step", "mu_product")
"""State entries torch keeps per tensor, not per entry (a step count, NAdam's
momentum product): one value for every seed of a stack."""

PER_TENSOR_COUNTERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
                       torch.optim.RAdam)
"""Optimizers whose update reads a per-tensor step count (bias correction):
one seed's tensor cannot restart it alone (Adagrad too, where ``lr_decay``
makes its step count matter)."""


def vmap_reason(agent: Agent, drops_state: bool = False, sits_out: bool = False) -> str | None:
    """Why seeds of ``agent`` cannot be stacked here (None when they can).
    ``drops_state``: an intervention drops a whole tensor's optimizer state
    (a full reset), which a stacked tensor can do for one seed only where no
    per-tensor counter restarts with it. ``sits_out``: seeds' tasks differ in
    size, so a seed sometimes sits a step out (agents/idle.py), which it can
    only where no per-tensor counter enters the update (the stack's counts every step)."""
    opt = agent.optimizer
    if type(agent) is not Agent:
        return f"agent {type(agent).__name__} (vectorised seeds: the lab's own learner)"
    if type(opt) not in ELEMENTWISE:
        return (f"optimizer {type(opt).__name__} (vectorised seeds: an elementwise one, "
                + ", ".join(c.__name__ for c in ELEMENTWISE) + ")")
    counts = isinstance(opt, PER_TENSOR_COUNTERS) or (isinstance(opt, torch.optim.Adagrad) and
                                                       any(g["lr_decay"] for g in opt.param_groups))
    if drops_state and counts:
        return f"a reset that restarts {type(opt).__name__}'s per-tensor step count"
    if sits_out and counts:
        return (f"tasks of different sizes for different seeds with {type(opt).__name__}, whose update reads "
                "a per-tensor step count that a seed sitting out a step cannot keep")
    if (drops_state or sits_out) and isinstance(opt, torch.optim.SGD) and any(g["dampening"] for g in opt.param_groups):
        return ("SGD dampening with a reset or with tasks of different sizes for different seeds (its first step "
                "after a dropped or not yet built state is undamped; a stacked state exists for every seed)")
    return None


def batches_seeds(model: nn.Module) -> bool:
    """Whether stacked seeds of ``model`` run one vmapped forward (one batched
    kernel per op for all seeds) rather than each seed's forward in turn over
    its slice: always on a GPU; on the CPU unless the net convolves (vmap makes
    a convolution grouped, slower there than N separate ones: 8 seeds of
    continual ImageNet's conv net at batch 100 took 974 ms per step vmapped,
    779 ms in turn, against 8 x 96-105 ms alone)."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return not on_cpu or not any(isinstance(m, CONV) for m in model.modules())


class _Features(nn.Module):
    """``forward`` = the network's ``forward_features``, for ``functional_call``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net.forward_features(x)


class _Penalty(nn.Module):
    """``forward`` = one seed's penalty of the network, for ``functional_call``."""

    def __init__(self, net: nn.Module, penalty: Callable[[nn.Module], torch.Tensor]):
        super().__init__()
        self.net, self.penalty = net, penalty

    def forward(self) -> torch.Tensor:
        return self.penalty(self.net)


class VmapStep:
    """One update of N agents of one configuration (see the module docstring)."""

    def __init__(self, agents: list[Agent], batched: bool | None = None):
        """``batched``: vmap the forward (None: as :func:`batches_seeds` decides)."""
        first = agents[0]
        self.agents, self.n = agents, len(agents)
        self.loss_fn, self.loss_name = first.loss_fn, first.loss_name
        self.wrapper = _Features(first.model)
        names = [n for n, _ in first.model.named_parameters()]
        seeds = [dict(a.model.named_parameters()) for a in agents]
        self.params = {n: torch.stack([s[n].detach() for s in seeds]).requires_grad_(seeds[0][n].requires_grad)
                       for n in names}
        for n in names:  # each seed's parameters: contiguous views of its slice, laid out as alone
            for i, s in enumerate(seeds):
                s[n].data = self.params[n].detach()[i]
        buffers = [dict(a.model.named_buffers()) for a in agents]
        self.buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        for n, stacked in self.buffers.items():
            for i, b in enumerate(buffers):
                b[n].data = stacked[i]
        self.optimizer = _stacked_optimizer(first.optimizer, first.model, self.params)
        owns = [a.optimizer for a in agents]
        for i, (a, own) in enumerate(zip(agents, owns)):
            a.optimizer = SeedOptimizer(self.optimizer, i, [(seeds[i][n], self.params[n]) for n in names], own)
        siblings = [a.optimizer for a in agents]
        for a, own in zip(agents, owns):
            a.optimizer.siblings = siblings
            a.optimizer.adopt(own.state)  # a resumed seed's loaded state moves into its slice
        self.trained = [n for n in names if self.params[n].requires_grad]
        self.penalties = [[_Penalty(a.model, p) for p in a.penalties] for a in agents]
        self.last_grads: list[torch.Tensor | None] = []
        self.masks = StackedMasks(agents)
        """(N, out) head masks of the seeds (None when no seed masks its logits)."""
        self.batched = batches_seeds(first.model) if batched is None else batched
        on_cpu = next(iter(self.params.values())).device.type == "cpu"
        self.layout = WeightLayoutLinear if self.batched and on_cpu else nullcontext
        """Linear weight gradients in the weights' layout where the fused CPU optimizer would need a copy (agents/linear_grad.py)."""
        self._forward = vmap(self._seed_forward, in_dims=(0, 0, 0, 0, 0), randomness="error")
        self._forward_unmasked = vmap(self._seed_forward, in_dims=(0, 0, 0, 0, None), randomness="error")

    def _seed_forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor, mask: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One seed's loss, logits and hidden features (vmapped over the seeds)."""
        state = {f"net.{k}": v for k, v in params.items()} | {f"net.{k}": v for k, v in buffers.items()}
        logits, feats = functional_call(self.wrapper, state, (x,))
        if mask is not None:
            logits = logits + mask
        return self.loss_fn(logits, y), logits, feats

    def _forward_each(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor, mask: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """What the vmapped forward returns, one seed after another: each seed's
        slices come from ``unbind`` (whose backward stacks the N gradients in one copy).
        (A layer that drew random numbers would draw from the process's generator
        here, where vmap refuses; no network of the lab draws in its forward.)"""
        views = {k: v.unbind(0) for k, v in params.items()}
        bufs = {k: v.unbind(0) for k, v in buffers.items()}
        outs = [self._seed_forward({k: v[i] for k, v in views.items()}, {k: v[i] for k, v in bufs.items()}, x[i], y[i],
                                   None if mask is None else mask[i]) for i in range(self.n)]
        return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]),
                [torch.stack([o[2][j] for o in outs]) for j in range(len(outs[0][2]))])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable[[int], StepInfo]]:
        """Update every seed on its batch ``x[i], y[i]`` ((N, B, ...) and (N, B));
        returns per-seed loss (N,), correct predictions (N,) and seed i's StepInfo on demand."""
        mask = self.masks()
        if not self.batched:
            forward = self._forward_each
        else:
            forward = self._forward_unmasked if mask is None else self._forward
        with self.layout():
            loss, logits, feats = forward(self.params, self.buffers, x, y, mask)
        total = loss.sum()
        if any(self.penalties):
            total = total + self._penalties()
        grads = torch.autograd.grad(total, [self.params[n] for n in self.trained], allow_unused=True)
        for n, g in zip(self.trained, grads):  # in the parameter's layout: torch's fused CPU optimizers
            p = self.params[n]                  # (2.14) read a transposed gradient as if it were not
            p.grad = g if g is None or g.stride() == p.stride() else g.contiguous()
        self.last_grads = list(grads)
        self.optimizer.step()
        loss, logits, feats = loss.detach(), logits.detach(), [f.detach() for f in feats]
        if self.loss_name == "cross_entropy":
            correct = (logits.argmax(2) == y).sum(1)
        else:
            correct = torch.zeros(self.n, dtype=torch.long, device=y.device)

        def info(i: int) -> StepInfo:
            return StepInfo(x[i], y[i], logits[i], loss[i], correct[i], [f[i] for f in feats], lambda: self.grads(i))

        return loss, correct, info

    def _penalties(self) -> torch.Tensor:
        """Every seed's penalties of its own slice (an L2-init penalty reads the seed's own initial weights)."""
        total = torch.zeros((), device=next(iter(self.params.values())).device)
        for i, penalties in enumerate(self.penalties):
            state = {f"net.{k}": v[i] for k, v in self.params.items()}
            for penalty in penalties:
                total = total + functional_call(penalty, state, ())
        return total

    def grads(self, i: int) -> list[torch.Tensor]:
        """Seed i's gradients of its last step, in ``model.parameters()`` order."""
        return [g[i] for g in self.last_grads if g is not None]

    def flush(self) -> None:
        """Nothing pends between steps here."""


def _per_entry(key: str, value: Any, stacked: torch.Tensor) -> bool:
    """Whether optimizer state ``key`` holds one value per entry of ``stacked`` (not a per-tensor count)."""
    return isinstance(value, torch.Tensor) and key not in PER_TENSOR_KEYS and value.shape == stacked.shape


def _stacked_optimizer(own: torch.optim.Optimizer, model: nn.Module,
                       params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
    """An optimizer of ``own``'s class and hyperparameters over the stacked
    tensors, group by group. On the CPU, torch's fused implementation (one
    kernel per step instead of one pass per elementwise op: Adam 10x, Adagrad
    3x faster on 8 stacked 784x1000 weights here) where the class has one and
    the run left ``fused`` and ``foreach`` unset (on a GPU torch already picks
    its multi-tensor one). The same update up to float rounding."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[name_of[id(p)]] for p in g["params"]]}
              for g in own.param_groups]
    defaults = dict(own.defaults)
    on_cpu = all(p.device.type == "cpu" for p in params.values())
    if on_cpu and defaults.get("fused", False) is None and defaults.get("foreach") is None:
        defaults["fused"] = True
        for g in groups:
            g["fused"] = True
    return type(own)(groups, **defaults)


IMPLEMENTATION_KEYS = ("fused", "foreach")
"""Group keys that choose how torch computes an update, not what it computes:
a seed reports its own optimizer's values, not the stack's."""


class _GroupView(MutableMapping):
    """One param group of a seed: its own parameters under ``params``; every
    hyperparameter read from and written to the stacked group, which all seeds share."""

    def __init__(self, group: dict[str, Any], params: list[torch.Tensor], own: dict[str, Any]):
        self.group, self.params, self.own = group, params, own

    def __getitem__(self, key: str) -> Any:
        if key == "params":
            return self.params
        return self.own[key] if key in IMPLEMENTATION_KEYS and key in self.own else self.group[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "params":
            raise KeyError("a seed's parameters are fixed by its stack")
        self.group[key] = value

    def __delitem__(self, key: str) -> None:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.group)

    def __len__(self) -> int:
        return len(self.group)


class SeedOptimizer:
    """Seed i's share of an optimizer over stacked tensors, with what unit
    resets, schedules, probes and checkpoints use of a torch optimizer:
    ``param_groups`` (the seed's parameters; hyperparameters read from and
    written to the stack's groups), ``state`` (per seed parameter, views of
    slice i of the stacked state), ``kind`` and ``defaults`` (the seed's own
    optimizer's class and defaults: a probe builds a fresh one from them),
    ``state_dict`` / ``load_state_dict`` in the layout of the seed's own optimizer."""

    def __init__(self, stacked: torch.optim.Optimizer, index: int, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                 own: torch.optim.Optimizer):
        """``pairs``: per seed parameter, the stacked tensor whose slice ``index`` it is;
        ``own``: the seed's optimizer before stacking."""
        self.stacked, self.index, self.pairs = stacked, index, pairs
        self.kind: type[torch.optim.Optimizer] = type(own)
        self.defaults: dict[str, Any] = dict(own.defaults)
        self._own_groups = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in own.param_groups]
        self._stack_of = {id(p): s for p, s in pairs}
        self._own_of = {id(s): p for p, s in pairs}
        self.behind: dict[int, float] = {}
        """Per stacked tensor: how many of the stack's steps (its per-tensor ``step``) this seed sat out."""
        self.siblings: list[SeedOptimizer] = [self]
        """Every seed's optimizer of the stack (set by the stack): adopting a larger count moves their offsets."""

    @property
    def param_groups(self) -> list[_GroupView]:
        return [_GroupView(g, [self._own_of[id(s)] for s in g["params"]], own)
                for g, own in zip(self.stacked.param_groups, self._own_groups)]

    @property
    def state(self) -> "SeedState":
        return SeedState(self)

    def slice_of(self, param: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """The stacked tensor holding ``param`` and its state (None for a tensor of another model)."""
        stacked = self._stack_of.get(id(param))
        return None if stacked is None else (stacked, self.stacked.state.get(stacked, {}))

    def state_dict(self) -> dict[str, Any]:
        """The state dict seed i's own optimizer would have (entries cloned out of the stack)."""
        index = {id(p): k for k, (p, _) in enumerate(self.pairs)}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        state = {}
        for k, (p, _) in enumerate(self.pairs):
            entries = self.state.get(p)
            if entries:
                state[k] = {key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in entries.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Seed i's entries and the groups' hyperparameters from a state dict of its own optimizer's layout."""
        for view, saved in zip(self.param_groups, state_dict["param_groups"]):
            for key, value in saved.items():
                if key != "params" and key not in IMPLEMENTATION_KEYS:
                    view[key] = value
        loaded = state_dict["state"]
        self.adopt({p: loaded[k] for k, (p, _) in enumerate(self.pairs) if k in loaded})

    def adopt(self, state: Mapping[torch.Tensor, dict[str, Any]]) -> None:
        """Move ``state`` (of seed i's optimizer before stacking, or loaded
        from its checkpoint) into slice i of the stacked state; a stacked
        tensor with no state yet gets zeros for the other seeds' slices, which
        their own ``adopt`` fills."""
        for p, stacked in self.pairs:
            entries = state.get(p)
            if not entries:
                continue
            target = self.stacked.state[stacked]
            for key, value in entries.items():
                if isinstance(value, torch.Tensor) and key not in PER_TENSOR_KEYS:
                    if key not in target:
                        target[key] = torch.zeros_like(stacked, dtype=value.dtype)
                    target[key][self.index].copy_(value)
                elif key == "step" and key in target:  # seeds' counts may differ (agents/idle.py)
                    self._adopt_count(stacked, target, value)
                else:  # a per-tensor value (NAdam's mu_product): the same for every seed of the group
                    target[key] = value.clone() if isinstance(value, torch.Tensor) else value

    def _adopt_count(self, stacked: torch.Tensor, target: dict[str, Any], value: Any) -> None:
        """The stack keeps the largest of its seeds' step counts; each seed, its offset from it (``behind``)."""
        top = max(float(target["step"]), float(value))
        raised = top - float(target["step"])
        if raised:
            target["step"] = value.clone() if isinstance(value, torch.Tensor) else value
            for other in self.siblings:
                if other is not self:
                    other.behind[id(stacked)] = other.behind.get(id(stacked), 0.0) + raised
        self.behind[id(stacked)] = top - float(value)

    def sat_out(self) -> None:
        """This seed sat out the stack's last step (agents/idle.py): its own count of every tensor that stepped stays."""
        for _, stacked in self.pairs:
            if stacked.grad is not None:
                self.behind[id(stacked)] = self.behind.get(id(stacked), 0.0) + 1


class SeedState(Mapping):
    """``optimizer.state`` of one seed: per parameter, its slice of each per-entry state tensor.
    ``pop(param)`` (a full reset) clears the slice to the initial values (0; Adagrad's
    ``sum`` to its initial accumulator) and restarts the seed's own step count (an
    offset from the stack's, which the other seeds keep): what a seed alone gets
    from a dropped state for the optimizers :func:`vmap_reason` allows with such resets."""

    def __init__(self, opt: SeedOptimizer):
        self.opt = opt

    def _entries(self, param: torch.Tensor) -> dict[str, Any]:
        found = self.opt.slice_of(param)
        if found is None:
            return {}
        stacked, state = found
        behind = self.opt.behind.get(id(stacked), 0.0)
        return {k: v[self.opt.index] if _per_entry(k, v, stacked) else v - behind if k == "step" and behind else v
                for k, v in state.items()}

    def __getitem__(self, param: torch.Tensor) -> dict[str, Any]:
        entries = self._entries(param)
        if not entries:
            raise KeyError(param)
        return entries

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (p for p, _ in self.opt.pairs if self._entries(p))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, param: object) -> bool:
        return isinstance(param, torch.Tensor) and bool(self._entries(param))

    def pop(self, param: torch.Tensor, default: Any = None) -> Any:
        entries = self._entries(param)
        if not entries:
            return default
        initial = float(self.opt.defaults.get("initial_accumulator_value", 0.0))
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and key not in PER_TENSOR_KEYS:
                value.fill_(initial if key == "sum" else 0.0)
        stacked, state = self.opt.slice_of(param)
        if "step" in state:  # the seed's own count restarts, as a dropped state's does (read through ``behind``)
            self.opt.behind[id(stacked)] = float(state["step"])
        return entries
