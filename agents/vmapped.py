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

from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from plasticity_lab.agents.agent import Agent, StepInfo

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
"""Optimizers whose state holds a per-tensor step count (bias correction): one
seed's tensor cannot restart or pause it alone."""


def vmap_reason(agent: Agent, drops_state: bool = False) -> str | None:
    """Why seeds of ``agent`` cannot be stacked here (None when they can).
    ``drops_state``: an intervention drops a whole tensor's optimizer state
    (a full reset), which a stacked tensor can do for one seed only where no
    per-tensor counter restarts with it."""
    opt = agent.optimizer
    if type(agent) is not Agent:
        return f"agent {type(agent).__name__} (vectorised seeds: the lab's own learner)"
    if type(opt) not in ELEMENTWISE:
        return (f"optimizer {type(opt).__name__} (vectorised seeds: an elementwise one, "
                + ", ".join(c.__name__ for c in ELEMENTWISE) + ")")
    if drops_state and isinstance(opt, PER_TENSOR_COUNTERS):
        return f"a reset that restarts {type(opt).__name__}'s per-tensor step count"
    if drops_state and isinstance(opt, torch.optim.SGD) and any(g["dampening"] for g in opt.param_groups):
        return "a reset with SGD dampening (its first step after a reset is undamped)"
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
        self.seed_params = seeds = [dict(a.model.named_parameters()) for a in agents]
        self.params = {n: torch.stack([s[n].detach() for s in seeds]).requires_grad_(seeds[0][n].requires_grad)
                       for n in names}
        for n in names:
            for i, s in enumerate(seeds):
                s[n].data = self.params[n].detach()[i]
        buffers = [dict(a.model.named_buffers()) for a in agents]
        self.buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        for n, stacked in self.buffers.items():
            for i, b in enumerate(buffers):
                b[n].data = stacked[i]
        self.flat = {n: p.detach() for n, p in self.params.items()}
        """What the optimizer updates: each stacked tensor's memory as a contiguous tensor (see _relayout)."""
        self.order = {n: tuple(range(p.dim())) for n, p in self.params.items()}
        self.optimizer = _stacked_optimizer(first.optimizer, first.model, self.flat)
        for i, a in enumerate(agents):
            pairs = [(seeds[i][n], self.flat[n], self.order[n]) for n in names]
            own, a.optimizer = a.optimizer, SeedOptimizer(self.optimizer, i, pairs)
            a.optimizer.adopt(own.state)  # a resumed seed's loaded state moves into its slice
        self.trained = [n for n in names if self.params[n].requires_grad]
        self.last_grads: list[torch.Tensor | None] = []
        self.penalties = [a.penalties for a in agents]
        self._mask_key: list | None = None
        self._masks: torch.Tensor | None = None
        self._layouts_checked = False
        self.batched = batches_seeds(first.model) if batched is None else batched
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
        slices come from ``unbind`` (whose backward stacks the N gradients in one copy)."""
        views = {k: v.unbind(0) for k, v in params.items()}
        bufs = {k: v.unbind(0) for k, v in buffers.items()}
        outs = [self._seed_forward({k: v[i] for k, v in views.items()}, {k: v[i] for k, v in bufs.items()}, x[i], y[i],
                                   None if mask is None else mask[i]) for i in range(self.n)]
        return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]),
                [torch.stack([o[2][j] for o in outs]) for j in range(len(outs[0][2]))])

    def masks(self) -> torch.Tensor | None:
        """(N, out) head masks (None when no seed masks its logits), stacked again only when a seed's changed."""
        current = [a._mask for a in self.agents]
        if self._mask_key is None or any(m is not k for m, k in zip(current, self._mask_key)):
            self._mask_key = current  # the mask objects themselves, kept alive: compared by identity safely
            if all(m is None for m in current):
                self._masks = None
            else:
                zero = torch.zeros_like(next(m for m in current if m is not None))
                self._masks = torch.stack([zero if m is None else m for m in current])
        return self._masks

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable[[int], StepInfo]]:
        """Update every seed on its batch ``x[i], y[i]`` ((N, B, ...) and (N, B));
        returns per-seed loss (N,), correct predictions (N,) and seed i's StepInfo on demand."""
        mask = self.masks()
        if not self._layouts_checked:
            self._match_gradient_layouts(x, y, mask)
        loss, logits, feats, grads = self._gradients(self.buffers, x, y, mask)
        for n, g in zip(self.trained, grads):  # the gradient in its tensor's storage order: contiguous
            self.flat[n].grad = None if g is None else g.permute(self.order[n])
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

    def _gradients(self, buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple[torch.Tensor | None, ...]]:
        """Per-seed losses, logits, features and the stacked gradients of the summed losses and penalties."""
        if not self.batched:
            forward = self._forward_each
        else:
            forward = self._forward_unmasked if mask is None else self._forward
        loss, logits, feats = forward(self.params, buffers, x, y, mask)
        total = loss.sum()
        if any(self.penalties):
            total = total + self._penalties()
        return loss, logits, feats, torch.autograd.grad(total, [self.params[n] for n in self.trained], allow_unused=True)

    def _match_gradient_layouts(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Before the first step (a probe on its batch, buffers copied so that
        nothing changes; so every process, resumed or not, computes every step
        with the same layouts): each stacked tensor whose gradient comes out in
        another memory layout (a Linear weight's batched gradient is the
        transpose of its (N, out, in) layout) moves to that layout, and the
        optimizer updates its memory as one contiguous tensor, so no step
        copies a gradient into its parameter's layout nor a fused optimizer a
        strided parameter into a contiguous one (each a strided copy of the
        whole tensor: 40 % of an 8-seed 784-1000-10 Adagrad step here)."""
        grads = self._gradients({k: v.clone() for k, v in self.buffers.items()}, x, y, mask)[3]
        for n, g in zip(self.trained, grads):
            if g is not None and g.stride() != self.params[n].stride() and _dense(g):
                self._relayout(n, g.stride())
        self._layouts_checked = True

    @torch.no_grad()
    def _relayout(self, name: str, stride: tuple[int, ...]) -> None:
        """Stacked tensor ``name`` in the memory layout ``stride``, and what the
        optimizer updates (with its per-entry state) as that memory, contiguous."""
        old, old_flat = self.params[name], self.flat[name]
        new = _with_layout(old.detach(), stride).requires_grad_(old.requires_grad)
        order = tuple(sorted(range(new.dim()), key=lambda d: -new.stride(d)))
        flat = new.detach().permute(order)
        self.params[name], self.flat[name], self.order[name] = new, flat, order
        for i, seed in enumerate(self.seed_params):
            seed[name].data = new.detach()[i]
        for group in self.optimizer.param_groups:
            group["params"] = [flat if p is old_flat else p for p in group["params"]]
        state = self.optimizer.state.pop(old_flat, None)
        if state:
            self.optimizer.state[flat] = {k: v.permute(order).contiguous() if _per_entry(k, v, old_flat) else v
                                          for k, v in state.items()}
        for a in self.agents:
            a.optimizer.restack(old_flat, flat, order)

    def _penalties(self) -> torch.Tensor:
        """Every seed's penalties of its own slice (an L2-init penalty reads the seed's own initial weights)."""
        total = torch.zeros((), device=next(iter(self.params.values())).device)
        for i, penalties in enumerate(self.penalties):
            state = {f"net.{k}": v[i] for k, v in self.params.items()}
            for p in penalties:
                total = total + functional_call(_Penalty(self.agents[i].model, p), state, ())
        return total

    def grads(self, i: int) -> list[torch.Tensor]:
        """Seed i's gradients of its last step, in ``model.parameters()`` order."""
        return [g[i] for g in self.last_grads if g is not None]

    def flush(self) -> None:
        """Nothing pends between steps here."""


