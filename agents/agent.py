"""The learner: a network, a stock ``torch.optim`` optimizer and a loss.

``observe`` performs one update and reports the loss and the number of
correct predictions from the *same* forward pass, before the update
(online / prequential accuracy, as Dohare et al. measure it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from plasticity_lab.registry import ConfigError

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": lambda out, y: F.mse_loss(out.squeeze(-1), y),
}

Penalty = Callable[[nn.Module], torch.Tensor]


@dataclass
class StepInfo:
    """What one update saw. Tensors stay on the run's device (no host sync).

    ``loss``: the data loss (without penalties), detached, 0-d;
    ``correct``: number of correct pre-update predictions, 0-d int tensor;
    ``features``: post-activation output of each hidden layer from the
    pre-update forward pass (what continual backprop's utility reads);
    ``grads``: for paths that never materialise parameter gradients (the
    fused one), a function that builds them on demand (weight, bias per layer);
    ``weight_abs_sums``: when the fused path was asked for them
    (agents/abs_sums.py), per weight layer the row and column sums of its
    updated |W|, computed in the update's own pass.
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor
    correct: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)
    grads: Optional[Callable[[], list[torch.Tensor]]] = None
    weight_abs_sums: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None

    @property
    def batch_size(self) -> int:
        return int(self.y.shape[0])


@dataclass
class GroupStepInfo:
    """What one step of N stacked seeds saw, as the stacked tensors themselves
    (seed first; no per-seed views): ``features`` (N, batch, units) per hidden
    layer from the pre-update forward pass; ``weight_abs_sums`` as in
    :class:`StepInfo`, (N, out) and (N, in) per layer, or None when the step
    did not compute them; ``seed(n)`` seed n's own :class:`StepInfo` of the
    step (built when asked)."""

    features: list[torch.Tensor]
    weight_abs_sums: Optional[list[tuple[torch.Tensor, torch.Tensor]]]
    seed: Callable[[int], StepInfo]


class Agent:
    """Network + optimizer + loss; everything else is an intervention.

    ``penalties`` are callables ``model -> scalar`` added to the loss before
    backward (L2, L2-init, spectral regularisation register them).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: str = "cross_entropy"):
        if loss not in LOSSES:
            raise ConfigError("agent.loss", loss, LOSSES)
        self.model, self.optimizer = model, optimizer
        self.loss_name, self.loss_fn = loss, LOSSES[loss]
        self.penalties: list[Penalty] = []
        self._mask: torch.Tensor | None = None

    @property
    def hidden_names(self) -> list[str]:
        return list(self.model.hidden_names)

    def use_head(self, classes: tuple[int, ...] | None) -> None:
        """Restrict the logits to ``classes`` (a task's head), or lift the mask."""
        self._mask = self._head_mask(classes)

    def _head_mask(self, classes: tuple[int, ...] | None) -> torch.Tensor | None:
        if classes is None:
            return None
        out = self.model.layers[-1].out_features
        ref = self.model.layers[-1].weight
        mask = torch.full((out,), float("-inf"), device=ref.device, dtype=ref.dtype)
        mask[list(classes)] = 0.0
        return mask

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> StepInfo:
        """One update on the batch (x, y); metrics from the pre-update forward.

        The model stays in training mode between steps (``predict`` and
        ``features`` restore it), so no per-step mode switch is needed."""
        logits, feats = self.model.forward_features(x)
        if self._mask is not None:
            logits = logits + self._mask
        loss = self.loss_fn(logits, y)
        total = loss
        for penalty in self.penalties:
            total = total + penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logits = logits.detach()
        correct = (logits.argmax(1) == y).sum() if self.loss_name == "cross_entropy" else torch.zeros((), dtype=torch.long, device=y.device)
        return StepInfo(x, y, logits, loss.detach(), correct, [f.detach() for f in feats])

    def flush_updates(self) -> None:
        """Make the model's parameters current. A no-op here; the fused agent
        may keep SGD updates pending between steps (agents/pending.py) and
        applies them now. The runner calls it when a task's training ends."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor, classes: tuple[int, ...] | None = None) -> torch.Tensor:
        """Logits for ``x`` (masked to ``classes`` when given), in eval mode."""
        was_training = self.model.training
        self.model.eval()
        logits = self.model(x)
        self.model.train(was_training)
        mask = self._head_mask(classes)
        return logits if mask is None else logits + mask

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Post-activation output of each named hidden layer for ``x``."""
        was_training = self.model.training
        self.model.eval()
        _, feats = self.model.forward_features(x)
        self.model.train(was_training)
        return dict(zip(self.hidden_names, feats))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps of the agent (its state_dict; the fused agent adds its deferred updates)."""
        return self.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class StackedMasks:
    """The head masks of N agents stacked into one (N, [1,] out) tensor (None
    when no agent masks its logits), stacked again only when an agent's mask
    changed (at a task start), not every step: what stacked seeds add to their logits."""

    def __init__(self, agents: list[Agent], per_example: bool = False):
        """``per_example``: shape (N, 1, out), to broadcast over each seed's batch of (N, B, out) logits."""
        self.agents, self.per_example = agents, per_example
        self._key: list | None = None
        self._masks: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor | None:
        current = [a._mask for a in self.agents]
        if self._key is None or any(m is not k for m, k in zip(current, self._key)):
            self._key = current  # the mask objects themselves: kept alive, so compared by identity safely
            if all(m is None for m in current):
                self._masks = None
            else:
                zero = torch.zeros_like(next(m for m in current if m is not None))
                masks = torch.stack([zero if m is None else m for m in current])
                self._masks = masks[:, None, :] if self.per_example else masks
        return self._masks


class WholeTaskAgent(Agent):
    """An agent that trains a whole task with its own loop (an Avalanche
    strategy): the runner calls ``train_task`` instead of stepping it."""

    def train_task(self, task: Any, task_label: int, step_hooks: list[Callable[["Agent", StepInfo], Any]]
                   ) -> tuple[int, float, int, int]:
        """Train ``task``, calling ``step_hooks`` after every update; returns
        (correct pre-update predictions, summed loss, examples, updates)."""
        raise NotImplementedError
