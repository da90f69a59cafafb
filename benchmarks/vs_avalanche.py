"""Examples/s of the lab's native loop vs Avalanche's Naive strategy on split
MNIST (class-incremental, embedded subset): same 784-400-400-10 net, SGD,
batch 16, one epoch per task, all five tasks; both measured as training
throughput (the lab's ``examples_per_s``; Avalanche: examples / time spent in
``strategy.train``), alternating, median of repeats. Last line: JSON.

    python benchmarks/vs_avalanche.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from plasticity_lab.agents import MLP
from plasticity_lab.lab.config import compose_config
from plasticity_lab.lab.loop import run
from plasticity_lab.streams import stream_builders


def lab_rate(seed: int) -> float:
    cfg = compose_config(["wandb.enabled=false", "progress=off", "experiment=split_mnist", "metrics.enabled=false",
                          "train.checkpoint=false", f"seed={seed}"])
    with tempfile.TemporaryDirectory() as out:
        return run(cfg, out)[0]["examples_per_s"]


def avalanche_rate(seed: int) -> float:
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    from plasticity_lab.lab.avalanche_bridge.benchmark import to_avalanche

    torch.manual_seed(seed)
    bm = to_avalanche(stream_builders.get("split_mnist")().build(seed))
    model = MLP(784, [400, 400], 10)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=16,
                     train_epochs=1, evaluator=EvaluationPlugin(loggers=[]))
    seconds, examples = 0.0, 0
    for exp in bm.train_stream:
        t0 = time.perf_counter()
        strategy.train(exp)
        seconds += time.perf_counter() - t0
        examples += len(exp.dataset)
    return examples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    avalanche_rate(0)  # warm-up: the first Avalanche import and run
    lab, ava = [], []
    for r in range(args.repeats):
        lab.append(lab_rate(r))
        ava.append(avalanche_rate(r))
    lab_m, ava_m = statistics.median(lab), statistics.median(ava)
    print(f"lab {lab_m:.0f} ex/s   avalanche Naive {ava_m:.0f} ex/s   ratio {lab_m / ava_m:.2f}")
    print(json.dumps({"lab_ex_per_s": round(lab_m), "avalanche_ex_per_s": round(ava_m), "ratio": round(lab_m / ava_m, 3)}))


if __name__ == "__main__":
    main()
