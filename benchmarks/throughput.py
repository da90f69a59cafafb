"""Examples/s of the lab's training loop vs a bare PyTorch loop, same net and data.

Both train a 784-100-100-10 ReLU MLP with SGD on online permuted MNIST (the
embedded subset), one pass per task, at batch 1 and batch 16. The bare loop
is what a careful researcher writes by hand: tensors pre-shuffled per task,
slices as batches, online accuracy accumulated on the device. The lab figure
is ``run()``'s own ``examples_per_s`` (training loop time: hooks, logging and
the accumulators included; evaluation and checkpoints excluded). Repeats
alternate between the two loops and the median is reported. Last line: JSON.

    python benchmarks/throughput.py [--tasks 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from plasticity_lab.agents import MLP
from plasticity_lab.lab.config import compose_config
from plasticity_lab.lab.loop import run
from plasticity_lab.streams import stream_builders, task_rng

HIDDEN = [100, 100]


def bare_loop(batch_size: int, tasks: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    stream = stream_builders.get("permuted_mnist")(num_tasks=tasks).build(seed)
    model = MLP(784, HIDDEN, 10, activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    examples, seconds = 0, 0.0
    for task in stream:
        g = torch.Generator().manual_seed(int(task_rng(seed, task.id, "order0").integers(2**62)))
        order = torch.randperm(task.num_train, generator=g)
        xs, ys = task.x_train[order], task.y_train[order]
        correct = torch.zeros((), dtype=torch.long)
        t0 = time.perf_counter()
        for i in range(0, task.num_train, batch_size):
            xb, yb = xs[i:i + batch_size], ys[i:i + batch_size]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += (out.detach().argmax(1) == yb).sum()
        correct.item()
        seconds += time.perf_counter() - t0
        examples += task.num_train
    return examples / seconds


def lab_loop(batch_size: int, tasks: int, seed: int = 0) -> float:
    cfg = compose_config([
        "wandb.enabled=false", "progress=off", f"stream.num_tasks={tasks}", f"agent.hidden=[{','.join(map(str, HIDDEN))}]",
        "agent.optimizer.lr=0.01", f"train.batch_size={batch_size}", f"train.eval_every={10**9}",
        "train.eval_window=1", "train.checkpoint=false", f"seed={seed}",
    ])
    with tempfile.TemporaryDirectory() as out:
        return run(cfg, out)[0]["examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {"threads": torch.get_num_threads(), "net": [784, *HIDDEN, 10]}
    for bs in (1, 16):
        tasks = args.tasks if bs > 1 else max(1, args.tasks // 2)
        lab, bare = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(bs, tasks))
            lab.append(lab_loop(bs, tasks))
        lab_m, bare_m = statistics.median(lab), statistics.median(bare)
        result[f"batch{bs}"] = {"lab_ex_per_s": round(lab_m), "bare_ex_per_s": round(bare_m), "ratio": round(lab_m / bare_m, 3)}
        print(f"batch {bs:>2}: lab {lab_m:8.0f} ex/s   bare {bare_m:8.0f} ex/s   ratio {lab_m / bare_m:.3f}")
    b1 = result["batch1"]
    print(json.dumps({"lab_ex_per_s": b1["lab_ex_per_s"], "bare_ex_per_s": b1["bare_ex_per_s"], "ratio": b1["ratio"], **result}))


if __name__ == "__main__":
    main()