def _per_entry(key: str, value: Any, stacked: torch.Tensor) -> bool:
    """Whether optimizer state ``key`` holds one value per entry of ``stacked`` (not a per-tensor count)."""
    return isinstance(value, torch.Tensor) and key not in PER_TENSOR_KEYS and value.shape == stacked.shape


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(order)), key=lambda d: order[d]))


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` is a permutation of a contiguous tensor (no gaps, no overlaps)."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return t.permute(order).is_contiguous()


def _with_layout(t: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """A copy of ``t`` with the memory layout ``stride``."""
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)


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


class SeedOptimizer:
    """Seed i's share of an optimizer over stacked tensors, with what unit
    resets, schedules and checkpoints use of a torch optimizer:
    ``param_groups`` (the seed's parameters, the shared hyperparameters),
    ``state`` (per seed parameter, views of slice i of the stacked state),
    ``state_dict`` / ``load_state_dict`` in the layout of the seed's own optimizer."""

    def __init__(self, stacked: torch.optim.Optimizer, index: int,
                 pairs: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]):
        """``pairs``: per seed parameter, the tensor the stacked optimizer updates and the
        order of its dimensions (``flat.permute(inverse(order))[index]`` is the seed's)."""
        self.stacked, self.index = stacked, index
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._inverse: dict[int, tuple[int, ...]] = {}
        for p, s, order in pairs:
            self.restack(s, s, order, p)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{**g, "params": [self._own_of[id(s)] for s in g["params"]]} for g in self.stacked.param_groups]

    @property
    def defaults(self) -> dict[str, Any]:
        return self.stacked.defaults

    @property
    def state(self) -> "SeedState":
        return SeedState(self)

    def restack(self, old: torch.Tensor, new: torch.Tensor, order: tuple[int, ...],
                param: torch.Tensor | None = None) -> None:
        """The optimizer's tensor ``old`` is now ``new``, whose dimensions are the
        stacked tensor's permuted by ``order`` (``param``: a seed parameter to add)."""
        if param is not None:
            self.pairs.append((param, new))
        self.pairs = [(p, new if s is old else s) for p, s in self.pairs]
        self._inverse[id(new)] = _inverse(order)
        self._stack_of = {id(p): s for p, s in self.pairs}
        self._own_of = {id(s): p for p, s in self.pairs}

    def seed_view(self, stacked: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Seed i's entries of ``value`` (a state tensor shaped as the optimizer's ``stacked``), shaped as its parameter."""
        return value.permute(self._inverse[id(stacked)])[self.index]

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
        """Seed i's entries from a state dict of its own optimizer's layout."""
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
                    self.seed_view(stacked, target[key]).copy_(value)
                else:  # a per-tensor value (Adam's step): the same for every seed of the group
                    target[key] = value.clone() if isinstance(value, torch.Tensor) else value


class SeedState(Mapping):
    """``optimizer.state`` of one seed: per parameter, its slice of each per-entry state tensor.
    ``pop(param)`` (a full reset) clears the slice to the initial values (0; Adagrad's
    ``sum`` to its initial accumulator), what a seed alone gets from a dropped state
    for the optimizers :func:`vmap_reason` allows with such resets."""

    def __init__(self, opt: SeedOptimizer):
        self.opt = opt

    def _entries(self, param: torch.Tensor) -> dict[str, Any]:
        found = self.opt.slice_of(param)
        if found is None:
            return {}
        stacked, state = found
        return {k: self.opt.seed_view(stacked, v) if _per_entry(k, v, stacked) else v for k, v in state.items()}

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
        initial = float(self.opt.stacked.defaults.get("initial_accumulator_value", 0.0))
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and key not in PER_TENSOR_KEYS:
                value.fill_(initial if key == "sum" else 0.0)
        return entries
